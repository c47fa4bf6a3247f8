"""End to end on the real JPEG files of ../shared/data/market1501-mini: a random-weight PyTorch
BoT model (tests/torch_reference.py, BoT key layout) saved as `.pth` -> `python -m
reid_jax.convert` -> `--mode=extract` and `--mode=eval`, against the PyTorch pipeline run as
BoT runs it: PIL open + convert("RGB") + resize((W, H), BILINEAR), ToTensor, Normalize, the
model in eval mode, features L2-normalised, ranked by the numpy transcription of BoT's
eval_func."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")

import numpy_eval  # noqa: E402
import torch_reference as tr  # noqa: E402

from configs import market  # noqa: E402
from reid_jax import convert, run  # noqa: E402

pytestmark = pytest.mark.torch
SIZE = (256, 128)  # (H, W): the 64 x 128 crops are enlarged 2x, as in BoT
NUM_CLASSES = 7


def torch_pipeline(net: torch.nn.Module, paths: list[str], config) -> np.ndarray:
    """Unit feature vectors [N, D] of `paths` through BoT's test transform and `net`."""
    height, width = config.data.image_size
    mean = torch.tensor(config.data.mean).view(3, 1, 1)
    std = torch.tensor(config.data.std).view(3, 1, 1)
    images = []
    for path in paths:
        image = PIL.open(path).convert("RGB").resize((width, height), PIL.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)
        images.append(tensor.sub(mean).div(std))  # T.ToTensor(), T.Normalize(mean, std)
    with torch.no_grad():
        features = net.eval()(torch.stack(images))
    return torch.nn.functional.normalize(features, dim=1).numpy()


@pytest.mark.slow
def test_converted_bot_checkpoint_extracts_and_evaluates_like_pytorch(tmp_path, shared_data,
                                                                    monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    net = tr.randomize_(tr.Baseline(NUM_CLASSES, depth=18), seed=0, image_size=SIZE)
    torch.save(net.state_dict(), tmp_path / "bot.pth")
    converted = tmp_path / "converted"
    assert convert.cli(["reid_jax.convert", str(tmp_path / "bot.pth"), str(converted),
                        "--config=configs/market.py", "--config.model.depth=18"]) == 0

    config = market.get_config()
    config.model.depth = 18
    config.data.root = str(shared_data / "market1501-mini")
    config.data.eval_batch_size = 32
    features = np.load(run.extract(config, tmp_path / "run", str(converted),
                                   tmp_path / "features.npz"))
    expected = {}
    for split in ("query", "gallery"):
        paths = list(features[f"{split}_paths"])
        expected[split] = torch_pipeline(net, paths, config)
        got = features[f"{split}_features"]
        assert got.shape == expected[split].shape == (len(paths), 512)
        np.testing.assert_allclose(got, expected[split], rtol=0, atol=1e-5, err_msg=split)
        print(f"{split}: {len(paths)} images, max abs {np.abs(got - expected[split]).max():.1e}")
    assert len(features["gallery_paths"]) > 50  # the real gallery, junk images dropped

    results = run.evaluate(config, tmp_path / "run", str(converted))["original"]
    query, gallery = expected["query"], expected["gallery"]
    distmat = ((query ** 2).sum(1)[:, None] + (gallery ** 2).sum(1)[None]
               - 2 * query @ gallery.T)
    cmc, m_ap, m_inp, *_ = numpy_eval.reference_eval_func(
        distmat, features["query_pids"], features["gallery_pids"], features["query_camids"],
        features["gallery_camids"])
    # reid_jax's metrics are float32: equal up to its rounding.
    assert results["cmc"][0] == pytest.approx(cmc[0], rel=1e-6)
    assert results["mAP"] == pytest.approx(m_ap, rel=1e-6)
    assert results["mINP"] == pytest.approx(m_inp, rel=1e-6)
    print(f"rank-1 {results['cmc'][0]:.6f} / {cmc[0]:.6f}, mAP {results['mAP']:.6f} / "
          f"{m_ap:.6f} (reid_jax / PyTorch + numpy)")
