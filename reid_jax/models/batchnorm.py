"""BatchNorm with PyTorch semantics.

Flax's stock `nn.BatchNorm` updates the running variance with the biased batch variance;
PyTorch normalises with the biased variance but stores the UNBIASED one (n / (n - 1)) in
`running_var`. Parity of the running statistics (and of everything evaluated with them)
needs the PyTorch rule, so reid_jax uses this module everywhere.
"""

from typing import Any

import jax.numpy as jnp
from flax import linen as nn


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last (channels-last input).

    Attributes:
      momentum: PyTorch convention: running = (1 - momentum) * running + momentum * batch.
      epsilon: added to the variance before the square root.
      dtype: output dtype (the compute dtype; the normalisation itself runs in param_dtype).
      param_dtype: dtype of the parameters and statistics, and of the statistics' arithmetic
        (float32; float64 for exact-arithmetic parity tests).

    Variables: params `scale`, `bias` [C]; batch_stats `mean`, `var` [C], all `param_dtype`
    (the `var` stored is the unbiased running variance, as PyTorch's `running_var`).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        features = x.shape[-1]
        reduce_axes = tuple(range(x.ndim - 1))
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), self.param_dtype))
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), self.param_dtype))
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

        xp = x.astype(self.param_dtype)
        if train:
            mean = jnp.mean(xp, axis=reduce_axes)
            var = jnp.mean(jnp.square(xp - mean), axis=reduce_axes)
            if not self.is_initializing():
                count = x.size // features
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * unbiased
        else:
            mean, var = running_mean.value, running_var.value

        # Subtract, then scale, in param_dtype: with a bfloat16 compute dtype, the folded
        # x * multiplier + (bias - mean * multiplier) cancels two large bfloat16 terms when
        # |mean| >> std and loses ~10x more precision.
        multiplier = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        return ((xp - mean) * multiplier + bias).astype(self.dtype)
