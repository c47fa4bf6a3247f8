"""ResNet-18/34/50/101/152 in the torchvision layout (v1.5: stride on the 3x3 conv), and
BoT's IBN-a variant of it (`resnet_ibn_a.py`: `ResNet(ibn=True)`).

Parameter names mirror torchvision's state-dict keys so weights map one to one:
`conv1`, `bn1`, `layer{1..4}_{i}` blocks holding `conv1..3`, `bn1..3`, `downsample_conv`,
`downsample_bn` (IBN-a: `bn1` holds `IN` and `BN`). Input NHWC; the last stage's stride is
configurable (1 for re-ID). `Bottleneck`'s options and `stem` / `block_plan` also build
`reid_jax.models.senet`.
"""

import functools
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from reid_jax.models.batchnorm import BatchNorm
from reid_jax.models.layers import IBN, SEModule

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)


def feature_dim(depth: int) -> int:
    """Width of the pooled feature: 512 for ResNet-18/34, 2048 for deeper ones."""
    return 512 * block_for_depth(depth).expansion


def block_for_depth(depth: int) -> type[nn.Module]:
    if depth not in STAGE_SIZES:
        raise ValueError(f"model.depth={depth} is not a ResNet depth; expected one of "
                         f"{sorted(STAGE_SIZES)}")
    return BasicBlock if depth < 50 else Bottleneck


def block_plan(depth: int, last_stride: int) -> Iterator[tuple[str, int, int, int]]:
    """(name, stage, width, stride) of each residual block in order: `layer{stage}_{i}`, stage
    1..4 of widths 64..512, the stride (1, 2, 2, last_stride) on each stage's first block."""
    strides = (1, 2, 2, last_stride)
    for stage, (num_blocks, width, stride) in enumerate(
            zip(STAGE_SIZES[depth], STAGE_WIDTHS, strides, strict=True), start=1):
        for i in range(num_blocks):
            yield f"layer{stage}_{i}", stage, width, stride if i == 0 else 1


def _conv(features: int, kernel: int, stride: int, dtypes: tuple[Any, Any],
          name: str, groups: int = 1) -> nn.Conv:
    """Bias-free conv with torch padding; `dtypes` = (compute dtype, parameter dtype)."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                   use_bias=False, kernel_init=conv_init, dtype=dtypes[0],
                   param_dtype=dtypes[1], name=name)


def stem(x: jnp.ndarray, train: bool, dtypes: tuple[Any, Any], relu: bool,
         ceil_mode: bool) -> jnp.ndarray:
    """7x7/2 conv `conv1` (64) -> BN `bn1` -> ReLU (if `relu`) -> 3x3/2 max pool, created in the
    caller's scope. The pool pads 1 (torchvision), or with `ceil_mode` pads none and keeps a
    last partial window (Caffe's rounding, Cadene's SENet): same output size, windows shifted.
    [B, H, W, 3] -> [B, ~H/4, ~W/4, 64]."""
    x = _conv(64, 7, 2, dtypes, "conv1")(x)
    x = BatchNorm(dtype=dtypes[0], param_dtype=dtypes[1], name="bn1")(x, train)
    if relu:
        x = nn.relu(x)
    if ceil_mode:
        padding = [(0, (size - 3) % 2) for size in x.shape[1:3]]  # max_pool pads with -inf
    else:
        padding = [(1, 1), (1, 1)]
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)


def _needs_downsample(in_features: int, out_features: int, stride: int) -> bool:
    return stride != 1 or in_features != out_features


class BasicBlock(nn.Module):
    """Two 3x3 convs; output width = `width`."""

    width: int
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        dtypes = (self.dtype, self.param_dtype)
        norm = functools.partial(BatchNorm, dtype=self.dtype, param_dtype=self.param_dtype)
        y = _conv(self.width, 3, self.stride, dtypes, "conv1")(x)
        y = nn.relu(norm(name="bn1")(y, train))
        y = _conv(self.width, 3, 1, dtypes, "conv2")(y)
        y = norm(name="bn2")(y, train)
        return nn.relu(y + _shortcut(x, self.width, self.stride, dtypes, train))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convs; output width = 4 * `width`.

    The defaults are torchvision's block (stride on the 3x3 conv). The options give BoT's other
    blocks:
      ibn: IBN-a (`Bottleneck_IBN`): `bn1` is an `IBN`.
      groups, base_width: ResNeXt: inner width floor(width * base_width / 64) * groups (`width`
        with the defaults), the 3x3 conv in `groups` groups.
      stride_on_1x1: the stride on `conv1` (Caffe; Cadene's `SEResNetBottleneck`).
      se_reduction: > 0: an `SEModule` `se_module` of that reduction scales the residual branch
        before the shortcut is added.
    """

    width: int
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ibn: bool = False
    groups: int = 1
    base_width: int = 64
    stride_on_1x1: bool = False
    se_reduction: int = 0
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        dtypes = (self.dtype, self.param_dtype)
        norm = functools.partial(BatchNorm, dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.width * self.base_width // 64 * self.groups
        stride1, stride2 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
        y = _conv(inner, 1, stride1, dtypes, "conv1")(x)
        norm1 = IBN(*dtypes, name="bn1") if self.ibn else norm(name="bn1")
        y = nn.relu(norm1(y, train))
        y = _conv(inner, 3, stride2, dtypes, "conv2", self.groups)(y)
        y = nn.relu(norm(name="bn2")(y, train))
        y = _conv(self.width * 4, 1, 1, dtypes, "conv3")(y)
        y = norm(name="bn3")(y, train)
        if self.se_reduction:
            y = SEModule(self.se_reduction, *dtypes, name="se_module")(y)
        return nn.relu(y + _shortcut(x, self.width * 4, self.stride, dtypes, train))


def _shortcut(x: jnp.ndarray, out_features: int, stride: int, dtypes: tuple[Any, Any],
              train: bool) -> jnp.ndarray:
    """Identity, or the torchvision `downsample` (1x1 strided conv + BN), created in the
    calling block's scope so its names are `downsample_conv` / `downsample_bn`."""
    if not _needs_downsample(x.shape[-1], out_features, stride):
        return x
    y = _conv(out_features, 1, stride, dtypes, "downsample_conv")(x)
    return BatchNorm(dtype=dtypes[0], param_dtype=dtypes[1], name="downsample_bn")(y, train)


class ResNet(nn.Module):
    """torchvision ResNet without the classifier.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      last_stride: stride of the 4th stage (1 in BoT: 256x128 input -> 16x8 map).
      stem_relu: ReLU after the stem BN (torchvision: True; BoT's released backbone: False).
      dtype: compute dtype (e.g. bfloat16).
      param_dtype: parameter dtype (float32; float64 for exact-arithmetic parity tests).
      ibn: IBN-a (BoT's `ResNet_IBN`, depth >= 50): `bn1` of every block of stages 1-3 is an
        `IBN`; BoT's IBN-a keeps the stem ReLU, so pair it with stem_relu=True.

    Input [B, H, W, 3]; output the last feature map [B, H/16, W/16, 512 * expansion]
    (with last_stride 1).
    """

    depth: int = 50
    last_stride: int = 1
    stem_relu: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    ibn: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        block = block_for_depth(self.depth)
        if self.ibn and block is not Bottleneck:
            raise ValueError(f"IBN-a needs a bottleneck ResNet (depth >= 50), not depth "
                             f"{self.depth}")
        x = stem(x.astype(self.dtype), train, (self.dtype, self.param_dtype), self.stem_relu,
                 ceil_mode=False)
        for name, stage, width, stride in block_plan(self.depth, self.last_stride):
            options = {"ibn": stage < 4} if self.ibn else {}
            x = block(width, stride, self.dtype, self.param_dtype, name=name, **options)(x, train)
        return x
