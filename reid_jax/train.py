"""Train state, the generic pure train step, and the train loop, for any method (methods/).

The loop is data-source agnostic: it is handed a stream of train batches and an evaluation
callback (built by `reid_jax.run` from `data_pipelines`), so this module never imports
TensorFlow. The method gives the loss, the optimiser and the models' variables; the loop owns
the state, checkpoints, resumption, evaluation history and logs.
"""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from reid_jax import optim, parallel
from reid_jax.checkpoint import RunCheckpoints
from reid_jax.methods import LoadFn, Method, Variables
from reid_jax.metric_writer import MetricWriter, ProgressLine


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    step: int32 scalar, optimiser steps taken. epoch: int32 scalar, the 1-based epoch being
    trained (it selects the lr). rng: uint32 [2] PRNG key; step s uses fold_in(rng, s).
    params: the method's trainable pytree ({"model": ..., plus e.g. BoT's "centers"}).
    batch_stats: the model's BatchNorm running statistics (mutable collection).
    opt_state: the method's optimiser state.
    """

    step: jax.Array
    epoch: jax.Array
    rng: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState


def create_train_state(params: Any, batch_stats: Any, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
    """A fresh state at step 0 of epoch 1."""
    return TrainState(step=jnp.zeros((), jnp.int32), epoch=jnp.ones((), jnp.int32), rng=rng,
                      params=params, batch_stats=batch_stats, opt_state=tx.init(params))


def make_train_step(method: Method, tx: optax.GradientTransformationExtraArgs,
                    lr_table: np.ndarray, augment: Callable[[dict], jax.Array] | None = None
                    ) -> Callable:
    """The un-jitted `train_step(state, batch) -> (state, metrics)`.

    batch: {"image": [B, H, W, 3] float32 normalised, "label": [B] int32}, the GLOBAL batch (BN
    statistics and batch-hard mining run over all of it, however it is sharded). With
    `augment`, the batch holds the uint8 images and their augmentation parameters instead, and
    `augment(batch) -> [B, H, W, 3] float32` makes the normalised images on the device.
    metrics: the method's float32 scalars plus `lr` (lr_table[state.epoch]).
    """
    lr_table = np.asarray(lr_table, np.float32)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if augment is not None:
            batch = {"image": augment(batch), "label": batch["label"]}
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            return method.loss(params, state.batch_stats, batch, rng)

        grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, epoch=state.epoch)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, lr=jnp.asarray(lr_table)[state.epoch])
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


class TrainItem(Protocol):
    """One element of the train stream (data_pipelines.pipeline.TrainBatch satisfies it)."""

    epoch: int  # 1-based
    step: int  # 0-based index in the epoch
    steps_in_epoch: int
    batch: dict  # this host's slice: "image" [b, H, W, 3], "label" [b] int32 (+ "augment")
    sampler_state: dict  # resume point right after this batch


TrainStreamFactory = Callable[[dict | None], Iterator[TrainItem]]
# (each model's variables, is_final) -> scalar metrics {"mAP": .., "rank1": .., ..}
EvaluateFn = Callable[[list[Variables], bool], dict]


class EvalHistory:
    """`workdir/evaluations.json`: {epoch: {"step": global step, "metrics": {...}}}, rewritten
    atomically after every evaluation (process 0). The checkpoint of an evaluated epoch is
    written before its evaluation runs, so a run killed during an evaluation redoes it."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[int, dict] = {}
        if path.is_file():
            self.entries = {int(k): v for k, v in json.loads(path.read_text()).items()}

    def truncate(self, epochs_done: int) -> None:
        """Forgets evaluations after `epochs_done` (a resumed run redoes them)."""
        self.entries = {k: v for k, v in self.entries.items() if k <= epochs_done}

    def record(self, epoch: int, step: int, metrics: dict) -> None:
        self.entries[epoch] = {"step": step, "metrics": metrics}
        if jax.process_index() == 0:
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.entries, indent=2) + "\n")
            os.replace(tmp, self.path)

    def best_step(self) -> int | None:
        """The global step of the evaluation with the highest mAP (the earliest on ties)."""
        if not self.entries:
            return None
        best = max(self.entries, key=lambda e: (self.entries[e]["metrics"]["mAP"], -e))
        return self.entries[best]["step"]


def _due(epoch: int, every: int, last_epoch: int) -> bool:
    return epoch == last_epoch or (every > 0 and epoch % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       method: Method, train_stream: TrainStreamFactory, evaluate: EvaluateFn,
                       load: LoadFn | None = None,
                       augment: Callable[[dict], jax.Array] | None = None) -> dict:
    """Trains `method` for `config.train.epochs`, resuming from the latest checkpoint in
    `workdir/checkpoints` when there is one.

    Args:
      train_stream: `sampler_state -> iterator of TrainItem` (None: from the start).
      evaluate: called with the models' variables every `config.train.eval_every_epochs` and
        after the last epoch (is_final True); returns scalar metrics including "mAP".
      load: pretrained weights for a fresh run (see Method.init); unused when resuming.
      augment: the on-device augmentation of a stream of uint8 batches (see make_train_step);
        None when the stream augments.

    Returns the last evaluation's metrics. Checkpoints (whole train state + sampler position)
    every `checkpoint_every_epochs`, every `checkpoint_every_steps` (mid-epoch too), before each
    evaluation and at the end; the last `keep_checkpoints` are kept plus the best by mAP. Logs
    to `workdir/metrics.jsonl` and TensorBoard, evaluations to `workdir/evaluations.json`.
    """
    workdir = Path(workdir)
    train_config, epochs = config.train, config.train.epochs
    mesh = parallel.make_mesh()
    global_batch = config.data.ids_per_batch * config.data.instances_per_id
    parallel.check_batch_divisible(
        global_batch, mesh, "config.data.ids_per_batch * config.data.instances_per_id")
    lr_table = optim.learning_rates(config.optim, epochs)
    tx = method.optimizer(lr_table)
    rng = jax.random.PRNGKey(config.seed)
    checkpoints = RunCheckpoints(workdir / "checkpoints", train_config.keep_checkpoints)
    history = EvalHistory(workdir / "evaluations.json")
    latest = checkpoints.latest_step()
    if latest is None:
        state = parallel.replicate(create_train_state(*method.init(rng, load), tx, rng), mesh)
        meta = {"epochs_done": 0, "global_step": 0, "sampler_state": None}
    else:
        abstract = jax.eval_shape(lambda: create_train_state(*method.init(rng), tx, rng))
        sharding = parallel.replicated(mesh)
        state = checkpoints.restore(latest, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract))
        meta = checkpoints.meta(latest)
        history.truncate(meta["epochs_done"])
        logging.info("resumed from %s at step %d (%d epochs done)", checkpoints.directory,
                     meta["global_step"], meta["epochs_done"])
    checkpoints.keep_best(history.best_step())
    writer = MetricWriter(workdir, resume_step=meta["global_step"])
    step_fn = parallel.jit_sharded_step(make_train_step(method, tx, lr_table, augment), mesh)
    global_step = meta["global_step"]

    def run_evaluation(epoch: int) -> dict:
        checkpoints.wait()  # the epoch is on disk before an evaluation that may fail or be killed
        variables = parallel.host_local(method.model_variables(state.params, state.batch_stats))
        metrics = evaluate(variables, epoch == epochs)
        history.record(epoch, global_step, metrics)
        checkpoints.keep_best(history.best_step())
        writer.write(global_step, epoch, {f"eval/{k}": v for k, v in metrics.items()})
        logging.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.2f}" for k, v in
                                                       metrics.items()))
        return metrics

    def save(epochs_done: int, sampler_state: dict) -> None:
        checkpoints.save(global_step, state, {"epochs_done": epochs_done,
                                              "global_step": global_step,
                                              "sampler_state": sampler_state})

    done_epoch = meta["epochs_done"]
    at_epoch_end = meta["sampler_state"] is None or meta["sampler_state"]["step"] == 0
    if (done_epoch and at_epoch_end and done_epoch not in history.entries
            and _due(done_epoch, train_config.eval_every_epochs, epochs)):
        run_evaluation(done_epoch)  # the run was stopped during this evaluation
    def to_device(item: TrainItem) -> dict:
        return parallel.global_batch({key: value for key, value in item.batch.items()
                                      if key != "camid"}, mesh)

    progress = None
    stream = train_stream(meta["sampler_state"]) if done_epoch < epochs else iter(())
    for item, batch in parallel.prefetch_to_device(stream, to_device):
        if progress is None or item.step == 0:
            state = state.replace(epoch=parallel.replicate(jnp.asarray(item.epoch, jnp.int32),
                                                           mesh))
            progress = ProgressLine(item.epoch, epochs, item.steps_in_epoch, global_batch,
                                    train_config.log_every_steps, first_step=item.step)
        state, metrics = step_fn(state, batch)
        global_step += 1
        checkpoints.check()
        done = item.step + 1
        epoch_end = done == item.steps_in_epoch
        if epoch_end or done % train_config.log_every_steps == 0:
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            writer.write(global_step, item.epoch, {f"train/{k}": v for k, v in scalars.items()})
            progress.update(done, {k: scalars[k] for k in ("loss", "id_accuracy", "lr")
                                   if k in scalars})
        every_steps = train_config.checkpoint_every_steps
        step_due = every_steps > 0 and global_step % every_steps == 0
        if not epoch_end:
            if step_due:
                save(item.epoch - 1, item.sampler_state)
            continue
        eval_due = _due(item.epoch, train_config.eval_every_epochs, epochs)
        if eval_due or step_due or _due(item.epoch, train_config.checkpoint_every_epochs,
                                        epochs):
            save(item.epoch, item.sampler_state)
        if eval_due:
            run_evaluation(item.epoch)
        if item.epoch == epochs:
            break
    checkpoints.close()
    writer.close()
    final = history.entries.get(epochs)
    return final["metrics"] if final else {}
