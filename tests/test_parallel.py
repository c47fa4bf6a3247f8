"""Data parallelism changes nothing: the train step over 8 devices, or over 2 processes, computes
what it computes on 1 device (issue 5).

The step is written over the global PK batch and jitted with the batch sharded on the mesh's
`data` axis, so BN statistics and batch-hard mining must still see the whole batch. Devices are
emulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count`, read once when JAX
starts), so every run is a subprocess of tests/parallel_scripts/train_steps.py: a tiny BoT
(ResNet-18, 64x64 images, P 4 x K 4 over 8 ids, Adam at lr 3.5e-4, center loss on) from one
fixed initial state and fixed batches, on a 1-device mesh and on the sharded mesh.

Precision. In float32 the sharded reduction order differs, so sums differ at rounding level;
Adam's first update is lr * g / (|g| + eps), sign-like, so a parameter element whose gradient is
at rounding level (BN shifts feeding a train-mode BN cancel almost exactly) can flip and move by
2 lr: parameters then differ by ~7e-4 absolute (measured 1.4e-4 relative on a zero-initialised
BN shift) for no fault of the sharding. So:
- float32, one step: loss terms and BN running statistics at <= 1e-5 relative (measured <= 3e-7),
  gradients (Adam's first moment after step 1 is 0.1 * (grad + wd * params)) at <= 1e-4
  (measured <= 7e-6: near-cancelling BN-shift gradients keep only a few digits);
- float64, two steps: everything (parameters, BN statistics, centers, optimiser state, metrics)
  at <= 1e-9 relative (measured <= 4e-13); per-device instead of global BN statistics or mining
  would be off by O(0.1).
"""

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from parallel_scripts import train_steps
from processes import free_port
from processes import run_together as run_processes
from relative_errors import relative_error

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "parallel_scripts" / "train_steps.py"
TIMEOUT_S = 600  # the whole group of subprocesses; ~1 min on 2 idle cores
run_together = functools.partial(run_processes, timeout_s=TIMEOUT_S)
FLOAT32_REL, GRAD32_REL, FLOAT64_REL = 1e-5, 1e-4, 1e-9


def worker(init: Path, out: Path, devices: int, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one train_steps.py process with `devices` CPUs."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JAX_PLATFORMS="cpu")
    return [sys.executable, str(SCRIPT), "--init", str(init), "--out", str(out), *args], env


def worst_error(actual_file: Path, expected_file: Path, prefixes: tuple[str, ...],
                exclude: str = "\0") -> tuple[float, str]:
    """The largest relative error over the saved arrays whose key starts with one of
    `prefixes` (and does not contain `exclude`), and its key."""
    with np.load(actual_file) as actual, np.load(expected_file) as expected:
        keys = [k for k in expected.files if k.startswith(prefixes) and exclude not in k]
        assert keys, prefixes
        assert set(keys) == {k for k in actual.files if k.startswith(prefixes) and exclude not in k}
        errors = {key: relative_error(actual[key], expected[key]) for key in keys}
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def scalars(file: Path, *keys: str) -> list:
    with np.load(file) as data:
        return [data[key].item() for key in keys]


@pytest.fixture(scope="module")
def initial_state(tmp_path_factory) -> Path:
    """The float32 initial TrainState every run starts from (npz)."""
    path = tmp_path_factory.mktemp("initial_state") / "state.npz"
    train_steps.save_initial_state(path)
    return path


@pytest.fixture(scope="module")
def eight_devices(initial_state, tmp_path_factory) -> dict[str, Path]:
    """float32 (1 step) and float64 (2 steps) runs on a 1-device and an 8-device mesh, in one
    8-device process each: {"f32_1", "f32_8", "f64_1", "f64_8"} -> npz (see train_steps.py)."""
    out = tmp_path_factory.mktemp("eight_devices")
    run_together([
        worker(initial_state, out / "f32", 8, "--mesh-sizes", "1,8", "--steps", "1"),
        worker(initial_state, out / "f64", 8, "--mesh-sizes", "1,8", "--steps", "2", "--x64"),
    ], out)
    return {f"{dtype}_{n}": out / f"{dtype}_{n}.npz" for dtype in ("f32", "f64") for n in (1, 8)}


@pytest.mark.slow
def test_eight_devices_float32_step_matches_one_device(eight_devices):
    one, eight = eight_devices["f32_1"], eight_devices["f32_8"]
    assert scalars(eight, "batch_devices", "batch_shard_rows") == [8, 2]
    assert scalars(one, "batch_devices", "batch_shard_rows") == [1, 16]
    error, key = worst_error(eight, one, ("metrics/",))
    assert error <= FLOAT32_REL, (key, error)
    error, key = worst_error(eight, one, ("state/batch_stats/",))
    assert error <= FLOAT32_REL, (key, error)
    error, key = worst_error(eight, one, ("state/opt_state/",), exclude="/nu/")
    assert error <= GRAD32_REL, (key, error)
    with np.load(one) as data:
        assert np.isfinite(data["metrics/loss"]).all() and data["metrics/triplet_loss"][0] > 0


@pytest.mark.slow
def test_eight_devices_float64_steps_match_one_device(eight_devices):
    one, eight = eight_devices["f64_1"], eight_devices["f64_8"]
    assert scalars(eight, "batch_devices", "batch_shard_rows", "state/step") == [8, 2, 2]
    error, key = worst_error(eight, one, ("metrics/", "state/"))
    assert error <= FLOAT64_REL, (key, error)


@pytest.mark.slow
def test_two_processes_match_one_device(initial_state, eight_devices, tmp_path):
    """2 processes x 2 CPU devices (gloo collectives), each feeding its half of every global
    batch through `parallel.global_batch`: the same 2 float64 steps as 1 device."""
    port = free_port()
    run_together([worker(initial_state, tmp_path / "run", 2, "--steps", "2", "--x64",
                         "--num-processes", "2", "--process-id", str(i),
                         "--coordinator", f"127.0.0.1:{port}")
                  for i in range(2)], tmp_path)
    run = tmp_path / "run_4.npz"
    assert scalars(run, "num_processes", "batch_devices", "batch_shard_rows") == [2, 4, 4]
    error, key = worst_error(run, eight_devices["f64_1"], ("metrics/", "state/"))
    assert error <= FLOAT64_REL, (key, error)
    message = scalars(run, "indivisible_error")[0]
    assert "14" in message and "4 devices (2 processes)" in message, message


@pytest.mark.slow
def test_eight_devices_mutual_learning_step_matches_one_device(tmp_path):
    """One float64 step of 2 mutually learning AlignedReID models (stacked in one step; every loss
    term on, local mining and local mutual loss included) with one image per device on 8
    devices: the same as on 1 device, so BN statistics, mining and the N x N global and local
    distance matrices are taken over the global batch, per model."""
    init = tmp_path / "aligned_init.npz"
    train_steps.save_initial_state(init, "aligned")
    run_together([worker(init, tmp_path / "aligned", 8, "--method", "aligned", "--mesh-sizes",
                         "1,8", "--steps", "1", "--x64")], tmp_path)
    one, eight = tmp_path / "aligned_1.npz", tmp_path / "aligned_8.npz"
    assert scalars(eight, "batch_devices", "batch_shard_rows") == [8, 1]
    error, key = worst_error(eight, one, ("metrics/", "state/"))
    assert error <= FLOAT64_REL, (key, error)
    with np.load(one) as data:
        for name in ("local_loss", "pm_loss", "gdm_loss", "ldm_loss"):
            for prefix in ("metrics/", "metrics/model1/"):
                assert data[prefix + name][0] > 0, prefix + name


@pytest.mark.slow
def test_indivisible_batch_names_keys_and_numbers(eight_devices):
    """check_batch_divisible(14, mesh, keys): fine on 1 device, ValueError text on 8."""
    assert scalars(eight_devices["f32_1"], "indivisible_error") == [""]
    message = scalars(eight_devices["f32_8"], "indivisible_error")[0]
    for part in ("data.ids_per_batch * data.instances_per_id", "14", "8 devices"):
        assert part in message, message
