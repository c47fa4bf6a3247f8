"""SE-ResNet and SE-ResNeXt (32x4d) as BoT builds them from Cadene's `pretrainedmodels` SENet
(BoT's `modeling/backbones/senet.py`): `SENet(block, layers, groups, reduction=16,
dropout_p=None, inplanes=64, input_3x3=False, downsample_kernel_size=1, downsample_padding=0,
last_stride)`, without a classifier.

Parameter names mirror the torch keys: `layer0` (`conv1`, `bn1`), `layer{1..4}_{i}` blocks
holding `conv1..3`, `bn1..3`, `se_module` (`fc1`, `fc2`), `downsample_conv`, `downsample_bn`.
"""

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from reid_jax.models.resnet import Bottleneck, block_plan, stem

DEPTHS = (50, 101, 152)
SE_REDUCTION = 16
RESNEXT_GROUPS = 32
RESNEXT_BASE_WIDTH = 4


class Layer0(nn.Module):
    """SENet's `layer0` for inplanes 64, input_3x3 False: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max
    pool with ceil_mode (no padding). [B, H, W, 3] -> [B, ~H/4, ~W/4, 64]."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        return stem(x, train, (self.dtype, self.param_dtype), relu=True, ceil_mode=True)


class SENet(nn.Module):
    """SE-ResNet (groups 1: `SEResNetBottleneck`, the stride on the first 1x1 conv) or
    SE-ResNeXt (groups 32: `SEResNeXtBottleneck`, base width 4, the stride on the grouped 3x3
    conv); every block ends in a squeeze-excitation of reduction 16; 1x1 downsample convs.

    Attributes:
      depth: 50, 101 or 152 (Cadene / BoT build SE-ResNeXt at 50 and 101).
      last_stride: stride of the 4th stage (1 in BoT: 256x128 input -> 16x8 map).
      groups: 1 (SE-ResNet) or 32 (SE-ResNeXt 32x4d).
      dtype: compute dtype; param_dtype: parameter dtype.

    Input [B, H, W, 3]; output the last feature map [B, H/16, W/16, 2048] (last_stride 1).
    """

    depth: int = 50
    last_stride: int = 1
    groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.depth not in DEPTHS:
            raise ValueError(f"SENet depth={self.depth}: expected one of {DEPTHS}")
        if self.groups not in (1, RESNEXT_GROUPS):
            raise ValueError(f"SENet groups={self.groups}: expected 1 (SE-ResNet) or "
                             f"{RESNEXT_GROUPS} (SE-ResNeXt 32x4d)")
        resnext = self.groups == RESNEXT_GROUPS
        x = Layer0(self.dtype, self.param_dtype, name="layer0")(x.astype(self.dtype), train)
        for name, _, width, stride in block_plan(self.depth, self.last_stride):
            x = Bottleneck(width, stride, self.dtype, self.param_dtype, groups=self.groups,
                           base_width=RESNEXT_BASE_WIDTH if resnext else 64,
                           stride_on_1x1=not resnext, se_reduction=SE_REDUCTION,
                           name=name)(x, train)
        return x
