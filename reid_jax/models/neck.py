"""BNNeck and the ID classifier of the BoT baseline."""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from reid_jax.models.batchnorm import BatchNorm

NECKS = ("bnneck", "no")


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch nn.Linear's default init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Neck(nn.Module):
    """Global feature -> (inference feature, logits).

    neck="bnneck": BatchNorm1d `bottleneck` (its `bias` is the frozen shift: the optimiser never
    moves it) then a bias-free `classifier` initialised N(0, 0.001^2).
    neck="no": the feature goes straight to a `classifier` with bias and PyTorch's default init.

    Input [B, D] `param_dtype`; returns (feature [B, D], logits [B, num_classes]), `param_dtype`.
    """

    num_classes: int
    neck: str = "bnneck"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, global_feat: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
        dim = global_feat.shape[-1]
        if self.neck == "bnneck":
            feat = BatchNorm(dtype=self.param_dtype, param_dtype=self.param_dtype,
                             name="bottleneck")(global_feat, train)
            classifier = nn.Dense(self.num_classes, use_bias=False,
                                  kernel_init=nn.initializers.normal(0.001),
                                  dtype=self.param_dtype, param_dtype=self.param_dtype,
                                  name="classifier")
        elif self.neck == "no":
            feat = global_feat
            classifier = nn.Dense(self.num_classes, kernel_init=torch_linear_init(dim),
                                  bias_init=torch_linear_init(dim), dtype=self.param_dtype,
                                  param_dtype=self.param_dtype, name="classifier")
        else:
            raise ValueError(f"model.neck={self.neck!r}; expected one of {NECKS}")
        return feat, classifier(feat)
