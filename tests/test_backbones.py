"""BoT's other backbones (IBN-a ResNet, SE-ResNet, SE-ResNeXt) against the PyTorch transcriptions
in tests/torch_backbones.py: their layers and blocks (fast), the whole BoT model at 256x128
through a `.pth` (slow), the key layouts and the config choice.

Weights go the way a user's would: random torch model -> torch.save (BoT key layout) -> our
reader and mapping -> Flax. Images are NCHW for torch, NHWC for ours.
"""

import math

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")

import torch_backbones as tb  # noqa: E402
import torch_reference as tr  # noqa: E402
from torch import nn  # noqa: E402

from configs import market  # noqa: E402
from reid_jax import torch_weights  # noqa: E402
from reid_jax.models import Baseline, create_model, init_variables, layers, resnet  # noqa: E402
from reid_jax.models.senet import Layer0  # noqa: E402
from reid_jax.validate import ConfigError, check_config  # noqa: E402

pytestmark = pytest.mark.torch

NUM_CLASSES = 11
BACKBONES = ("resnet_ibn_a", "se_resnet", "se_resnext")


def _randomize_unit_(module: nn.Module, seed: int) -> nn.Module:
    """Random weights, affine parameters and running statistics (O(1) activations) for a layer
    or block without an image input (no forward pass, unlike `torch_reference.randomize_`)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = math.prod(m.weight.shape[1:])
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                         nn.BatchNorm2d(planes * 4))


# name: (torch module, Flax module, input [B, C, H, W]); the Flax variables are the torch
# state dict through torch_weights' mapping (keys prefixed `base.`, variables under `backbone`).
UNITS = {
    "instance_norm": (lambda: nn.InstanceNorm2d(8, affine=True), layers.InstanceNorm(),
                      (2, 8, 7, 5)),
    "ibn": (lambda: tb.IBN(16), layers.IBN(), (2, 16, 7, 5)),
    "se_module": (lambda: tb.SEModule(64, 16), layers.SEModule(16), (2, 64, 5, 4)),
    # 40x22 -> conv 20x11: the ceil-mode pool keeps a partial last window in H, none in W.
    "layer0": (tb.layer0, Layer0(), (2, 3, 40, 22)),
    "ibn_block": (lambda: tb.BottleneckIBN(64, 16, True, 2, _downsample(64, 16, 2)),
                  resnet.Bottleneck(16, 2, ibn=True), (2, 64, 9, 7)),
    "se_resnet_block": (lambda: tb.SEResNetBottleneck(64, 32, 1, 16, 2, _downsample(64, 32, 2)),
                        resnet.Bottleneck(32, 2, stride_on_1x1=True, se_reduction=16),
                        (2, 64, 9, 7)),
    "se_resnext_block": (lambda: tb.SEResNeXtBottleneck(64, 32, 32, 16, 2,
                                                        _downsample(64, 32, 2)),
                         resnet.Bottleneck(32, 2, groups=32, base_width=4, se_reduction=16),
                         (2, 64, 9, 7)),
}


def _args(module, x, train: bool) -> tuple:
    """InstanceNorm and SEModule take no `train` argument (no batch statistics)."""
    return (x,) if isinstance(module, (layers.InstanceNorm, layers.SEModule)) else (x, train)


def _under_backbone(variables: dict) -> dict:
    return {collection: {"backbone": tree} for collection, tree in variables.items()}


def _unit_variables(reference: nn.Module, flax_variables: dict) -> dict:
    """`reference`'s state dict mapped onto (the shapes of) `flax_variables` by torch_weights.
    Copies: `Tensor.numpy()` shares memory with the buffers a train forward updates in place."""
    state = {f"base.{k}": v.numpy().copy() for k, v in reference.state_dict().items()}
    mapped = torch_weights.torch_to_flax(state, _under_backbone(flax_variables))
    return {collection: tree["backbone"] for collection, tree in mapped.items()}


@pytest.mark.parametrize("name", list(UNITS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_units_match_torch(name, train):
    """Each layer / block: output (and, in train mode, the updated BN running statistics)."""
    make_torch, module, shape = UNITS[name]
    reference = _randomize_unit_(make_torch(), seed=len(name))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    nhwc = tr.to_nhwc(x)
    variables = _unit_variables(reference, jax.eval_shape(
        lambda: module.init(jax.random.key(0), *_args(module, nhwc, False))))

    reference.train(train)
    with torch.no_grad():
        expected = reference(x).permute(0, 2, 3, 1).numpy()
    mutable = ["batch_stats"] if train and "batch_stats" in variables else False
    with jax.default_matmul_precision("highest"):
        got = module.apply(variables, *_args(module, nhwc, train), mutable=mutable)
    got, updates = got if mutable else (got, None)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    if updates is not None:
        want = _unit_variables(reference, variables)["batch_stats"]
        for (path, value), expect in zip(
                jax.tree_util.tree_flatten_with_path(updates["batch_stats"])[0],
                jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(value, expect, atol=1e-6, rtol=0,
                                       err_msg=jax.tree_util.keystr(path))


# --- the whole BoT model ----------------------------------------------------------------------

def _abstract(model: Baseline, image_size: tuple[int, int]) -> dict:
    return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size))


def _max_error(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_baseline_matches_torch(tmp_path, backbone):
    """The 50-layer BoT model (default stem_relu=False: these backbones keep the stem ReLU
    regardless) at 256x128 (last stride 1: 16x8 last maps), loaded from a `.pth`:
    eval features after and before the neck (2 images) <= 1e-4; one train-mode forward
    (4 images): global feature <= 1e-4, logits <= 1e-4 x max |logit|, every updated running
    mean and (unbiased) running variance <= 1e-5 x max(1, its largest value)."""
    size = (256, 128)
    reference = tb.randomize_(tb.Baseline(NUM_CLASSES, backbone), seed=7, image_size=size)
    path = tmp_path / f"{backbone}.pth"
    torch.save(reference.state_dict(), path)
    model = Baseline(NUM_CLASSES, backbone=backbone)
    variables = torch_weights.load_torch_weights(path, _abstract(model, size))
    errors = {}

    expected, got = tr.eval_features_both_necks(reference, model, variables,
                                                tr.random_images(2, size, seed=1))
    for neck_feat in tr.NECK_FEATS:
        assert got[neck_feat].shape == (2, 2048)
        errors[neck_feat] = _max_error(got[neck_feat], expected[neck_feat])

    images = tr.random_images(4, size, seed=2)
    reference.train()
    with torch.no_grad():
        logits, global_feat = reference(images)
    updated = {k: v.numpy() for k, v in reference.state_dict().items()}
    want_stats = jax.tree.leaves(torch_weights.torch_to_flax(updated, variables)["batch_stats"])
    with jax.default_matmul_precision("highest"):
        (got_logits, got_feat), state = jax.jit(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
                variables, tr.to_nhwc(images))
    errors["logits"] = _max_error(got_logits, logits.numpy())
    errors["global_feat"] = _max_error(got_feat, global_feat.numpy())
    got_stats = jax.tree_util.tree_flatten_with_path(state["batch_stats"])[0]
    assert len(got_stats) == len(want_stats)
    # Relative above 1: the running variances of the bn1s (1x1 reductions of the residual
    # stream) reach ~30, where 1e-5 is ~5 float32 ulps; torch's float32 statistics are ~1.4e-5
    # off its float64 ones there.
    stat_errors = {jax.tree_util.keystr(path): _max_error(got, want) / max(1.0, np.abs(want).max())
                   for (path, got), want in zip(got_stats, want_stats, strict=True)}
    errors["running_stats"] = float(max(stat_errors.values()))
    print(f"{backbone} max abs errors: {errors}")

    for name in ("after", "before", "global_feat"):
        assert errors[name] <= 1e-4, (name, errors)
    # Train-mode logits go through the BNNeck's statistics of 4 images: channels whose batch std
    # is ~0.005 amplify the backbone's float32 rounding (~5e-6) ~200x; torch's own float32 logits
    # are ~1e-4 off its float64 ones (|logits| ~5). Hence 1e-4 relative to the largest logit.
    scale = max(1.0, float(np.abs(logits.numpy()).max()))
    assert errors["logits"] <= 1e-4 * scale, (errors, scale)
    worst = max(stat_errors, key=stat_errors.get)
    assert errors["running_stats"] <= 1e-5, (worst, stat_errors[worst])
    # The update really moved them: the starting statistics are far from the updated ones.
    before = jax.tree.leaves(variables["batch_stats"])
    assert max(_max_error(b, w) for b, w in zip(before, want_stats, strict=True)) > 1e-2


# --- key layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("source,target,expected", [
    ("resnet_ibn_a", "resnet", ["missing (", "base.layer1.0.bn1.weight", "unexpected (",
                                "base.layer1.0.bn1.IN.weight", "base.layer3.5.bn1.BN.running_var"]),
    ("se_resnet", "se_resnext", ["shape mismatch (", "base.layer1.0.conv1.weight: checkpoint "
                                 "(64, 64, 1, 1), model (128, 64, 1, 1)",
                                 "base.layer4.2.conv2.weight: checkpoint (512, 512, 3, 3), "
                                 "model (1024, 32, 3, 3)"]),
    ("se_resnext", "resnet_ibn_a", ["missing (", "base.conv1.weight", "base.layer2.1.bn1.IN.bias",
                                    "unexpected (", "base.layer0.conv1.weight",
                                    "base.layer4.2.se_module.fc2.bias"]),
])
def test_other_backbones_checkpoint_is_one_error(tmp_path, source, target, expected):
    """A `.pth` of one backbone into a model of another: one ValueError naming the file and
    listing every missing, unexpected and wrongly shaped key."""
    path = tmp_path / f"{source}.pth"
    torch.save(tb.Baseline(NUM_CLASSES, source).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit the model") as error:
        torch_weights.load_torch_weights(
            path, _abstract(Baseline(NUM_CLASSES, backbone=target), (64, 32)))
    message = str(error.value)
    assert str(path) in message
    assert "base.fc" not in message  # IBN-a's unused ImageNet classifier is skipped
    for text in expected:
        assert text in message, text


@pytest.mark.parametrize("backbone,classifier", [("resnet_ibn_a", "fc"),
                                                 ("se_resnext", "last_linear")])
def test_imagenet_backbone_layout(backbone, classifier):
    """An ImageNet backbone (IBN-Net's resnet50_ibn_a: `conv1...`, `fc.*`; Cadene's SENet:
    `layer0...`, `last_linear.*`) fills the backbone, the classifier skipped, the neck kept;
    BoT-layout checkpoints of IBN-a skip the unused `base.fc.*` likewise."""
    torch_model = tb.BACKBONES[backbone](50, 2)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    state.setdefault(f"{classifier}.weight", np.ones((1000, 2048), np.float32))
    state.setdefault(f"{classifier}.bias", np.ones(1000, np.float32))
    model = Baseline(NUM_CLASSES, backbone=backbone)
    target = jax.tree.map(lambda leaf: np.full(leaf.shape, 0.5, leaf.dtype),
                          _abstract(model, (64, 32)))
    assert torch_weights.detect_layout(state) == "torchvision"
    variables = torch_weights.torch_to_flax(state, target)
    np.testing.assert_array_equal(variables["params"]["neck"]["bottleneck"]["scale"], 0.5)
    backbone_leaves = {path: value for path, value in traverse_util.flatten_dict(variables).items()
                       if path[1] == "backbone"}
    assert len(backbone_leaves) == len([k for k in state if not k.startswith(classifier)
                                        and not k.endswith("num_batches_tracked")])
    for path, value in backbone_leaves.items():
        key = torch_weights.torch_key(path, "torchvision")
        want = state[key].transpose(2, 3, 1, 0) if state[key].ndim == 4 else state[key]
        np.testing.assert_array_equal(value, want, err_msg=key)


# --- the config -------------------------------------------------------------------------------

def test_config_selects_backbone():
    config = market.get_config()
    assert config.model.backbone == "resnet"
    assert create_model(config.model, NUM_CLASSES).backbone == "resnet"
    config.model.backbone = "resnet_ibn_a"
    check_config(config)
    assert create_model(config.model, NUM_CLASSES).backbone == "resnet_ibn_a"
    config.model.backbone = "senet154"
    with pytest.raises(ConfigError, match="config.model.backbone='senet154': expected one of"):
        check_config(config)
    config.model.backbone, config.model.depth = "se_resnext", 152
    with pytest.raises(ValueError, match="model.depth=152 does not exist for "
                                         "model.backbone='se_resnext'"):
        create_model(config.model, NUM_CLASSES)
