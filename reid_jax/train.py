"""Train state, the pure BoT train step, and the epoch loop.

The loop is data-source agnostic: it is handed a stream of train batches and an evaluation
callback (built by `reid_jax.main` from `data_pipelines`), so this module never imports
TensorFlow.
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import linen as nn

from reid_jax import checkpoint, optim, parallel
from reid_jax.losses import bot_loss
from reid_jax.metric_writer import MetricWriter, ProgressLine
from reid_jax.train_checkpoint import RunCheckpoints


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


class TrainItem(Protocol):
    """One element of the train stream (data_pipelines.pipeline.TrainBatch satisfies it)."""

    epoch: int  # 1-based
    step: int  # 0-based index in the epoch
    steps_in_epoch: int
    batch: dict  # this host's slice: "image" [b, H, W, 3] float32, "label" [b] int32
    sampler_state: dict  # resume point right after this batch


TrainStreamFactory = Callable[[dict | None], Iterator[TrainItem]]
# (variables {"params", "batch_stats"}, is_final) -> scalar metrics {"mAP": .., "rank1": .., ..}
EvaluateFn = Callable[[dict, bool], dict]


def _should(epoch: int, every: int, last_epoch: int) -> bool:
    return epoch == last_epoch or (every > 0 and epoch % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       model: nn.Module, initial_variables: dict,
                       train_stream: TrainStreamFactory, evaluate: EvaluateFn) -> dict:
    """Trains `model` for `config.train.epochs`, resuming from the latest checkpoint in
    `workdir/checkpoints` when there is one.

    Args:
      initial_variables: {"params", "batch_stats"} to start from (random or pretrained); ignored
        when resuming.
      train_stream: `sampler_state -> iterator of TrainItem` (None: from the start).
      evaluate: called with the current variables every `config.train.eval_every_epochs` and
        after the last epoch (is_final True); returns scalar metrics including "mAP".

    Returns the final evaluation's metrics. Checkpoints every `checkpoint_every_epochs`, after
    each evaluation and at the end; whenever the mAP improves, the variables also go to
    `workdir/best_model` (a variables checkpoint, as `reid_jax.convert` writes). Logs to
    `workdir/metrics.jsonl` and TensorBoard.
    """
    mesh = parallel.make_mesh()
    global_batch = config.data.ids_per_batch * config.data.instances_per_id
    parallel.check_batch_divisible(
        global_batch, mesh, "config.data.ids_per_batch * config.data.instances_per_id")
    rng = jax.random.PRNGKey(config.seed)
    tx = optim.make_optimizer(config)
    num_classes, dim = initial_variables["params"]["neck"]["classifier"]["kernel"].shape[::-1]
    state = create_train_state(initial_variables, init_centers(jax.random.fold_in(rng, 1),
                                                               num_classes, dim), tx)
    checkpoints = RunCheckpoints(Path(workdir) / "checkpoints", config.train.keep_checkpoints)
    meta = {"epoch": 0, "sampler_state": None, "best_mAP": None}
    if checkpoints.latest_epoch() is not None:
        state, meta = checkpoints.restore(state)
        logging.info("resumed from %s after epoch %d", checkpoints.directory, meta["epoch"])
    state = parallel.replicate(state, mesh)
    step_fn = parallel.jit_sharded_step(make_train_step(model, tx, config), mesh)
    writer = MetricWriter(workdir)
    stream = train_stream(meta["sampler_state"])
    global_step = int(jax.device_get(state.step))
    results = {}
    for epoch in range(meta["epoch"] + 1, config.train.epochs + 1):
        lr = optim.learning_rate(epoch, config.optim)
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr))
        item = next(stream)
        if item.epoch != epoch or item.step != 0:
            raise RuntimeError(f"train stream at epoch {item.epoch} step {item.step}, expected "
                               f"the start of epoch {epoch}: sampler state out of step")
        progress = ProgressLine(epoch, config.train.epochs, item.steps_in_epoch, global_batch,
                                config.train.log_every_steps)
        while True:
            batch = parallel.global_batch(
                {"image": item.batch["image"], "label": item.batch["label"]}, mesh)
            state, metrics = step_fn(state, batch, jax.random.fold_in(rng, global_step))
            global_step += 1
            done = item.step + 1
            if done == item.steps_in_epoch or done % config.train.log_every_steps == 0:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                writer.write(global_step, epoch, {f"train/{k}": v for k, v in scalars.items()})
                progress.update(done, {k: scalars[k] for k in ("loss", "id_accuracy", "lr")})
            if done == item.steps_in_epoch:
                break
            item = next(stream)
        meta = dict(meta, epoch=epoch, sampler_state=item.sampler_state)
        eval_metrics = None
        if _should(epoch, config.train.eval_every_epochs, config.train.epochs):
            variables = jax.device_get(variables_of(state))
            eval_metrics = evaluate(variables, epoch == config.train.epochs)
            writer.write(global_step, epoch, {f"eval/{k}": v for k, v in eval_metrics.items()})
            logging.info("epoch %d: %s", epoch, ", ".join(
                f"{k} {v:.2f}" for k, v in eval_metrics.items()))
            if meta["best_mAP"] is None or eval_metrics["mAP"] > meta["best_mAP"]:
                meta["best_mAP"] = eval_metrics["mAP"]
                if jax.process_index() == 0:
                    checkpoint.save_variables(Path(workdir) / "best_model", variables,
                                              {"epoch": epoch, "mAP": eval_metrics["mAP"],
                                               "num_classes": int(num_classes)}, overwrite=True)
            results = eval_metrics
        if eval_metrics is not None or _should(epoch, config.train.checkpoint_every_epochs,
                                               config.train.epochs):
            checkpoints.save(epoch, state, meta, eval_metrics)
    checkpoints.close()
    writer.close()
    return results


def variables_of(state: TrainState) -> dict:
    """The model's {"params", "batch_stats"} inside a train state."""
    return {"params": state.params["model"], "batch_stats": state.batch_stats}
