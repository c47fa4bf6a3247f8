"""PyTorch references of BoT's other backbones, transcribed for the parity tests (no torchvision,
no pretrainedmodels), with BoT's module names and so its state-dict keys:

- `ResNetIBN`: reid-strong-baseline `modeling/backbones/resnet_ibn_a.py` (`ResNet_IBN`,
  `Bottleneck_IBN`, `IBN`): stem conv1 -> bn1 -> ReLU -> maxpool(3, 2, padding 1); `bn1` of the
  blocks of layers 1-3 an `IBN` (`IN` InstanceNorm2d(affine) on the first half of the channels,
  `BN` on the rest); stride on the 3x3 conv. Like BoT's, it keeps the ImageNet classifier `fc`
  that its forward never uses (so BoT checkpoints hold `base.fc.*`).
- `SENet`: BoT's `modeling/backbones/senet.py` (Cadene's SENet, `last_linear` dropped,
  `last_stride` added) as BoT's `baseline.py` builds it for se_resnet* / se_resnext*: groups 1
  or 32, reduction 16, inplanes 64, input_3x3 False (layer0 = 7x7 conv, bn1, relu1,
  maxpool(3, 2, ceil_mode=True)), downsample kernel 1 / padding 0; `SEResNetBottleneck` (stride
  on conv1) or `SEResNeXtBottleneck` (base width 4, stride on the grouped 3x3).
- `Baseline`: `torch_reference.Baseline` (BoT's head) on one of these backbones.

`randomize_` extends `torch_reference.randomize_` to the InstanceNorm affine parameters.
Import after `pytest.importorskip("torch")`.
"""

import math
from collections import OrderedDict

import torch
import torch_reference as tr
from torch import nn


class IBN(nn.Module):
    def __init__(self, planes: int):
        super().__init__()
        half1 = int(planes / 2)
        self.half = half1
        self.IN = nn.InstanceNorm2d(half1, affine=True)
        self.BN = nn.BatchNorm2d(planes - half1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = torch.split(x, self.half, 1)
        return torch.cat((self.IN(split[0].contiguous()), self.BN(split[1].contiguous())), 1)


class BottleneckIBN(tr.Bottleneck):
    """BoT's Bottleneck_IBN: torchvision's Bottleneck whose bn1 is IBN when `ibn`."""

    def __init__(self, inplanes: int, planes: int, ibn: bool = False, stride: int = 1,
                 downsample=None):
        super().__init__(inplanes, planes, stride, downsample)
        if ibn:
            self.bn1 = IBN(planes)


class ResNetIBN(nn.Module):
    """BoT's ResNet_IBN (depth 50, 101, 152). Input [B, 3, H, W]; output the last feature map."""

    def __init__(self, depth: int = 50, last_stride: int = 1):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        sizes = tr.STAGE_SIZES[depth]
        self.layer1 = self._make_layer(64, sizes[0])
        self.layer2 = self._make_layer(128, sizes[1], 2)
        self.layer3 = self._make_layer(256, sizes[2], 2)
        self.layer4 = self._make_layer(512, sizes[3], last_stride)
        self.fc = nn.Linear(2048, 1000)  # unused, as in BoT

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        ibn = planes != 512
        layers = [BottleneckIBN(self.inplanes, planes, ibn, stride, downsample)]
        self.inplanes = planes * 4
        layers += [BottleneckIBN(self.inplanes, planes, ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, padding=0)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class SEBottleneckBase(nn.Module):
    """Cadene's `Bottleneck` base class: the forward shared by the SE blocks."""

    expansion = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.se_module(out) + residual)


class SEResNetBottleneck(SEBottleneckBase):
    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.se_module = SEModule(planes * 4, reduction)
        self.downsample = downsample


class SEResNeXtBottleneck(SEBottleneckBase):
    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample=None, base_width: int = 4):
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False, stride=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.se_module = SEModule(planes * 4, reduction)
        self.downsample = downsample


def layer0() -> nn.Sequential:
    """SENet's layer0 for inplanes 64, input_3x3 False."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)),
        ("bn1", nn.BatchNorm2d(64)),
        ("relu1", nn.ReLU()),
        # To preserve compatibility with Caffe weights `ceil_mode=True` is used instead of
        # `padding=1` (Cadene's comment).
        ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
    ]))


class SENet(nn.Module):
    """BoT's SENet as its baseline.py builds se_resnet{50,101,152} (groups 1) and
    se_resnext{50,101} (groups 32). Input [B, 3, H, W]; output the last feature map."""

    def __init__(self, depth: int = 50, last_stride: int = 1, groups: int = 1):
        super().__init__()
        block = SEResNetBottleneck if groups == 1 else SEResNeXtBottleneck
        self.inplanes = 64
        self.layer0 = layer0()
        sizes = tr.STAGE_SIZES[depth]
        self.layer1 = self._make_layer(block, 64, sizes[0], groups)
        self.layer2 = self._make_layer(block, 128, sizes[1], groups, 2)
        self.layer3 = self._make_layer(block, 256, sizes[2], groups, 2)
        self.layer4 = self._make_layer(block, 512, sizes[3], groups, last_stride)

    def _make_layer(self, block, planes: int, blocks: int, groups: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, padding=0,
                          bias=False),
                nn.BatchNorm2d(planes * 4))
        layers = [block(self.inplanes, planes, groups, 16, stride, downsample)]
        self.inplanes = planes * 4
        layers += [block(self.inplanes, planes, groups, 16) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer0(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


BACKBONES = {
    "resnet_ibn_a": ResNetIBN,
    "se_resnet": lambda depth, last_stride: SENet(depth, last_stride, groups=1),
    "se_resnext": lambda depth, last_stride: SENet(depth, last_stride, groups=32),
}


class Baseline(tr.Baseline):
    """BoT's Baseline on `BACKBONES[backbone]` (depth >= 50: 2048-wide features)."""

    def __init__(self, num_classes: int, backbone: str, depth: int = 50, last_stride: int = 1,
                 neck: str = "bnneck", neck_feat: str = "after"):
        super().__init__(num_classes, depth, last_stride, neck=neck, neck_feat=neck_feat)
        self.base = BACKBONES[backbone](depth, last_stride)


def randomize_(model: nn.Module, seed: int, image_size: tuple[int, int] = (64, 32)) -> nn.Module:
    """`torch_reference.randomize_` (weights, affine parameters, BNNeck statistics), with the
    InstanceNorm affine parameters randomised too (weight U(0.5, 1.5), bias N(0, 0.2), as the
    BatchNorms'), and the backbone's BatchNorm2d running statistics recalibrated in eval mode:
    each gets the statistics of the input it sees in eval mode (16 `random_images`, the
    BatchNorms before it already recalibrated), perturbed relative to them (mean + 0.1 std x
    N(0, 1), var x U(0.7, 1.4)). torch_reference's absolute mean perturbation N(0, 0.1), taken
    on statistics of a train-mode pass, is ~1 std of the narrow channels after SE-ResNeXt's
    grouped 3x3 convs (2 inputs per group), and compounds over the 16 blocks to eval features
    of ~100, whose float32 rounding (~1e-3, torch's own vs float64) hides a 1e-4 check.
    Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    tr.randomize_(model, seed, image_size)

    def recalibrate(norm: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        mean, var = inputs[0].mean((0, 2, 3)), inputs[0].var((0, 2, 3))
        norm.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(mean.shape, generator=gen))
        norm.running_var.copy_(var * (torch.rand(var.shape, generator=gen) * 0.7 + 0.7))

    hooks = [m.register_forward_pre_hook(recalibrate) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(tr.random_images(16, image_size, seed))
    for hook in hooks:
        hook.remove()
    return model
