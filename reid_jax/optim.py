"""Learning-rate schedules (one lr per epoch) and the optimisers of the methods.

Schedules (`config.optim.schedule`), REFERENCE sections 3 and 8:
- "warmup_multistep": BoT's WarmupMultiStepLR as ignite steps it (below).
- "exp_decay": AlignedReID's `adjust_lr_exp`: base_lr until `decay_start_epoch`, then
  base_lr * 0.001 ** ((e + 1 - start) / (total + 1 - start)), total = `decay_total_epochs`.

The lr is never edited from the host: the train state carries the 1-based epoch, and
`tx.update(..., epoch=state.epoch)` reads the lr from a table of every epoch's value (computed
here in float64, as the originals do in python floats).

`coupled_adam` is torch.optim.Adam(weight_decay=...): L2 added to the gradient before the
moments, every parameter (biases and BN included). `bot_optimizer` partitions BoT's parameters
`{"model": <flax params>, "centers": [C, D] float32}` into three groups:
- "adam": every trainable model parameter, coupled Adam at the scheduled lr;
- "frozen": the BNNeck shift `model/neck/bottleneck/bias` (and the centers when the center loss
  is off): its update is zero, so it never changes;
- "centers": plain SGD at `loss.center_lr`, no decay, no schedule, applied to the gradient of the
  UNWEIGHTED center loss: the total loss carries `center_weight * L_center`, so the centers'
  gradient is rescaled by 1 / center_weight, as the original does after backward.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

FROZEN_PATHS = (("model", "neck", "bottleneck", "bias"),)
SCHEDULES = ("warmup_multistep", "exp_decay")


def learning_rate(epoch: int, optim_config: ml_collections.ConfigDict) -> float:
    """The lr of 1-based `epoch` (constant within the epoch) under `optim_config.schedule`.

    "warmup_multistep" (REFERENCE section 3): BoT steps its WarmupMultiStepLR at ignite's
    EPOCH_STARTED, after ignite has counted the epoch, so epoch e trains with the scheduler's
    last_epoch = e:
    lr(e) = base_lr * w(e) * gamma ** #{m in milestones : m <= e},
    w(e) = warmup_factor + (1 - warmup_factor) * e / warmup_epochs while e < warmup_epochs,
    else 1. "exp_decay" (REFERENCE section 8): see the module docstring. Computed in python
    floats (float64), in the originals' operation order.
    """
    if epoch < 1:
        raise ValueError(f"epoch={epoch}: epochs are counted from 1")
    if optim_config.schedule == "exp_decay":
        start, total = optim_config.decay_start_epoch, optim_config.decay_total_epochs
        if epoch < start:
            return optim_config.base_lr
        return optim_config.base_lr * 0.001 ** ((epoch + 1 - start) / (total + 1 - start))
    if optim_config.schedule != "warmup_multistep":
        raise ValueError(f"config.optim.schedule={optim_config.schedule!r}; expected one of "
                         f"{SCHEDULES}")
    warmup = 1.0
    if epoch < optim_config.warmup_epochs:
        alpha = epoch / optim_config.warmup_epochs
        warmup = optim_config.warmup_factor * (1 - alpha) + alpha
    decays = sum(1 for m in optim_config.milestones if m <= epoch)
    return optim_config.base_lr * warmup * optim_config.gamma ** decays


def learning_rates(optim_config: ml_collections.ConfigDict, epochs: int) -> np.ndarray:
    """[epochs + 1] float64: entry e is the lr of epoch e (entry 0 repeats epoch 1's)."""
    rates = [learning_rate(max(epoch, 1), optim_config) for epoch in range(epochs + 1)]
    return np.asarray(rates, np.float64)


def scale_by_epoch_learning_rate(lr_table: np.ndarray) -> optax.GradientTransformationExtraArgs:
    """updates * -lr_table[epoch], `epoch` (int32 scalar, 1-based) an extra argument of
    `update`. The lr takes the updates' dtype (float32; float64 in exact parity tests)."""
    table = np.asarray(lr_table, np.float64)

    def update_fn(updates, state, params=None, *, epoch, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda u: -jnp.asarray(table, u.dtype)[epoch] * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def coupled_adam(lr_table: np.ndarray, optim_config: ml_collections.ConfigDict
                 ) -> optax.GradientTransformationExtraArgs:
    """torch.optim.Adam(lr, betas, eps, weight_decay): L2 added to the gradient, then Adam, at
    the epoch's lr (`config.optim`: weight_decay, beta1, beta2, eps)."""
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay),
        optax.scale_by_adam(b1=optim_config.beta1, b2=optim_config.beta2, eps=optim_config.eps),
        scale_by_epoch_learning_rate(lr_table),
    )


def param_labels(params: dict, center_weight: float) -> dict:
    """The optimiser group ("adam" | "frozen" | "centers") of every leaf of `params`."""
    flat = traverse_util.flatten_dict(params)
    centers_label = "centers" if center_weight > 0 else "frozen"

    def label(path: tuple[str, ...]) -> str:
        if path in FROZEN_PATHS:
            return "frozen"
        if path[0] == "centers":
            return centers_label
        return "adam"

    return traverse_util.unflatten_dict({path: label(path) for path in flat})


def bot_optimizer(config: ml_collections.ConfigDict, lr_table: np.ndarray
                  ) -> optax.GradientTransformationExtraArgs:
    """BoT's optimiser over `{"model": ..., "centers": ...}` from `config.optim` and
    `config.loss` (center_weight, center_lr); `update` takes `epoch=`."""
    loss = config.loss
    transforms = {"adam": coupled_adam(lr_table, config.optim), "frozen": optax.set_to_zero()}
    if loss.center_weight > 0:
        transforms["centers"] = optax.chain(optax.scale(1.0 / loss.center_weight),
                                            optax.sgd(loss.center_lr))
    return optax.partition(transforms, lambda params: param_labels(params, loss.center_weight))
