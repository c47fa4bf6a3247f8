"""The `.pth` reader, the torch -> Flax key mapping, variables checkpoints and the convert CLI,
checked against files written by PyTorch itself and models from tests/torch_reference.py."""

import os
import subprocess
import sys
import textwrap
import zipfile
from fractions import Fraction
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402

from configs import market  # noqa: E402
from reid_jax import checkpoint, convert, torch_weights  # noqa: E402
from reid_jax.models import Baseline, init_variables  # noqa: E402

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 32)  # (H, W) of the small test images


def _abstract(model: Baseline) -> dict:
    return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), SIZE))


def _jit_apply(model: Baseline, variables: dict, images: np.ndarray) -> np.ndarray:
    """Eval-mode forward (jit: faster than op-by-op for a ResNet)."""
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


@pytest.fixture(scope="module")
def r18():
    """A randomised ResNet-18 BoT model (torch, eval mode, 7 classes)."""
    return tr.randomize_(tr.Baseline(num_classes=7, depth=18), seed=0)


def _save(obj, path: Path, **kwargs) -> Path:
    torch.save(obj, path, **kwargs)
    return path


# --- reading .pth files ---------------------------------------------------------------------

@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_matches_torch_tensors(tmp_path, zip_format):
    storage = torch.randn(5, 6)
    tensors = {
        "float32": torch.randn(3, 4),
        "transposed": storage.t(),  # non-contiguous strides
        "offset_view": storage[1:4, 2:5],  # storage offset, shares the storage above
        "whole": storage,
        "parameter": torch.nn.Parameter(torch.randn(2, 3)),
        "float64": torch.randn(4, dtype=torch.float64),
        "float16": torch.randn(4).half(),
        "bfloat16": torch.randn(4).bfloat16(),
        "int64_scalar": torch.tensor(7),
        "int32": torch.arange(5, dtype=torch.int32),
        "uint8": torch.arange(5, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }
    path = _save(tensors, tmp_path / "t.pth", _use_new_zipfile_serialization=zip_format)
    read = torch_weights.read_torch_file(path)
    assert set(read) == set(tensors)
    for key, tensor in tensors.items():
        assert str(read[key].dtype) == str(tensor.dtype).removeprefix("torch."), key
        assert read[key].shape == tuple(tensor.shape), key
        np.testing.assert_array_equal(np.asarray(read[key]).astype(np.float64),
                                      tensor.detach().double().numpy(), err_msg=key)


def test_reader_works_without_torch(tmp_path, r18):
    src = _save({"state_dict": {f"module.{k}": v for k, v in r18.state_dict().items()}},
                tmp_path / "m.pth")
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from reid_jax.torch_weights import load_pth
        state = load_pth(sys.argv[1])
        assert not [m for m, v in sys.modules.items() if m.startswith("torch") and v], "torch"
        np.savez(sys.argv[2], **state)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                    "")])}
    subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / "out.npz")],
                   check=True, env=env, cwd=tmp_path)
    with np.load(tmp_path / "out.npz") as out:
        expected = r18.state_dict()
        assert set(out.files) == set(expected)
        for key, tensor in expected.items():
            np.testing.assert_array_equal(out[key], tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 120},
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
], ids=["bare", "state_dict", "model", "state_dict+module", "module"])
def test_load_pth_unwraps(tmp_path, wrap):
    state = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.running_mean": torch.randn(4)}
    loaded = torch_weights.load_pth(_save(wrap(state), tmp_path / "w.pth"))
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        np.testing.assert_array_equal(loaded[key], tensor.numpy())


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unknown_pickle_globals_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _save({"w": torch.ones(1), "x": _Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth.*refusing to unpickle global (posix|os)"):
        torch_weights.load_pth(evil)
    assert not marker.exists()
    benign = _save({"w": torch.ones(1), "x": Fraction(1, 2)}, tmp_path / "frac.pth")
    with pytest.raises(ValueError, match=r"frac\.pth.*fractions\.Fraction"):
        torch_weights.load_pth(benign)


def _bad_file(kind: str, good: Path, tmp: Path) -> Path:
    """A file that is not a readable state dict; `good` is a valid zip .pth."""
    path = tmp / f"{kind}.pth"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated_zip":
        path.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    elif kind == "short_storage":  # the first storage record cut in half
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                dst.writestr(info, data[:len(data) // 2] if info.filename.endswith("data/0")
                             else data)
    elif kind == "not_a_dict":
        _save([torch.ones(2)], path)
    elif kind == "non_tensor_entry":
        _save({"w": torch.ones(2), "epoch": 3}, path)
    return path


@pytest.mark.parametrize("kind", ["text", "random_bytes", "truncated_zip", "short_storage",
                                  "not_a_dict", "non_tensor_entry"])
def test_bad_files_raise_naming_the_file(tmp_path, kind):
    good = _save({"w": torch.randn(64)}, tmp_path / "good.pth")
    bad = _bad_file(kind, good, tmp_path)
    with pytest.raises(ValueError, match=bad.name):
        torch_weights.load_pth(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        torch_weights.load_pth(tmp_path / "nothere.pth")


# --- mapping onto the Flax model --------------------------------------------------------------

@pytest.mark.parametrize("neck", ["bnneck", "no"])
def test_bot_layout_round_trip(tmp_path, neck):
    """torch -> .pth -> our reader and mapping -> Flax -> the test tree's own inverse mapping ->
    a fresh torch model: every parameter and running statistic arrives unchanged."""
    model = tr.randomize_(tr.Baseline(7, depth=18, neck=neck), seed=1)
    path = _save(model.state_dict(), tmp_path / "bot.pth")
    variables = torch_weights.load_torch_weights(path, _abstract(Baseline(7, 18, neck=neck)))
    fresh = tr.load_flax_variables(tr.Baseline(7, depth=18, neck=neck), variables)
    for key, tensor in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), tensor.numpy(), key)


def test_torchvision_layout_loads_backbone_keeps_neck(tmp_path):
    backbone = tr.randomize_(tr.ResNet(depth=18, last_stride=2, stem_relu=True), seed=2)
    state = {**backbone.state_dict(), "fc.weight": torch.randn(1000, 512),
             "fc.bias": torch.randn(1000)}
    model = Baseline(5, depth=18, last_stride=2, stem_relu=True, neck_feat="before")
    rng = np.random.default_rng(3)
    target = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), _abstract(model))
    variables = torch_weights.load_torch_weights(_save(state, tmp_path / "imagenet.pth"), target)

    for leaf, init in zip(jax.tree.leaves(variables["params"]["neck"]),
                          jax.tree.leaves(target["params"]["neck"]), strict=True):
        np.testing.assert_array_equal(leaf, init)
    images = tr.random_images(2, SIZE, seed=10)
    with torch.no_grad():
        expected = backbone(images).mean(dim=(2, 3)).numpy()
    with jax.default_matmul_precision("highest"):
        got = _jit_apply(model, variables, tr.to_nhwc(images))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_mismatch_lists_every_problem_in_one_error(r18):
    state = {k: v.numpy() for k, v in r18.state_dict().items()}
    del state["base.layer1.0.conv1.weight"]
    del state["base.layer4.1.bn2.running_var"]
    state["base.layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    state["bottleneck.weight"] = np.ones(5, np.float32)
    state["base.conv1.weight"] = np.ones((64, 3, 3, 3), np.float32)
    with pytest.raises(ValueError) as error:
        torch_weights.torch_to_flax(state, _abstract(Baseline(7, 18)), source="ckpt.pth")
    message = str(error.value)
    for text in ("ckpt.pth", "missing (2)", "base.layer1.0.conv1.weight",
                 "base.layer4.1.bn2.running_var", "unexpected (1)", "base.layer9.0.conv1.weight",
                 "shape mismatch (2)", "bottleneck.weight: checkpoint (5,), model (512,)",
                 "base.conv1.weight: checkpoint (64, 3, 3, 3), model (64, 3, 7, 7)"):
        assert text in message, text


# --- variables checkpoints --------------------------------------------------------------------

def test_checkpoint_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    variables = {"params": {"a": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}},
                 "batch_stats": {"a": {"mean": rng.normal(size=2).astype(np.float32)}}}
    path = checkpoint.save_variables(tmp_path / "ckpt", variables, {"source": "x.pth", "n": 3})
    restored = checkpoint.load_variables(tmp_path / "ckpt", target=variables)
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    assert checkpoint.load_metadata(path) == {"source": "x.pth", "n": 3}

    with pytest.raises(FileExistsError, match="ckpt"):
        checkpoint.save_variables(path, variables)
    with pytest.raises(FileNotFoundError, match="absent"):
        checkpoint.load_variables(tmp_path / "absent")
    other = {"params": {"a": {"kernel": np.zeros((3, 3))}, "b": {"bias": np.zeros(1)}}}
    with pytest.raises(ValueError) as error:
        checkpoint.load_variables(path, target=other)
    for text in (str(path), "missing params/b/bias", "unexpected batch_stats/a/mean",
                 "params/a/kernel: checkpoint (3, 2), model (3, 3)"):
        assert text in str(error.value), text


# --- the convert CLI --------------------------------------------------------------------------

def test_convert_cli_end_to_end(tmp_path):
    """ResNet-18 BoT checkpoint with stem ReLU, converted through `python -m reid_jax.convert`
    with config overrides; the restored variables reproduce the torch features."""
    model = tr.randomize_(tr.Baseline(9, depth=18, stem_relu=True), seed=4)
    src = _save(model.state_dict(), tmp_path / "bot_r18.pth")
    dst = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "reid_jax.convert", str(src), str(dst),
         f"--config={REPO / 'configs' / 'market.py'}", "--config.model.depth=18",
         "--config.model.stem_relu=True", "--config.data.image_size=(64, 32)"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "bot layout" in result.stdout and "9 classes" in result.stdout

    flax_model = Baseline(9, depth=18, stem_relu=True)
    variables = checkpoint.load_variables(dst, target=_abstract(flax_model))
    assert checkpoint.load_metadata(dst)["num_classes"] == 9
    images = tr.random_images(2, SIZE, seed=10)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    with jax.default_matmul_precision("highest"):
        got = _jit_apply(flax_model, variables, tr.to_nhwc(images))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_convert_needs_num_classes_without_classifier(tmp_path):
    backbone = tr.ResNet(depth=18)
    src = _save(backbone.state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(ValueError, match=r"imagenet\.pth holds a backbone only .*num_classes"):
        convert.convert(src, tmp_path / "out", market.get_config())
