"""Device mesh, shardings and global-batch assembly (one or many devices, one or many hosts).

The global PK batch is sharded over the mesh's `data` axis; the train state is replicated. The
train step is written over the global batch, so XLA inserts the collectives that make BN
statistics and batch-hard mining global: 1 device and N devices compute the same thing.
"""

import collections
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process) named `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
    """Raises ValueError naming `what` (the config keys) when `batch_size` does not split evenly
    over the mesh's devices and processes."""
    devices, processes = mesh.devices.size, jax.process_count()
    if batch_size % devices or batch_size % processes:
        raise ValueError(
            f"{what} = {batch_size} does not divide over {devices} devices "
            f"({processes} processes); choose a batch size that is a multiple of {devices}")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each host's slice `[B / num_processes, ...]` of every array of the (nested)
    dict into global arrays `[B, ...]` sharded over `data`. Non-array entries (paths) must be
    removed by the caller."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda value: jax.make_array_from_process_local_data(sharding, value),
                        local_batch)


def prefetch_to_device(items: Iterator, to_device: Callable, size: int = 2) -> Iterator:
    """Yields (item, to_device(item)) with the transfers of the next `size - 1` items already
    started, so the host-to-device copy of a batch overlaps the step before it (JAX transfers
    and dispatches asynchronously)."""
    queue = collections.deque()
    for item in items:
        queue.append((item, to_device(item)))
        if len(queue) == size:
            yield queue.popleft()
    yield from queue


def jit_sharded_step(step_fn: Callable, mesh: Mesh) -> Callable:
    """jit of `step_fn(state, batch) -> (state, metrics)` with the state replicated and
    donated, the batch sharded on `data`, the metrics replicated."""
    rep, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(rep, data), out_shardings=(rep, rep),
                   donate_argnums=0)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (e.g. the train state) on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def host_local(tree: Any) -> Any:
    """`tree` usable on this process's devices alone: with several processes, replicated global
    arrays are copied to host numpy (each process holds the whole value); unchanged otherwise."""
    return jax.device_get(tree) if jax.process_count() > 1 else tree
