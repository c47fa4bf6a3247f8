"""`python -m reid_jax.export` (run in-process): the ONNX model (onnxruntime) and the reloaded
StableHLO module (`jax.export.deserialize(...).call`) give `FeatureExtractor`'s features of real
images (../shared/data/market1501-mini, resized to the model's size) within 1e-4, at batch sizes
1 and 5 from one file: uint8 NHWC pixels normalised in the graph, float32 NCHW normalised
outside. Models: tests/tiny_config.py's BoT ResNet-18 at 64x48 (random PyTorch weights converted
to a variables checkpoint) and its AlignedReID (a random `.pth`, flip averaging on: ONNX, global
and local features). The ONNX cases skip without the `export` extra. Mistakes give one `error:`
line and status 2."""

from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("PIL", minversion="13")  # decode_resize follows Pillow 13

import tiny_config  # noqa: E402
from PIL import Image  # noqa: E402
from test_cli import assert_one_error  # noqa: E402

from data_pipelines.augment import AugmentConfig, normalize  # noqa: E402
from reid_jax import FeatureExtractor, convert, export  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 7
BATCHES = (1, 5)
ATOL = 1e-4


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # --config=tests/tiny_config.py


@pytest.fixture(scope="module")
def pixels(shared_data: Path) -> np.ndarray:
    """5 real images (3 query, 2 gallery) at tiny_config's 64x48, resized as the evaluation
    does (PIL bilinear): uint8 [5, 64, 48, 3]."""
    source = shared_data / "market1501-mini"
    paths = sorted((source / "query").glob("*.jpg"))[:3]
    paths += sorted((source / "bounding_box_test").glob("0*.jpg"))[:2]
    height, width = tiny_config.get_config().data.image_size
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((width, height),
                                                                    Image.BILINEAR))
                     for p in paths])


@pytest.fixture(scope="module")
def bot_checkpoint(tmp_path_factory, torch) -> Path:
    """A random PyTorch BoT ResNet-18 at 64x48 (every weight and BN statistic matters)
    converted to a variables checkpoint."""
    import torch_reference

    folder = tmp_path_factory.mktemp("bot")
    config = tiny_config.get_config("bot")
    net = torch_reference.randomize_(torch_reference.Baseline(NUM_CLASSES, depth=18), seed=0,
                                     image_size=tuple(config.data.image_size))
    torch.save(net.state_dict(), folder / "bot.pth")
    convert.convert(folder / "bot.pth", folder / "model", config)
    return folder / "model"


@pytest.fixture(scope="module")
def bot_features(bot_checkpoint: Path, pixels: np.ndarray) -> np.ndarray:
    return FeatureExtractor(bot_checkpoint, tiny_config.get_config("bot"))(pixels)


def run_export(capsys, *args: str) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `python -m reid_jax.export ARGS`."""
    status = export.cli(["reid_jax.export", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def needs_onnx() -> None:
    """Skips the test without the `export` extra's converter and runtime."""
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")


def run_model(path: Path, model_format: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of the exported file `path` for `images`, by name."""
    if model_format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(None, {"images": images}), strict=True))
    exported = jax.export.deserialize(path.read_bytes())  # no model code involved
    return {key: np.asarray(value) for key, value in exported.call(images).items()}


@pytest.mark.parametrize("model_format", export.FORMATS)
@pytest.mark.parametrize("input_layout", export.INPUTS)
def test_exported_bot_gives_the_extractor_features(model_format, input_layout, bot_checkpoint,
                                                   bot_features, pixels, tmp_path, capsys):
    if model_format == "onnx":
        needs_onnx()
    path = tmp_path / f"bot.{model_format}"
    status, out, err = run_export(capsys, f"--checkpoint={bot_checkpoint}",
                                  "--config=tests/tiny_config.py", f"--format={model_format}",
                                  f"--output={path}", f"--input={input_layout}")
    assert status == 0, err
    norm = "in the graph" if input_layout == "uint8_nhwc" else "outside"  # the defaults
    assert out.startswith(f"wrote {path} ({model_format}, input {input_layout} ["), out
    assert f"normalisation {norm}, dynamic batch" in out and "features [N, 512]" in out, out
    if input_layout == "uint8_nhwc":
        images = pixels
    else:  # what the user normalises: (x / 255 - mean) / std, NCHW
        augment = AugmentConfig.from_config(tiny_config.get_config().data)
        images = np.ascontiguousarray(normalize(pixels, augment).transpose(0, 3, 1, 2))
    assert np.abs(bot_features[0] - bot_features[1]).max() > 0.05  # features vary with images
    for batch in BATCHES:
        got = run_model(path, model_format, images[:batch])
        assert list(got) == ["features"]
        assert got["features"].dtype == np.float32 and got["features"].shape == (batch, 512)
        np.testing.assert_allclose(got["features"], bot_features[:batch], rtol=0, atol=ATOL,
                                   err_msg=f"{model_format} {input_layout} batch {batch}")


def test_exported_aligned_reid_gives_global_and_local_features(pixels, tmp_path, torch, capsys):
    import torch_aligned
    import torch_reference

    needs_onnx()
    config = tiny_config.get_config("aligned")
    config.eval.flip = True
    net = torch_aligned.Model(num_classes=NUM_CLASSES, depth=18)
    torch_reference.randomize_(net, seed=1, image_size=tuple(config.data.image_size))
    torch.save(net.state_dict(), tmp_path / "aligned.pth")
    expected = FeatureExtractor(tmp_path / "aligned.pth", config).embed(pixels)
    assert expected["local_features"].shape == (5, 2, 128)
    path = tmp_path / "aligned.onnx"  # (StableHLO: the same dict as BoT's, one key more)
    status, out, err = run_export(capsys, f"--checkpoint={tmp_path / 'aligned.pth'}",
                                  "--config=tests/tiny_config.py:aligned",
                                  "--config.eval.flip=true", "--format=onnx", f"--output={path}")
    assert status == 0, err
    assert "outputs: features [N, 512], local_features [N, 2, 128]" in out, out
    for batch in BATCHES:
        got = run_model(path, "onnx", pixels[:batch])
        assert list(got) == ["features", "local_features"]
        for key, value in got.items():
            np.testing.assert_allclose(value, expected[key][:batch], rtol=0, atol=ATOL,
                                       err_msg=f"{key} batch {batch}")


@pytest.mark.parametrize("args,message", [
    (("--format=tflite",), "flag --format=tflite: value should be one of <onnx|stablehlo>"),
    (("--format=onnx", "--normalize_in_graph=false"),
     "--input=uint8_nhwc takes raw pixels, so the normalisation must be in the graph"),
    (("--format=onnx", "--output=/nowhere/at/all/bot.onnx"), "folder /nowhere/at/all does not "
                                                              "exist"),
    (("--format=stablehlo", "--checkpoint=/nowhere/model"),
     "checkpoint /nowhere/model: no such file or folder"),
    (("--format=stablehlo", "--platforms=cpu,gpu"), "--platforms=cpu,gpu: expected some of"),
    (("--format=stablehlo", "--config.data.mean=(1, 2)"), "config.data.mean=(1, 2): expected 3"),
    (("--format=onnx", "--config.model.dtype=bfloat16"), "pass --config.model.dtype=float32"),
])
def test_mistakes_give_one_error_line(args, message, tmp_path, capsys):
    flags = {"--checkpoint": str(tmp_path), "--output": str(tmp_path / "bot.onnx")}
    flags.update(arg.split("=", 1) for arg in args)
    status, _, err = run_export(capsys, "--config=tests/tiny_config.py",
                                *(f"{key}={value}" for key, value in flags.items()))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert_one_error(status, errors, err, message)


def test_missing_converter_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "ONNX_MODULES", ("jax2onnx", "no_such_converter_module"))
    status, _, err = run_export(capsys, "--config=tests/tiny_config.py", "--format=onnx",
                                f"--checkpoint={tmp_path}", f"--output={tmp_path / 'a.onnx'}")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert_one_error(status, errors, err, "--format=onnx needs no_such_converter_module, not "
                                          "installed: pip install -e '.[export]'")
