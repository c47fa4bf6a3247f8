"""Orbax checkpoints: model variables, and resumable run checkpoints.

Variables checkpoint (`reid_jax.convert`, `--mode=export`, `config.model.pretrained`): a
directory with two orbax items, `variables` (one model's {'params', 'batch_stats'}, float32
arrays) and `metadata` (JSON: where it came from).

Run checkpoints (`workdir/checkpoints/<global step>/`): items `state` (the whole TrainState:
params, extra trainable state, BN statistics, optimiser state, step, epoch, rng) and `meta` (JSON:
the loop's bookkeeping, e.g. the sampler position to continue from). Saves are asynchronous; a
save that fails in the background is reported by the next `check()` as one CheckpointWriteError
naming the path and the cause. The last `keep` checkpoints are kept, plus the one `keep_best`
names.

Orbax writes every checkpoint into a temporary directory and renames it when complete, so a
directory that exists is a whole checkpoint, and a killed or failed save leaves the previous ones
intact (the leftover temporary directory is removed when the next run opens the folder).
"""

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

MODEL_ENTRIES = ("params/model", "batch_stats")  # a run state's model variables


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions, ...)."""


# --- variables checkpoints -------------------------------------------------------------------

def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def check_destination(directory: str | os.PathLike, overwrite: bool) -> Path:
    """The resolved path of a variables checkpoint to write; FileExistsError (unless
    `overwrite`) or FileNotFoundError (no parent folder) before any work is done."""
    path = Path(directory).resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint directory {path} already exists (--overwrite "
                              "replaces it)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write checkpoint {path}: folder {path.parent} does not "
                                "exist")
    return path


def save_variables(directory: str | os.PathLike, variables: dict, metadata: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Writes `variables` (a nested dict of host arrays) and JSON `metadata` to `directory`,
    blocking until the write is complete. Raises FileExistsError unless `overwrite`. Returns the
    path. With several processes every one calls it (orbax synchronises them; process 0 writes
    the arrays and swaps the checkpoint in)."""
    path = check_destination(directory, overwrite)
    # Written beside the target, then swapped in: an existing checkpoint is only removed once
    # its replacement is complete. The name is the same in every process (one shared write).
    fresh = path.with_name(f"{path.name}.incoming")
    _checkpointer().save(fresh, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        metadata=ocp.args.JsonSave(metadata or {})), force=True)
    if jax.process_index() == 0:
        if path.exists():
            old = path.with_name(f"{path.name}.outgoing")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(fresh, path)
            shutil.rmtree(old)
        else:
            os.rename(fresh, path)
    return path


def is_variables_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / "variables").is_dir()


def _require(directory: str | os.PathLike) -> Path:
    path = Path(directory).resolve()
    if not is_variables_checkpoint(path):
        raise FileNotFoundError(f"no variables checkpoint at {path} (expected {path}/variables, "
                                "written by reid_jax.convert or --mode=export)")
    return path


def _restore_item(path: Path, name: str, args: ocp.args.CheckpointArgs) -> Any:
    """One item of a variables checkpoint, orbax's errors turned into one naming the folder."""
    try:
        return getattr(_checkpointer().restore(path, args=ocp.args.Composite(**{name: args})),
                       name)
    except (KeyError, ValueError, FileNotFoundError, OSError) as error:
        raise ValueError(f"variables checkpoint {path} is incomplete or corrupt ({name}: "
                         f"{type(error).__name__}: {error})") from error


def load_metadata(directory: str | os.PathLike) -> dict:
    """The JSON metadata stored by `save_variables` ({} when there is none)."""
    path = _require(directory)
    if not (path / "metadata").is_dir():
        return {}
    return dict(_restore_item(path, "metadata", ocp.args.JsonRestore()))


def load_variables(directory: str | os.PathLike, target: dict | None = None) -> dict:
    """Restores the variables written by `save_variables` as a nested dict of numpy arrays.

    With `target` (the model's variables or their shapes), the stored keys and shapes must match
    it: otherwise one ValueError lists the missing, unexpected and reshaped entries.
    """
    path = _require(directory)
    restored = _restore_item(path, "variables", ocp.args.StandardRestore())
    variables = jax.tree.map(np.asarray, restored)
    if target is not None:
        check_tree_fits(variables, target, path)
    return variables


def check_tree_fits(stored: dict, expected: dict, path: str | os.PathLike) -> None:
    """`check_fits` of two nested dicts of arrays (or of anything with a `.shape`)."""
    def shapes(tree: dict) -> dict[str, tuple[int, ...]]:
        return {"/".join(k): tuple(np.shape(v))
                for k, v in traverse_util.flatten_dict(dict(tree)).items()}

    check_fits(shapes(stored), shapes(expected), path)


def check_fits(stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
               path: str | os.PathLike) -> None:
    """Raises one ValueError listing every missing, unexpected and reshaped entry when the
    checkpoint at `path` (entry name -> shape) does not fit the model's `expected` entries."""
    problems = [f"missing {k}" for k in sorted(set(expected) - set(stored))]
    problems += [f"unexpected {k}" for k in sorted(set(stored) - set(expected))]
    problems += [f"shape {k}: checkpoint {tuple(stored[k])}, model {tuple(expected[k])}"
                 for k in sorted(set(stored) & set(expected))
                 if tuple(stored[k]) != tuple(expected[k])]
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the model:\n  " + "\n  ".join(problems))


# --- run checkpoints -------------------------------------------------------------------------

@dataclasses.dataclass
class _KeepStep:
    """Preserves the checkpoint of one step (set from outside: the best evaluation so far)."""

    step: int | None = None

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        del context
        return [info.step == self.step for info in checkpoints]


class RunCheckpoints:
    """The run's CheckpointManager over `directory`, steps numbered by global train step."""

    def __init__(self, directory: str | os.PathLike, keep: int):
        self.directory = Path(directory).resolve()
        self._best = _KeepStep()
        preserve = policy.AnyPreservationPolicy([policy.LatestN(n=keep), self._best])
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(preservation_policy=preserve),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
        self._pending: int | None = None

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def keep_best(self, step: int | None) -> None:
        """From the next save on, also keep the checkpoint of `step` (None: no such one)."""
        self._best.step = step

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts writing `state` and JSON `meta` as the checkpoint of global `step`; the write
        finishes in the background (see `check`). Waits for the previous save (as orbax would);
        CheckpointWriteError if that failed, so a failure stops the run at the latest here."""
        self.wait()
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        except Exception as error:  # a synchronous part of the write failed
            raise self._write_error(step, error) from error
        self._pending = step

    def check(self) -> None:
        """Raises CheckpointWriteError if a background save has failed (cheap: call it often)."""
        if self._pending is None:
            return
        try:
            self.manager.check_for_errors()
        except Exception as error:
            raise self._write_error(self._pending, error) from error

    def wait(self) -> None:
        """Blocks until the pending save is complete; CheckpointWriteError if it failed."""
        if self._pending is None:
            return
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as error:
            raise self._write_error(self._pending, error) from error
        self._pending = None

    def _write_error(self, step: int, error: Exception) -> CheckpointWriteError:
        """One line: the checkpoint that failed (the step named in the cause's temporary path,
        else `step`), and the innermost cause without tensorstore's spec dump."""
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        message = re.sub(r"\s*\[tensorstore_spec=.*$", "", str(cause), flags=re.DOTALL)
        written = re.search(r"/(\d+)\.orbax-checkpoint-tmp", message)
        failed = int(written.group(1)) if written else step
        return CheckpointWriteError(
            f"writing checkpoint {self.directory / str(failed)} failed: "
            f"{type(cause).__name__}: {message}; earlier checkpoints are intact, rerun the same "
            "command once the cause is fixed to resume")

    def meta(self, step: int) -> dict:
        """The JSON bookkeeping saved with `step`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore(self, step: int, target: Any) -> Any:
        """The state of `step`, shaped (and sharded) like `target` (arrays or
        jax.ShapeDtypeStruct). A checkpoint whose model entries do not fit `target` is refused
        with every mismatch listed; the optimiser state follows from them."""
        self._require(step)
        stored = self.manager.item_metadata(step)["state"]
        check_fits(_model_shapes(stored), _model_shapes(target), self.directory / str(step))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        return restored.state

    def restore_model_variables(self, step: int) -> tuple[dict, dict]:
        """Only the model's (params["model"], batch_stats) of `step`, as numpy arrays (the
        optimiser state is not read)."""
        self._require(step)
        stored = self.manager.item_metadata(step)["state"]
        stored = stored.tree if hasattr(stored, "tree") else stored
        item = {"params": {"model": stored["params"]["model"]},
                "batch_stats": stored["batch_stats"]}
        item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), item)
        restored = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state",
            args=ocp.args.PyTreeRestore(item=item, partial_restore=True))
        restored = jax.tree.map(np.asarray, restored)
        return restored["params"]["model"], restored["batch_stats"]

    def _require(self, step: int) -> None:
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"found {self.steps()}")

    def close(self) -> None:
        """Waits for the pending save (CheckpointWriteError if it failed) and closes."""
        try:
            self.wait()
        finally:
            self.manager.close()


def _model_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/model/...': shape} for the model entries of a train state (or of orbax's
    metadata of a stored one)."""
    tree = tree.tree if hasattr(tree, "tree") else tree
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
