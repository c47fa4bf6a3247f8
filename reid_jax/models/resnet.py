"""ResNet-18/34/50/101/152 in the torchvision layout (v1.5: stride on the 3x3 conv).

Parameter names mirror torchvision's state-dict keys so weights map one to one:
`conv1`, `bn1`, `layer{1..4}_{i}` blocks holding `conv1..3`, `bn1..3`, `downsample_conv`,
`downsample_bn`. Input NHWC; the last stage's stride is configurable (1 for re-ID).
"""

import functools
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from reid_jax.models.batchnorm import BatchNorm

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


def _conv(features: int, kernel: int, stride: int, dtypes: tuple[Any, Any],
          name: str) -> nn.Conv:
    """Bias-free conv with torch padding; `dtypes` = (compute dtype, parameter dtype)."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                   dtype=dtypes[0], param_dtype=dtypes[1], name=name)


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
    """1x1 -> 3x3 (strided) -> 1x1 convs; output width = 4 * `width`."""

    width: int
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        dtypes = (self.dtype, self.param_dtype)
        norm = functools.partial(BatchNorm, dtype=self.dtype, param_dtype=self.param_dtype)
        y = _conv(self.width, 1, 1, dtypes, "conv1")(x)
        y = nn.relu(norm(name="bn1")(y, train))
        y = _conv(self.width, 3, self.stride, dtypes, "conv2")(y)
        y = nn.relu(norm(name="bn2")(y, train))
        y = _conv(self.width * 4, 1, 1, dtypes, "conv3")(y)
        y = norm(name="bn3")(y, train)
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

    Input [B, H, W, 3]; output the last feature map [B, H/16, W/16, 512 * expansion]
    (with last_stride 1).
    """

    depth: int = 50
    last_stride: int = 1
    stem_relu: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        block = block_for_depth(self.depth)
        dtypes = (self.dtype, self.param_dtype)
        x = x.astype(self.dtype)
        x = _conv(64, 7, 2, dtypes, "conv1")(x)
        x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="bn1")(x, train)
        if self.stem_relu:
            x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        strides = (1, 2, 2, self.last_stride)
        for stage, (num_blocks, width, stride) in enumerate(
                zip(STAGE_SIZES[self.depth], STAGE_WIDTHS, strides, strict=True), start=1):
            for i in range(num_blocks):
                x = block(width, stride if i == 0 else 1, self.dtype, self.param_dtype,
                          name=f"layer{stage}_{i}")(x, train)
        return x
