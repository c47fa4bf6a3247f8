"""Orbax checkpoints of model variables.

A variables checkpoint is a directory with two orbax items: `variables` (the
{'params', 'batch_stats'} pytree, float32 arrays) and `metadata` (JSON: where it came from).
Orbax writes into a temporary directory and renames it when complete, so a directory that
exists is a whole checkpoint.
"""

import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_variables(directory: str | os.PathLike, variables: dict, metadata: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Writes `variables` (a nested dict of arrays) and JSON `metadata` to `directory`, blocking
    until the write is complete. Raises FileExistsError unless `overwrite`. Returns the path."""
    path = Path(directory).resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint directory {path} already exists")
    _checkpointer().save(path, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        metadata=ocp.args.JsonSave(metadata or {})), force=overwrite)
    return path


def _require(directory: str | os.PathLike) -> Path:
    path = Path(directory).resolve()
    if not (path / "variables").is_dir():
        raise FileNotFoundError(f"no variables checkpoint at {path} (expected {path}/variables, "
                                "written by reid_jax.checkpoint.save_variables)")
    return path


def load_metadata(directory: str | os.PathLike) -> dict:
    """The JSON metadata stored by `save_variables`."""
    path = _require(directory)
    return dict(_checkpointer().restore(path, args=ocp.args.Composite(
        metadata=ocp.args.JsonRestore())).metadata)


def load_variables(directory: str | os.PathLike, target: dict | None = None) -> dict:
    """Restores the variables written by `save_variables` as a nested dict of numpy arrays.

    With `target` (e.g. the model's initialised variables), the stored keys and shapes must
    match it: otherwise one ValueError lists the missing, unexpected and reshaped entries.
    """
    path = _require(directory)
    restored = _checkpointer().restore(path, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore())).variables
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(restored).items()}
    if target is not None:
        flat_target = traverse_util.flatten_dict(dict(target))
        check_fits({"/".join(k): v.shape for k, v in flat.items()},
                   {"/".join(k): np.shape(v) for k, v in flat_target.items()}, path)
    return traverse_util.unflatten_dict(flat)


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
