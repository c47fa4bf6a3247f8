"""Train state and the pure, jit-compiled BoT train step."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from reid_jax import optim
from reid_jax.losses import bot_loss


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    step: int32 scalar, optimiser steps taken.
    params: {"model": flax params, "centers": [C, D] float32 center-loss centers}.
    batch_stats: the model's BatchNorm running statistics (mutable collection).
    opt_state: state of `optim.make_optimizer`, the current lr included.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState


def create_train_state(variables: dict, centers: jax.Array,
                       tx: optax.GradientTransformation) -> TrainState:
    """A fresh state from the model's variables and the initial centers [C, D] float32."""
    params = {"model": variables["params"], "centers": centers}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params))


def init_centers(rng: jax.Array, num_classes: int, dim: int) -> jax.Array:
    """Center-loss centers [num_classes, dim] float32, N(0, 1) as the original."""
    return jax.random.normal(rng, (num_classes, dim), jnp.float32)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict):
    """The un-jitted `train_step(state, batch, rng) -> (state, metrics)`.

    batch: {"image": [B, H, W, 3] float32 normalised, "label": [B] int32}, the GLOBAL PK batch
    (BN statistics and batch-hard mining run over all of it, however it is sharded).
    rng: per-step PRNG key, folded into nothing today (the model has no dropout); kept so stochastic
    layers and on-device augmentation slot in without changing the step's signature.
    metrics: float32 scalars `loss`, `id_loss`, `triplet_loss`, `center_loss`, `id_accuracy`,
    `dist_ap`, `dist_an`, `lr`.
    """
    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        del rng  # See the docstring.

        def loss_fn(params):
            (logits, global_feat), updates = model.apply(
                {"params": params["model"], "batch_stats": state.batch_stats},
                batch["image"], train=True, mutable=["batch_stats"])
            total, metrics = bot_loss(logits, global_feat, batch["label"], params["centers"],
                                      config.loss)
            return total, (metrics, updates["batch_stats"])

        grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, lr=optim.current_learning_rate(state.opt_state))
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step
