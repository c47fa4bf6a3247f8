"""End to end through `reid_jax.run` (what `python -m reid_jax.main` runs, in-process unless a
test needs a process of its own): train / checkpoint / eval / extract / export on a tiny
synthetic dataset (tests/tiny_config.py), and a run that is interrupted, killed, or cannot write
its checkpoint resumes to the parameters of an uninterrupted one."""

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny_config as tiny

from reid_jax import run
from reid_jax.checkpoint import RunCheckpoints

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, **overrides):
    """tests/tiny_config.py on the dataset at `root`; overrides `section__key=value`."""
    config = tiny.get_config()
    config.data.root = str(root)
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def cli_command(root: Path, workdir: Path, *flags: str) -> list[str]:
    """`python -m reid_jax.main` on tests/tiny_config.py, as a subprocess command line."""
    return [sys.executable, "-m", "reid_jax.main", "--config=tests/tiny_config.py",
            f"--workdir={workdir}", f"--config.data.root={root}", *flags]


def checkpoint_epochs(workdir: Path) -> dict[int, int]:
    """{global step: epochs done} of the run checkpoints in `workdir`."""
    checkpoints = RunCheckpoints(workdir / "checkpoints", keep=100)
    epochs = {step: checkpoints.meta(step)["epochs_done"] for step in checkpoints.steps()}
    checkpoints.close()
    return epochs


def restore_state(workdir: Path, step: int) -> dict:
    """The train state pytree of a run checkpoint, as numpy (no target needed)."""
    path = workdir / "checkpoints" / str(step) / "state"
    return jax.tree_util.tree_map(np.asarray, ocp.StandardCheckpointer().restore(path))


def assert_same_state(workdir: Path, reference: Path) -> None:
    """The last checkpoints of two runs hold the same train state (rtol 1e-6)."""
    last = max(checkpoint_epochs(reference))
    assert max(checkpoint_epochs(workdir)) == last
    expected = restore_state(reference, last)
    actual = dict(jax.tree_util.tree_flatten_with_path(restore_state(workdir, last))[0])
    flat_expected = jax.tree_util.tree_flatten_with_path(expected)[0]
    assert len(flat_expected) == len(actual)
    for path, value in flat_expected:
        np.testing.assert_allclose(actual[path], value, rtol=1e-6, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    assert int(expected["step"]) > 0


def metric_steps(workdir: Path) -> list[int]:
    """The steps of the train-metric lines of `workdir/metrics.jsonl`, in file order."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines if "train/loss" in line]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """The tiny synthetic dataset, written once for the module (subprocesses read it too)."""
    from data_pipelines.synthetic import ensure_synthetic_market

    root = tmp_path_factory.mktemp("data") / "synthetic"
    return ensure_synthetic_market(root, **tiny.get_config().data.synthetic.to_dict())


def resumable_config(root: Path, epochs: int, **overrides):
    """3-epoch runs that checkpoint every epoch and evaluate only at the end."""
    return tiny_config(root, train__epochs=epochs, train__eval_every_epochs=0,
                       train__checkpoint_every_epochs=1, **overrides)


@pytest.fixture(scope="module")
def straight_run(synthetic_root, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run: the reference of every resumed one."""
    workdir = tmp_path_factory.mktemp("straight")
    run.train(resumable_config(synthetic_root, 3), workdir)
    return workdir


@pytest.mark.slow
def test_demo_trains_checkpoints_and_evaluates(tmp_path, synthetic_root):
    workdir = tmp_path / "run"
    config = tiny_config(synthetic_root, train__epochs=8, train__eval_every_epochs=4,
                         train__checkpoint_every_epochs=3)
    run.train(config, workdir)

    results = json.loads((workdir / "results.json").read_text())
    chance = 100.0 / 10  # 10 test identities
    assert results["original"]["rank1"] >= 4 * chance, results
    assert results["original"]["mAP"] >= 3 * chance, results
    assert set(results) >= {"original", "re_ranked"}
    kept = checkpoint_epochs(workdir)
    assert sorted(kept.values()) == [4, 6, 8]  # the last 3 (3 is older), the best among them
    evaluations = json.loads((workdir / "evaluations.json").read_text())
    assert sorted(int(e) for e in evaluations) == [4, 8]
    assert {kept[entry["step"]] for entry in evaluations.values()} == {4, 8}
    assert (workdir / "config.json").is_file()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr"} <= set(lines[0]) and any("eval/mAP" in x for x in lines)
    assert list((workdir / "tensorboard").iterdir())

    # --mode=eval on the latest checkpoint gives the metrics training reported at the end.
    run.evaluate(config, workdir)
    evaluated = json.loads((workdir / "eval_results.json").read_text())
    for key in ("rank1", "mAP", "mINP"):
        assert evaluated["original"][key] == pytest.approx(results["original"][key], abs=1e-6)

    run.extract(config, workdir, output=str(tmp_path / "f.npz"))
    with np.load(tmp_path / "f.npz") as features:
        assert features["query_features"].shape == (10 * 3, 512)
        assert features["gallery_features"].shape == (10 * 3 * 2, 512)
        np.testing.assert_allclose(np.linalg.norm(features["query_features"], axis=1), 1.0,
                                   atol=1e-5)

    # --mode=visualize from the extract .npz: the rank list of the hardest queries, the CMC
    # curve and the train curves (their content: tests/test_visualize.py).
    from PIL import Image

    pictures = run.visualize(config, workdir, str(tmp_path / "f.npz"))
    width = Image.open(pictures / "ranks.png").size[0]
    assert width > 11 * config.data.image_size[1]  # the query and its top 10
    assert (pictures / "cmc.png").is_file() and (pictures / "curves" / "train_loss.png").is_file()

    # --mode=export writes the best checkpoint's variables; evaluating them gives its metrics.
    best_epoch = max(evaluations, key=lambda e: evaluations[e]["metrics"]["mAP"])
    run.export(config, workdir, output=tmp_path / "best")
    exported = run.evaluate(config, tmp_path / "eval_best", str(tmp_path / "best"))
    assert 100 * exported["original"]["mAP"] == pytest.approx(
        evaluations[best_epoch]["metrics"]["mAP"], abs=1e-6)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, synthetic_root, straight_run,
                                                        capsys):
    # The same command stopped after epoch 2 (its last checkpoint), then run again to the end,
    # over a save that was killed half-way (its temporary folder left behind).
    workdir = tmp_path / "resumed"
    run.train(resumable_config(synthetic_root, 2), workdir)
    last = max(checkpoint_epochs(straight_run))
    (workdir / "checkpoints" / f"{last}.orbax-checkpoint-tmp-0").mkdir()
    with (workdir / "metrics.jsonl").open("a") as metrics:  # written after the checkpoint
        metrics.write(json.dumps({"step": last, "epoch": 3, "train/loss": 1.0}) + "\n")
    run.train(resumable_config(synthetic_root, 3), workdir)
    assert_same_state(workdir, straight_run)
    assert metric_steps(workdir) == metric_steps(straight_run)  # no step logged twice

    # A finished run is not trained again; a changed config is refused with the keys named.
    capsys.readouterr()
    assert run.train(resumable_config(synthetic_root, 3), workdir)["mAP"] > 0
    assert f"the run in {workdir} is finished" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"changed: data.pad: 2 -> 3; optim.base_lr: 0.001 -> "
                                         r"0.002\. Resume with the run's config"):
        run.train(resumable_config(synthetic_root, 3, data__pad=3, optim__base_lr=2e-3),
                  workdir)


@pytest.mark.slow
def test_device_augmentation_trains_like_the_host_augmentation(tmp_path, synthetic_root,
                                                              straight_run):
    # The accelerator path forced on the CPU: uint8 batches + augmentation parameters from the
    # stream, augmented inside the jitted step. The reference run augmented in tf.data ("auto"
    # on the CPU); the same draws give the same pixels, so the same trained state.
    config = resumable_config(synthetic_root, 3, data__augment_on="device")
    assert run.device_augmentation(config) is not None
    assert run.device_augmentation(resumable_config(synthetic_root, 3)) is None
    run.train(config, tmp_path)
    assert_same_state(tmp_path, straight_run)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_exactly(tmp_path, synthetic_root, straight_run):
    """train.checkpoint_every_steps: a run killed (SIGKILL) after its mid-epoch checkpoint at
    step 4 resumes there (the sampler and the augmentation draws continue mid-epoch)."""
    workdir = tmp_path / "killed"
    process = subprocess.Popen(cli_command(
        synthetic_root, workdir, "--config.train.epochs=3", "--config.train.eval_every_epochs=0",
        "--config.train.checkpoint_every_epochs=1", "--config.train.checkpoint_every_steps=4"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "checkpoints" / "4").is_dir():
            assert process.poll() is None, "the run ended before its step-4 checkpoint"
            assert time.monotonic() < deadline, "no step-4 checkpoint after 300 s"
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    meta = RunCheckpoints(workdir / "checkpoints", keep=100)
    assert meta.meta(4)["sampler_state"]["step"] == 4  # mid-epoch 1
    meta.close()
    run.train(resumable_config(synthetic_root, 3, train__checkpoint_every_steps=4), workdir)
    assert_same_state(workdir, straight_run)
    assert len(metric_steps(workdir)) == len(set(metric_steps(workdir)))


def _limit_file_size() -> None:
    """In the child: files may not grow past 1 MB, as on a full disk (EFBIG, not SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
def test_failed_checkpoint_write_stops_the_run_and_keeps_the_last(tmp_path, synthetic_root,
                                                                  straight_run):
    workdir = tmp_path / "full"
    run.train(resumable_config(synthetic_root, 1), workdir)
    first = checkpoint_epochs(workdir)
    # The run resumes after epoch 1, trains epoch 2, and cannot write its checkpoint: the
    # failure is reported as soon as it is known, at the latest when the next save is due.
    result = subprocess.run(cli_command(
        synthetic_root, workdir, "--config.train.epochs=4", "--config.train.eval_every_epochs=0",
        "--config.train.checkpoint_every_epochs=1"), cwd=ROOT, capture_output=True, text=True,
        timeout=600, preexec_fn=_limit_file_size)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert f"writing checkpoint {workdir / 'checkpoints'}/" in errors[0], errors[0]
    assert "File too large" in errors[0] or "EFBIG" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert "epoch 4/4" not in result.stderr  # it stopped at the failed save
    assert checkpoint_epochs(workdir) == first  # the previous checkpoint is intact
    # Space is back: the same command resumes and ends where an uninterrupted run does.
    run.train(resumable_config(synthetic_root, 3), workdir)
    assert_same_state(workdir, straight_run)


@pytest.mark.slow
def test_evaluation_follows_its_checkpoint_and_bad_images_stop_the_start(
        tmp_path, synthetic_root, monkeypatch):
    """A run whose evaluation fails (killed, out of memory...) has its epoch checkpointed; the
    rerun evaluates it without training again. A corrupt image stops a run before training
    starts, naming the file."""
    workdir = tmp_path / "eval_fails"
    config = tiny_config(synthetic_root, train__epochs=1)

    def failing_evaluation(self, variables, rerank):
        raise RuntimeError("evaluation killed")

    with monkeypatch.context() as patch:
        patch.setattr(run.Evaluator, "__call__", failing_evaluation)
        with pytest.raises(RuntimeError, match="evaluation killed"):
            run.train(config, workdir)
    assert list(checkpoint_epochs(workdir).values()) == [1]
    steps = metric_steps(workdir)
    metrics = run.train(config, workdir)
    assert metrics["mAP"] > 0 and metric_steps(workdir)[:len(steps)] == steps
    assert json.loads((workdir / "evaluations.json").read_text()).keys() == {"1"}
    assert (workdir / "results.json").is_file()

    # A corrupt gallery or query image, or a train image that is never cached (so never
    # decoded before it is sampled), stops the run before training, naming the file.
    for bad_split, cache in (("bounding_box_test", True), ("query", True),
                             ("bounding_box_train", False)):
        broken = tmp_path / f"broken_{bad_split}"
        for split in ("bounding_box_train", "bounding_box_test", "query"):
            (broken / split).mkdir(parents=True)
            for image in (synthetic_root / split).iterdir():
                (broken / split / image.name).symlink_to(image)
        bad = sorted((broken / bad_split).iterdir())[-1]
        bad.unlink()
        bad.write_bytes(b"\xff\xd8 not a jpeg")
        workdir = tmp_path / f"bad_{bad_split}"
        with pytest.raises(ValueError, match=f"cannot read or decode image {bad}"):
            run.train(tiny_config(broken, data__dataset="market1501", data__cache=cache),
                      workdir)
        assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tmp_path, synthetic_root):
    run.train(tiny_config(synthetic_root, train__epochs=1, train__eval_every_epochs=0), tmp_path)
    deeper = tiny_config(synthetic_root, train__epochs=2, train__eval_every_epochs=0,
                         model__depth=34)
    with pytest.raises(ValueError, match=r"does not fit the model(.|\n)*missing .*layer1_2"):
        run.evaluate(deeper, tmp_path)
    with pytest.raises(ValueError, match=r"another config; changed: model.depth: 18 -> 34"):
        run.train(deeper, tmp_path)


