"""The AlignedReID model (REFERENCE section 8, the re-production's `Model`): ResNet backbone,
global average pool, and a local branch of horizontal stripes (mean over the width, 1x1 conv,
BN, ReLU); an optional classifier on the global feature.

Variable names map one to one onto the re-production's state-dict keys (`reid_jax.torch_weights`
BoT layout): `backbone/*` <-> `base.*`, `local_conv/{kernel,bias}` <-> `local_conv.{weight,bias}`,
`local_bn/*` <-> `local_bn.*`, `fc/{kernel,bias}` <-> `fc.{weight,bias}`.
"""

from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from reid_jax.models.batchnorm import BatchNorm
from reid_jax.models.neck import torch_linear_init
from reid_jax.models.resnet import ResNet, feature_dim


class AlignedReID(nn.Module):
    """AlignedReID: global feature, local stripe features, optional logits.

    Attributes:
      num_classes: classifier width; 0 or None: no classifier (no "logits" output).
      depth, last_stride, stem_relu: the `ResNet` backbone (torchvision: stem ReLU on; the
        re-production uses last stride 2: 256x128 input -> an 8 x 4 map).
      local_dim: width c of the local stripe features (128).
      dtype: compute dtype of the backbone; param_dtype: parameter dtype, also that of the
        head (pooling, local branch, classifier) and of the outputs.

    `__call__(images [N, H, W, 3] normalised float, train)` returns a dict of `param_dtype`
    (float32) arrays: "global" [N, D] (D = 512 for ResNet-18/34, 2048 deeper), "local"
    [N, H', local_dim] (H' the map's height: one stripe per row, top to bottom), "logits"
    [N, num_classes] (only with a classifier). `train` selects BatchNorm batch statistics (and
    updates `batch_stats`, which must then be mutable). `head` gives the same from a backbone
    map (`model.init(..., method=AlignedReID.head)` creates the head's variables alone).
    """

    num_classes: int | None = None
    depth: int = 50
    last_stride: int = 2
    stem_relu: bool = True
    local_dim: int = 128
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        dim = feature_dim(self.depth)
        self.backbone = ResNet(self.depth, self.last_stride, self.stem_relu, self.dtype,
                               self.param_dtype)
        self.local_conv = nn.Conv(self.local_dim, (1, 1), use_bias=True,
                                  kernel_init=torch_linear_init(dim),
                                  bias_init=torch_linear_init(dim), dtype=self.param_dtype,
                                  param_dtype=self.param_dtype)
        self.local_bn = BatchNorm(dtype=self.param_dtype, param_dtype=self.param_dtype)
        if self.num_classes:
            self.fc = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.001),
                               bias_init=nn.initializers.zeros, dtype=self.param_dtype,
                               param_dtype=self.param_dtype)

    def __call__(self, images: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
        return self.head(self.backbone(images, train), train)

    def head(self, feat_map: jnp.ndarray, train: bool) -> dict[str, jnp.ndarray]:
        """The outputs of `__call__` from the backbone's map [N, H', W', D]."""
        feat_map = feat_map.astype(self.param_dtype)
        global_feat = jnp.mean(feat_map, axis=(1, 2))
        # [N, H', 1, D]: one stripe per row of the map, the torch [N, D, H', 1] in NHWC.
        stripes = jnp.mean(feat_map, axis=2, keepdims=True)
        local = self.local_bn(self.local_conv(stripes), train)
        outputs = {"global": global_feat, "local": nn.relu(local)[:, :, 0, :]}
        if self.num_classes:
            outputs["logits"] = self.fc(global_feat)
        return outputs


def create_aligned_model(model_config: ml_collections.ConfigDict,
                         num_classes: int) -> AlignedReID:
    """Builds the AlignedReID model of `config.model` for `num_classes` training identities.

    Reads depth (50), last_stride (2), stem_relu (True), local_dim (128), dtype ("float32" |
    "bfloat16", the compute dtype) and use_classifier (bool: the `fc` classifier, needed by
    the ID and probability mutual losses); in brackets the re-production's values.
    """
    return AlignedReID(
        num_classes=num_classes if model_config.use_classifier else None,
        depth=model_config.depth,
        last_stride=model_config.last_stride,
        stem_relu=model_config.stem_relu,
        local_dim=model_config.local_dim,
        dtype=jnp.dtype(model_config.dtype),
    )
