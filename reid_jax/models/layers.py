"""Layers of BoT's other backbones: InstanceNorm and IBN (IBN-Net's instance-batch norm, BoT's
`resnet_ibn_a.py`), and the squeeze-excitation module of Cadene's SENet (BoT's `senet.py`).

Parameter names are the torch modules': `IBN` holds `IN` (`scale`, `bias`) and `BN` (a
`BatchNorm`); `SEModule` holds the 1x1 convs `fc1`, `fc2` (`kernel`, `bias`). Input NHWC.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from reid_jax.models.batchnorm import BatchNorm
from reid_jax.models.neck import torch_linear_init


class InstanceNorm(nn.Module):
    """torch's `InstanceNorm2d(affine=True)`: each image's channels normalised over H, W with the
    biased variance, then an affine `scale` / `bias` [C]; no running statistics
    (`track_running_stats=False`), so train and eval compute the same. The arithmetic runs in
    `param_dtype`, the output is `dtype`. Input [B, H, W, C]; output the same shape."""

    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        xp = x.astype(self.param_dtype)
        mean = jnp.mean(xp, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(xp - mean), axis=(1, 2), keepdims=True)
        y = (xp - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class IBN(nn.Module):
    """IBN-a's replacement of a bottleneck's `bn1`: `InstanceNorm` `IN` on the first
    int(C / 2) channels, `BatchNorm` `BN` on the rest, concatenated back in that order.
    Input [B, H, W, C]; output the same shape."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        half = x.shape[-1] // 2
        instance = InstanceNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="IN")
        batch = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="BN")
        return jnp.concatenate([instance(x[..., :half]), batch(x[..., half:], train)], axis=-1)


class SEModule(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(mean_HW(x))))), fc1 / fc2 1x1 convs with
    bias (C -> C // reduction -> C), torch's default Conv2d init. Input [B, H, W, C]; output
    the same shape."""

    reduction: int = 16
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        squeezed = channels // self.reduction

        def fc(features: int, fan_in: int, name: str) -> nn.Conv:
            return nn.Conv(features, (1, 1), kernel_init=torch_linear_init(fan_in),
                           bias_init=torch_linear_init(fan_in), dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)

        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(fc(squeezed, channels, "fc1")(s))
        return x * nn.sigmoid(fc(channels, squeezed, "fc2")(s))
