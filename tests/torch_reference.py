"""PyTorch reference of the BoT model, written from scratch for the parity tests.

No torchvision here: `ResNet` re-implements torchvision's layout (v1.5, stride on the 3x3 conv)
and `Baseline` the BoT model (reid-strong-baseline `modeling/baseline.py`), with the state-dict
keys of the original BoT checkpoints: `base.conv1.weight`, `base.bn1.*`,
`base.layer1.0.conv1.weight`, `base.layer1.0.downsample.{0,1}.*`, `bottleneck.*`,
`classifier.weight` (and `classifier.bias` for neck "no").

Tests import it as `import torch_reference` (pytest puts tests/ on sys.path); importing this
module needs torch, so import it after the `torch` fixture / `pytest.importorskip("torch")`.

Helpers: `randomize_` (weights, affine params and running statistics that all matter),
`random_images` (structured test images), `load_flax_variables` (Flax variables -> this model,
an independent inverse of the key mapping), `to_nhwc` / `to_nchw` for images, and
`eval_features_both_necks` (a reference and a Flax model's eval features, after and before the
neck).
"""

import math
from collections.abc import Callable

import jax
import numpy as np
import torch
from torch import nn

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet(nn.Module):
    """torchvision ResNet without avgpool/fc. Input [B, 3, H, W]; output the last feature map.

    stem_relu=False is BoT's backbone (conv1 -> bn1 -> maxpool, no ReLU).
    """

    def __init__(self, depth: int = 50, last_stride: int = 2, stem_relu: bool = True):
        super().__init__()
        block = BasicBlock if depth < 50 else Bottleneck
        self.stem_relu = stem_relu
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        sizes = STAGE_SIZES[depth]
        self.layer1 = self._make_layer(block, 64, sizes[0], 1)
        self.layer2 = self._make_layer(block, 128, sizes[1], 2)
        self.layer3 = self._make_layer(block, 256, sizes[2], 2)
        self.layer4 = self._make_layer(block, 512, sizes[3], last_stride)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        if self.stem_relu:
            x = torch.relu(x)
        x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Baseline(nn.Module):
    """BoT Baseline. Train forward: (cls_score [B, C], global_feat [B, D]); eval forward: the
    feature after the neck (neck_feat "after") or before it ("before"), [B, D]."""

    def __init__(self, num_classes: int, depth: int = 50, last_stride: int = 1,
                 stem_relu: bool = False, neck: str = "bnneck", neck_feat: str = "after"):
        super().__init__()
        self.base = ResNet(depth, last_stride, stem_relu)
        self.in_planes = 512 * (1 if depth < 50 else 4)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.neck = neck
        self.neck_feat = neck_feat
        if neck == "no":
            self.classifier = nn.Linear(self.in_planes, num_classes)
        elif neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(self.in_planes)
            self.bottleneck.bias.requires_grad_(False)  # no shift
            self.classifier = nn.Linear(self.in_planes, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)
        else:
            raise ValueError(f"neck={neck!r}")

    def forward(self, x: torch.Tensor):
        global_feat = self.gap(self.base(x)).flatten(1)
        feat = self.bottleneck(global_feat) if self.neck == "bnneck" else global_feat
        if self.training:
            return self.classifier(feat), global_feat
        return feat if self.neck_feat == "after" else global_feat


def randomize_(model: nn.Module, seed: int, image_size: tuple[int, int] = (64, 32)) -> nn.Module:
    """Random weights where every parameter and buffer matters, activations kept O(1).

    Convs: N(0, 2 / fan_out); Linears N(0, 1 / fan_in), bias U(-0.1, 0.1) (logits O(1)); BN affine:
    weight U(0.5, 1.5), bias N(0, 0.2). Running statistics: set to the batch statistics of 16
    `random_images` of `image_size` (so eval-mode activations stay normalised), then perturbed
    (mean + N(0, 0.1), var * U(0.7, 1.4)). The BNNeck's variance also gets + 1: some pooled
    channels barely vary across images, and 1 / sqrt(var) would amplify the float32 rounding of
    the backbone (~2e-5 for ResNet-50, torch vs its own float64 run) past a 1e-4 tolerance.
    Returns the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan = (m.weight.shape[0] * math.prod(m.weight.shape[2:])
                       if isinstance(m, nn.Conv2d) else m.weight.shape[1] / 2)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan))
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> running stats = batch stats
        model.train()
        model(random_images(16, image_size, seed))
        for m in norms:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) * 0.7 + 0.7)
            if isinstance(m, nn.BatchNorm1d):
                m.running_var.add_(1.0)
    return model.eval()


def random_images(batch: int, image_size: tuple[int, int], seed: int) -> torch.Tensor:
    """[B, 3, H, W] float32 test images with image-level structure: bilinearly upsampled 8x4
    noise plus 0.3 x pixel noise. (With i.i.d. pixel noise alone, pooled features are nearly
    equal across images; their tiny variance, once in a BatchNorm, amplifies rounding noise.)"""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, 8, 4, generator=gen)
    smooth = nn.functional.interpolate(coarse, size=image_size, mode="bilinear")
    return smooth + 0.3 * torch.randn(batch, 3, *image_size, generator=gen)


def _flax_path(torch_key: str) -> tuple[str, tuple[str, ...], str]:
    """`base.layer1.0.downsample.1.running_var` -> ('batch_stats', ('backbone', 'layer1_0',
    'downsample_bn'), 'var'). Returns (collection, module path, leaf name)."""
    parts = torch_key.split(".")
    *modules, leaf = parts
    if modules[0] == "base":
        path = ["backbone"]
        rest = modules[1:]
        if rest[0].startswith("layer"):
            path.append(f"{rest[0]}_{rest[1]}")
            rest = rest[2:]
            if rest[0] == "downsample":
                rest = ["downsample_conv" if rest[1] == "0" else "downsample_bn"]
        path += rest
    else:
        path = ["neck", *modules]
    is_norm = path[-1].startswith("bn") or path[-1] in ("downsample_bn", "bottleneck")
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", tuple(path), {"running_mean": "mean", "running_var": "var"}[leaf]
    if leaf == "weight":
        return "params", tuple(path), "scale" if is_norm else "kernel"
    return "params", tuple(path), "bias"


def load_flax_variables(model: Baseline, variables: dict) -> Baseline:
    """Copies Flax {'params', 'batch_stats'} of reid_jax's Baseline into this torch model (see
    `copy_flax_variables`)."""
    return copy_flax_variables(model, variables, _flax_path)


def copy_flax_variables(model: nn.Module, variables: dict,
                        locate: Callable[[str], tuple[str, tuple[str, ...], str]]) -> nn.Module:
    """Copies Flax variables {'params', 'batch_stats'} (numpy, any float dtype) into the torch
    `model`, in the model's own dtype. `locate(state-dict key)` gives (collection, module path,
    leaf). Conv kernels HWIO -> OIHW, Dense kernels [in, out] -> Linear weights [out, in]. Every
    parameter and running statistic must be found (KeyError otherwise) with its shape
    (ValueError otherwise); `num_batches_tracked` is left alone. Returns `model`."""
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            if key.endswith("num_batches_tracked"):
                continue
            collection, path, leaf = locate(key)
            node = variables[collection]
            for name in path:
                node = node[name]
            value = np.array(node[leaf])  # a writable copy (jax arrays give read-only views)
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)
            elif value.ndim == 2:
                value = value.T
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{key}: flax {value.shape}, torch {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return model


def to_nhwc(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] torch -> [B, H, W, 3] float32 numpy."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] numpy -> [B, 3, H, W] float32 torch."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32)
                                                 .transpose(0, 3, 1, 2)))


NECK_FEATS = ("after", "before")


def eval_features_both_necks(reference: nn.Module, model, variables: dict,
                             images: torch.Tensor) -> tuple[dict, dict]:
    """Eval features of `reference` (a torch model with a `neck_feat` attribute) and of the
    Flax `model` (with its `variables`; cloned per `neck_feat`) on `images` [B, 3, H, W], for
    neck_feat "after" and "before": ({neck_feat: torch [B, D]}, {neck_feat: Flax [B, D]}),
    float32 numpy, the Flax side at matmul precision "highest" in one jit."""
    expected = {}
    reference.eval()
    with torch.no_grad():
        for neck_feat in NECK_FEATS:
            reference.neck_feat = neck_feat
            expected[neck_feat] = reference(images).numpy()

    @jax.jit
    def features(variables, images):
        return {neck_feat: model.clone(neck_feat=neck_feat).apply(variables, images, train=False)
                for neck_feat in NECK_FEATS}

    with jax.default_matmul_precision("highest"):
        got = features(variables, to_nhwc(images))
    return expected, {k: np.asarray(v) for k, v in got.items()}
