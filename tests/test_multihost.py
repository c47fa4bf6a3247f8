"""`python -m reid_jax.main` in two local processes (jax.distributed on localhost, gloo CPU
collectives, one CPU device each) computes what one process with two devices computes: train,
evaluate, checkpoint, resume, export the best model, and every file a run writes."""

import functools
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny_config as tiny
from flax import traverse_util
from processes import free_port
from processes import run_together as run_processes

from reid_jax import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # each group of processes; ~2 min on 2 idle cores
run_together = functools.partial(run_processes, timeout_s=TIMEOUT_S)


def command(root: Path, workdir: Path, epochs: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "reid_jax.main", "--config=tests/tiny_config.py",
            f"--workdir={workdir}", f"--config.data.root={root}",
            f"--config.train.epochs={epochs}", "--config.train.eval_every_epochs=1",
            "--config.train.checkpoint_every_epochs=1", *flags]


def environment(devices: int) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def two_processes(root: Path, workdir: Path, epochs: int) -> list[tuple[list[str], dict]]:
    address = f"127.0.0.1:{free_port()}"
    return [(command(root, workdir, epochs, f"--coordinator_address={address}",
                     "--num_processes=2", f"--process_id={index}"), environment(1))
            for index in range(2)]


def final_state(workdir: Path) -> dict:
    checkpoints = workdir / "checkpoints"
    last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    state_dir = checkpoints / str(last) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    # As host numpy arrays: the test process has one device, the runs had two.
    metadata = checkpointer.metadata(state_dir).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.slow
def test_two_processes_train_evaluate_and_resume_like_one(tmp_path):
    from data_pipelines.synthetic import ensure_synthetic_market

    root = ensure_synthetic_market(tmp_path / "data",
                                   **tiny.get_config().data.synthetic.to_dict())
    single, multi = tmp_path / "single", tmp_path / "multi"
    # One process with two devices trains 2 epochs; meanwhile two processes train the first.
    run_together([(command(root, single, 2), environment(2)), *two_processes(root, multi, 1)],
                 tmp_path / "logs1")
    # The two processes resume for the second epoch.
    run_together(two_processes(root, multi, 2), tmp_path / "logs2")
    # Both export the best model (process 0 writes it; no process waits on another).
    exports = [(args + ["--mode=export"], env) for args, env in two_processes(root, multi, 2)]
    run_together([(command(root, single, 2, "--mode=export"), environment(2)), *exports],
                 tmp_path / "logs3")

    expected, actual = final_state(single), final_state(multi)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    assert int(actual["['step']"]) > 0
    for name in ("evaluations.json", "results.json"):
        single_run = json.loads((single / name).read_text())
        multi_run = json.loads((multi / name).read_text())
        assert single_run.keys() == multi_run.keys(), name
    evaluations = [json.loads((run / "evaluations.json").read_text()) for run in (single, multi)]
    for epoch in ("1", "2"):
        for key, value in evaluations[0][epoch]["metrics"].items():
            assert evaluations[1][epoch]["metrics"][key] == pytest.approx(value, abs=1e-6), key
    steps = [[json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text()
              .splitlines()] for run in (single, multi)]
    assert steps[0] == steps[1]
    exported = [traverse_util.flatten_dict(checkpoint.load_variables(run / "best_model"))
                for run in (single, multi)]
    assert exported[0].keys() == exported[1].keys()
    for key, value in exported[0].items():
        np.testing.assert_allclose(exported[1][key], value, rtol=1e-6, atol=1e-7,
                                   err_msg=str(key))

