"""End to end through `python -m reid_jax.main` (run in-process): train / checkpoint / eval /
extract on a tiny synthetic dataset, resume equality, bad input, and the converted-PyTorch-weights
-> eval path against the PyTorch reference model."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from reid_jax import main as reid_main

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, **overrides):
    """configs/demo.py shrunk to seconds: ResNet-18 at 64x48, 12 train / 10 test identities."""
    config = demo.get_config()
    config.data.root = str(root)
    config.data.image_size = (64, 48)
    config.data.pad = 2
    config.data.ids_per_batch = 4
    config.data.instances_per_id = 4
    config.data.eval_batch_size = 32
    config.data.synthetic.update(num_train_ids=12, num_test_ids=10, num_cameras=3,
                                 images_per_id_per_camera=3, image_size=(64, 48))
    config.train.log_every_steps = 100
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def restore_state(workdir: Path, epoch: int) -> dict:
    """The train state pytree of a run checkpoint, as numpy (no target needed)."""
    path = workdir / "checkpoints" / str(epoch) / "state"
    return jax.tree_util.tree_map(np.asarray, ocp.StandardCheckpointer().restore(path))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.mark.slow
def test_demo_trains_checkpoints_and_evaluates(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    config = tiny_config(synthetic_root, train__epochs=8, train__eval_every_epochs=4,
                         train__checkpoint_every_epochs=3)
    reid_main.run(config, workdir)

    results = json.loads((workdir / "results.json").read_text())
    chance = 100.0 / 10  # 10 test identities
    assert results["original"]["rank1"] >= 4 * chance, results
    assert results["original"]["mAP"] >= 3 * chance, results
    assert set(results) >= {"original", "re_ranked"}
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [4, 6, 8]  # last 3 (3 is older), best among them
    assert (workdir / "best_model" / "variables").is_dir()
    assert (workdir / "config.json").is_file()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr"} <= set(lines[0]) and any("eval/mAP" in x for x in lines)
    assert list((workdir / "tensorboard").iterdir())

    # --mode=eval on the latest checkpoint gives the metrics training reported at the end.
    reid_main.run(config, workdir, "eval")
    evaluated = json.loads((workdir / "eval_results.json").read_text())
    for key in ("rank1", "mAP", "mINP"):
        assert evaluated["original"][key] == pytest.approx(results["original"][key], abs=1e-6)

    reid_main.run(config, workdir, "extract", output=str(tmp_path / "f.npz"))
    with np.load(tmp_path / "f.npz") as features:
        assert features["query_features"].shape == (10 * 3, 512)
        assert features["gallery_features"].shape == (10 * 3 * 2, 512)
        np.testing.assert_allclose(np.linalg.norm(features["query_features"], axis=1), 1.0,
                                   atol=1e-5)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.chdir(ROOT)
    def config(epochs):
        return tiny_config(synthetic_root, train__epochs=epochs, train__eval_every_epochs=0,
                           train__checkpoint_every_epochs=1)

    reid_main.run(config(3), tmp_path / "straight")
    # The same command stopped after epoch 2 (its last checkpoint), then run again to the end.
    reid_main.run(config(2), tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "3.orbax-checkpoint-tmp-0").mkdir()  # a killed save
    reid_main.run(config(3), tmp_path / "resumed")

    straight = restore_state(tmp_path / "straight", 3)
    resumed = restore_state(tmp_path / "resumed", 3)
    flat_straight = jax.tree_util.tree_flatten_with_path(straight)[0]
    flat_resumed = dict(jax.tree_util.tree_flatten_with_path(resumed)[0])
    assert len(flat_straight) == len(flat_resumed)
    for path, value in flat_straight:
        np.testing.assert_allclose(flat_resumed[path], value, rtol=1e-6, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    assert int(resumed["step"]) == int(straight["step"]) > 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m reid_jax.main ARGS` in a subprocess (config_flags reads sys.argv)."""
    return subprocess.run([sys.executable, "-m", "reid_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_applies_overrides_and_names_a_missing_dataset_root(tmp_path):
    result = run_cli("--config=configs/market.py:bnneck", f"--workdir={tmp_path}",
                     "--config.model.depth=18", "--config.data.image_size=(128, 64)")
    assert result.returncode != 0
    assert "config.data.root is empty" in result.stderr
    assert "--config.data.root=" in result.stderr
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["depth"] == 18 and saved["data"]["image_size"] == [128, 64]
    assert saved["loss"]["center_weight"] == 0  # the bnneck ablation row


def test_cli_refuses_an_unknown_config_key(tmp_path):
    result = run_cli("--config=configs/demo.py", f"--workdir={tmp_path}",
                     "--config.model.no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.chdir(ROOT)
    reid_main.run(tiny_config(synthetic_root, train__epochs=1, train__eval_every_epochs=0),
                  tmp_path)
    deeper = tiny_config(synthetic_root, train__epochs=2, train__eval_every_epochs=0,
                         model__depth=34)
    with pytest.raises(ValueError, match=r"does not fit the model(.|\n)*missing .*layer1_2"):
        reid_main.run(deeper, tmp_path)


@pytest.mark.slow
def test_converted_pytorch_checkpoint_evaluates_like_pytorch(tmp_path, torch, monkeypatch):
    """Random-weight PyTorch BoT model -> .pth -> `python -m reid_jax.convert` -> `--mode=eval`:
    rank-1 and mAP equal those of the PyTorch model on the same preprocessed images, ranked by
    the numpy transcription of the protocol."""
    import numpy_eval
    import torch_reference

    from data_pipelines.datasets import get_dataset
    from data_pipelines.pipeline import make_eval_iterator
    from data_pipelines.synthetic import write_synthetic_market

    monkeypatch.chdir(ROOT)
    size = (64, 48)
    root = write_synthetic_market(tmp_path / "data", num_train_ids=5, num_test_ids=8,
                                  num_cameras=3, images_per_id_per_camera=2, image_size=size)
    net = torch_reference.randomize_(torch_reference.Baseline(5, depth=18), seed=0,
                                     image_size=size)
    torch.save(net.state_dict(), tmp_path / "bot.pth")
    subprocess.run([sys.executable, "-m", "reid_jax.convert", str(tmp_path / "bot.pth"),
                    str(tmp_path / "converted"), "--config=configs/demo.py",
                    "--config.data.image_size=(64, 48)"], check=True, cwd=ROOT)
    config = tiny_config(root, data__dataset="market1501")
    reid_main.run(config, tmp_path / "eval", "eval", variables_dir=str(tmp_path / "converted"))
    got = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["original"]

    data_config = config.data
    dataset = get_dataset("market1501", root)

    def torch_features(records):
        feats, pids, cams = [], [], []
        with torch.no_grad():
            for batch in make_eval_iterator(records, data_config):
                mask = batch["mask"]
                out = net(torch_reference.to_nchw(batch["image"][mask]))
                feats.append(torch.nn.functional.normalize(out, dim=1).numpy())
                pids.append(batch["pid"][mask])
                cams.append(batch["camid"][mask])
        return np.concatenate(feats), np.concatenate(pids), np.concatenate(cams)

    qf, qp, qc = torch_features(dataset.query)
    gf, gp, gc = torch_features(dataset.gallery)
    distmat = (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None] - 2 * qf @ gf.T
    cmc, m_ap, m_inp, *_ = numpy_eval.reference_eval_func(distmat, qp, gp, qc, gc)
    assert got["rank1"] == pytest.approx(100 * cmc[0], abs=1e-4)
    assert got["mAP"] == pytest.approx(100 * m_ap, abs=1e-3)
    assert got["mINP"] == pytest.approx(100 * m_inp, abs=1e-3)
