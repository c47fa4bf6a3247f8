"""`reid_jax.FeatureExtractor` against `--mode=extract` (`run.extract`'s .npz) on the real JPEG
files of ../shared/data/market1501-mini, the same files given as paths, as uint8 arrays at their
original size (decoded by PIL) and as PIL images: a random PyTorch BoT ResNet-18 at 256x128
converted to a variables checkpoint, and a random PyTorch AlignedReID ResNet-18 `.pth` at 128x64
(global and local features, flip averaged, normalised). Also: one compilation per batch size,
and errors that name the input."""

import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("PIL", minversion="13")  # decode_resize follows Pillow 13

from PIL import Image  # noqa: E402

from configs import aligned, market  # noqa: E402
from reid_jax import FeatureExtractor, convert, run  # noqa: E402

NUM_CLASSES = 7
BATCH = 8  # config.data.eval_batch_size: the gallery spans two batches, the last one padded


@pytest.fixture(scope="module")
def mini_market(shared_data: Path, tmp_path_factory) -> Path:
    """A Market-1501 folder of real files: the 3 query images, 10 gallery images (distractors
    included, junk not: extract drops it) and 4 train images (listed, never decoded)."""
    source = shared_data / "market1501-mini"
    root = tmp_path_factory.mktemp("market")
    for folder, count in (("query", 3), ("bounding_box_test", 10), ("bounding_box_train", 4)):
        (root / folder).mkdir()
        kept = [p for p in sorted((source / folder).glob("*.jpg")) if not p.name.startswith("-1")]
        for path in kept[:count]:
            shutil.copy(path, root / folder)
    return root


def bot_config(root: Path):
    config = market.get_config()
    config.model.depth = 18
    config.data.root = str(root)
    config.data.eval_batch_size = BATCH
    return config


@pytest.fixture(scope="module")
def bot_checkpoint(mini_market: Path, tmp_path_factory, torch) -> Path:
    """A random PyTorch BoT ResNet-18 (every weight and BN statistic matters) converted to a
    variables checkpoint."""
    import torch_reference

    folder = tmp_path_factory.mktemp("bot")
    net = torch_reference.randomize_(torch_reference.Baseline(NUM_CLASSES, depth=18), seed=0,
                                     image_size=(256, 128))
    torch.save(net.state_dict(), folder / "bot.pth")
    convert.convert(folder / "bot.pth", folder / "model", bot_config(mini_market))
    return folder / "model"


@pytest.fixture(scope="module")
def bot_extractor(bot_checkpoint: Path, mini_market: Path) -> FeatureExtractor:
    return FeatureExtractor(bot_checkpoint, bot_config(mini_market))


def pil_pixels(paths: list[str]) -> list[np.ndarray]:
    """Each file decoded by PIL at its own size: uint8 [h, w, 3]."""
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def test_bot_features_equal_mode_extract_for_paths_arrays_and_pil_images(
        bot_extractor, bot_checkpoint, mini_market, tmp_path):
    config = bot_config(mini_market)
    npz = np.load(run.extract(config, tmp_path / "run", str(bot_checkpoint),
                              tmp_path / "features.npz"))
    for split in ("query", "gallery"):
        paths = list(npz[f"{split}_paths"])
        expected = npz[f"{split}_features"]
        assert np.abs(expected[0] - expected[1]).max() > 0.05  # features that vary with the image
        inputs = {"paths": paths, "uint8 array at the original size": np.stack(pil_pixels(paths)),
                  "PIL images": [Image.open(path) for path in paths]}
        for name, images in inputs.items():
            got = bot_extractor(images)
            assert got.dtype == np.float32 and got.shape == expected.shape == (len(paths), 512)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{split} {name}")
    assert len(npz["gallery_paths"]) == 10  # a full batch, then a padded one
    # Arrays already at the model's size (not resized again): the same features.
    height, width = config.data.image_size
    resized = [np.asarray(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR))
               for p in npz["query_paths"]]
    np.testing.assert_allclose(bot_extractor(resized), npz["query_features"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def aligned_setup(mini_market: Path, tmp_path_factory):
    """(config, .pth) of a random PyTorch AlignedReID ResNet-18 at the files' own 128x64, flip
    averaging and normalisation on."""
    torch = pytest.importorskip("torch")
    import torch_aligned
    import torch_reference

    config = aligned.get_config("global_local")
    config.model.depth = 18
    config.data.image_size = (128, 64)
    config.data.root = str(mini_market)
    config.data.eval_batch_size = BATCH
    config.eval.flip = True
    config.eval.feat_norm = True
    net = torch_aligned.Model(num_classes=NUM_CLASSES, depth=18)
    torch_reference.randomize_(net, seed=1, image_size=(128, 64))
    path = tmp_path_factory.mktemp("aligned") / "aligned.pth"
    torch.save(net.state_dict(), path)
    return config, path


def test_aligned_global_and_local_features_equal_mode_extract(aligned_setup, tmp_path):
    config, pth = aligned_setup
    npz = np.load(run.extract(config, tmp_path / "run", str(pth), tmp_path / "features.npz"))
    extractor = FeatureExtractor(pth, config)
    for split in ("query", "gallery"):
        paths = list(npz[f"{split}_paths"])
        assert np.abs(npz[f"{split}_local_features"][0] - npz[f"{split}_local_features"][1]
                      ).max() > 0.05
        for images in (paths, np.stack(pil_pixels(paths))):
            got = extractor.embed(images)
            assert sorted(got) == ["features", "local_features"]
            assert got["local_features"].shape == (len(paths), 4, 128)  # 4 rows at 128x64
            for key in got:
                np.testing.assert_allclose(got[key], npz[f"{split}_{key}"], rtol=0, atol=1e-6,
                                           err_msg=f"{split} {key}")


def test_the_forward_compiles_once_per_batch_size(aligned_setup, caplog):
    config, pth = aligned_setup
    extractor = FeatureExtractor(pth, config, batch_size=4)
    pixels = np.zeros((7, 128, 64, 3), np.uint8)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        first = extractor(pixels[:3])  # one padded batch
        second = extractor(pixels)  # two batches
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(embed_")]
    assert len(compiles) == 1, [r.getMessage()[:80] for r in compiles]
    np.testing.assert_array_equal(first, second[:3])


def test_bad_inputs_are_named(bot_extractor, bot_checkpoint, mini_market, tmp_path):
    good = str(next((mini_market / "query").glob("*.jpg")))
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"images\[1\]: cannot read image .*missing\.jpg"):
        bot_extractor([good, missing])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"images\[0\]: cannot read image .*notes\.jpg"):
        bot_extractor(tmp_path / "notes.jpg")
    with pytest.raises(ValueError, match=r"images: expected a uint8 array \[N, H, W, 3\] "
                                         r"\(RGB\), got float32 \[2, 256, 128, 3\]"):
        bot_extractor(np.zeros((2, 256, 128, 3), np.float32))
    with pytest.raises(ValueError, match=r"images: expected .*got uint8 \[256, 128, 3\]"):
        bot_extractor(np.zeros((256, 128, 3), np.uint8))  # one image needs a list or [1, ...]
    with pytest.raises(ValueError, match=r"images\[1\]: expected a uint8 array \[H, W, 3\] "
                                         r"\(RGB\), got uint8 \[64, 32, 4\]"):
        bot_extractor([np.zeros((64, 32, 3), np.uint8), np.zeros((64, 32, 4), np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\]: expected an image file path, a PIL "
                                        r"image or a uint8 array \[H, W, 3\], got int"):
        bot_extractor([3])
    with pytest.raises(ValueError, match="images: no image given"):
        bot_extractor([])
    config = bot_config(mini_market)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nowhere: no such file or folder"):
        FeatureExtractor(tmp_path / "nowhere", config)
    with pytest.raises(ValueError, match=r"select='best' picks among a run workdir's "
                                         r"checkpoints; .* is not a run workdir"):
        FeatureExtractor(bot_checkpoint, config, select="best")
