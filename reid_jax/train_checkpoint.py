"""Resumable run checkpoints: the whole train state plus the loop's bookkeeping, with orbax.

`workdir/checkpoints/<epoch>/` holds two items: `state` (the TrainState pytree: params, centers,
BN statistics, optimiser state and lr, step) and `meta` (JSON: the epoch just completed, the
sampler state to continue from, the best mAP so far). Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a run killed at any point leaves only whole
checkpoints; the last `keep` are kept, plus the one with the best mAP.
"""

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from reid_jax.checkpoint import check_fits


class RunCheckpoints:
    """The run's CheckpointManager. Saves are asynchronous: call `close()` before exiting."""

    def __init__(self, directory: str | os.PathLike, keep: int):
        self.directory = Path(directory).resolve()
        preserve = policy.AnyPreservationPolicy([
            policy.LatestN(n=keep),
            policy.BestN(get_metric_fn=lambda metrics: metrics["mAP"], n=1,
                         keep_checkpoints_without_metrics=False),
        ])
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(preservation_policy=preserve),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def save(self, epoch: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        """Checkpoints `state` after `epoch`; `metrics` with an `mAP` entry competes for best."""
        self.manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=None if metrics is None else {"mAP": float(metrics["mAP"])})

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def best_epoch(self) -> int | None:
        return self.manager.best_step()

    def restore(self, target: Any, epoch: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of `epoch` (default: the latest), shaped like `target`. A checkpoint
        whose model entries (params, batch_stats) do not fit `target` is refused with every
        mismatch listed; the optimiser state follows from them."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None or epoch not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for epoch {epoch} in {self.directory}; "
                                    f"found {sorted(self.manager.all_steps())}")
        stored = self.manager.item_metadata(epoch)["state"]
        check_fits(_shapes(stored), _shapes(target), self.directory / str(epoch))
        restored = self.manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


MODEL_ENTRIES = ("params", "batch_stats")


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/model/...': shape} for the model entries of a train state (or of orbax's
    metadata of a stored one)."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(_key_name(k) for k in path)
        if name.startswith(MODEL_ENTRIES):
            shapes[name] = tuple(leaf.shape if hasattr(leaf, "shape") else np.shape(leaf))
    return shapes


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
