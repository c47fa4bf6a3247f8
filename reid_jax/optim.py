"""BoT optimisation: the warmup multi-step schedule and the optax chain.

Parameters are one pytree `{"model": <flax params>, "centers": [C, D] float32}`. Three groups:
- "adam": every trainable model parameter (biases and BN included): torch.optim.Adam with COUPLED
  L2 weight decay (added to the gradient before the moments), lr from the epoch schedule.
- "frozen": the BNNeck shift `model/neck/bottleneck/bias` (and the centers when the center loss
  is off): its update is zero, so it never changes.
- "centers": plain SGD at `loss.center_lr`, no decay, no schedule, applied to the gradient of the
  UNWEIGHTED center loss: the total loss carries `center_weight * L_center`, so the centers'
  gradient is rescaled by 1 / center_weight, as the original does after backward.

The learning rate lives in the optimiser state (`optax.inject_hyperparams`): the loop sets it once
per epoch with `set_learning_rate`, so the jitted step stays pure and the lr is checkpointed.
"""

import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

FROZEN_PATHS = (("model", "neck", "bottleneck", "bias"),)


def learning_rate(epoch: int, optim_config: ml_collections.ConfigDict) -> float:
    """The lr of 1-based `epoch` (constant within the epoch), REFERENCE section 3.

    lr(e) = base_lr * w(e) * gamma ** #{m in milestones : m <= e - 1},
    w(e) = warmup_factor + (1 - warmup_factor) * (e - 1) / warmup_epochs
    while e - 1 < warmup_epochs, else 1. Computed in python floats (float64).
    """
    if epoch < 1:
        raise ValueError(f"epoch={epoch}: epochs are counted from 1")
    last_epoch = epoch - 1
    warmup = 1.0
    if last_epoch < optim_config.warmup_epochs:
        alpha = last_epoch / optim_config.warmup_epochs
        warmup = optim_config.warmup_factor * (1 - alpha) + alpha
    decays = sum(1 for m in optim_config.milestones if m <= last_epoch)
    return optim_config.base_lr * warmup * optim_config.gamma ** decays


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


def _coupled_adam(learning_rate: float, weight_decay: float, b1: float, b2: float,
                  eps: float) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas, eps, weight_decay): L2 added to the gradient, then Adam."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The full BoT optimiser over `{"model": ..., "centers": ...}` from `config.optim` and
    `config.loss` (center_weight, center_lr). Its lr starts at epoch 1's value."""
    optim, loss = config.optim, config.loss
    adam = optax.inject_hyperparams(_coupled_adam)(
        learning_rate=learning_rate(1, optim), weight_decay=optim.weight_decay,
        b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
    transforms = {"adam": adam, "frozen": optax.set_to_zero()}
    if loss.center_weight > 0:
        transforms["centers"] = optax.chain(optax.scale(1.0 / loss.center_weight),
                                            optax.sgd(loss.center_lr))
    return optax.multi_transform(
        transforms, lambda params: param_labels(params, loss.center_weight))


def _adam_state(opt_state: optax.OptState):
    return opt_state.inner_states["adam"].inner_state


def set_learning_rate(opt_state: optax.OptState, lr: float) -> optax.OptState:
    """A copy of `opt_state` (from `make_optimizer`) whose Adam group uses `lr` from now on."""
    adam = _adam_state(opt_state)
    old = adam.hyperparams["learning_rate"]
    hyperparams = dict(adam.hyperparams, learning_rate=jnp.asarray(lr, old.dtype))
    inner_states = dict(opt_state.inner_states)
    inner_states["adam"] = inner_states["adam"]._replace(
        inner_state=adam._replace(hyperparams=hyperparams))
    return opt_state._replace(inner_states=inner_states)


def current_learning_rate(opt_state: optax.OptState):
    """The Adam group's lr held in `opt_state` (float32 scalar array)."""
    return _adam_state(opt_state).hyperparams["learning_rate"]
