"""The BoT baseline: backbone (ResNet, IBN-a ResNet, SE-ResNet, SE-ResNeXt) -> global average
pool -> BNNeck -> classifier."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from reid_jax.models.backbones import check_backbone, create_backbone
from reid_jax.models.neck import Neck

NECK_FEATS = ("after", "before")


class Baseline(nn.Module):
    """BoT model.

    Train mode (`train=True`): returns (logits [B, C], global_feat [B, D]), the logits from the
    neck feature, the global feature (pre-neck) for the metric losses.
    Eval mode: returns the inference feature [B, D]: after the neck (`neck_feat="after"`) or
    before it (`"before"`). Outputs are `param_dtype` (float32) whatever the compute `dtype`.
    Input images [B, H, W, 3], normalised float.

    `backbone` and `depth` pick the backbone (`reid_jax.models.backbones`: "resnet",
    "resnet_ibn_a", "se_resnet", "se_resnext"); `stem_relu` applies to "resnet" only.
    """

    num_classes: int
    depth: int = 50
    last_stride: int = 1
    stem_relu: bool = False
    neck: str = "bnneck"
    neck_feat: str = "after"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    backbone: str = "resnet"

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool):
        if self.neck_feat not in NECK_FEATS:
            raise ValueError(f"model.neck_feat={self.neck_feat!r}; expected one of {NECK_FEATS}")
        feat_map = create_backbone(self.backbone, self.depth, self.last_stride, self.stem_relu,
                                   self.dtype, self.param_dtype)(images, train)
        global_feat = jnp.mean(feat_map.astype(self.param_dtype), axis=(1, 2))
        feat, logits = Neck(self.num_classes, self.neck, self.param_dtype,
                            name="neck")(global_feat, train)
        if train:
            return logits, global_feat
        return feat if self.neck_feat == "after" else global_feat


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> Baseline:
    """Builds the model described by `config.model` for `num_classes` training identities
    (ValueError for a depth its backbone does not have)."""
    check_backbone(model_config.backbone, model_config.depth)
    return Baseline(
        num_classes=num_classes,
        backbone=model_config.backbone,
        depth=model_config.depth,
        last_stride=model_config.last_stride,
        stem_relu=model_config.stem_relu,
        neck=model_config.neck,
        neck_feat=model_config.neck_feat,
        dtype=jnp.dtype(model_config.dtype),
    )


def init_variables(model: nn.Module, rng: jax.Array, image_size: tuple[int, int]) -> dict:
    """Initial {'params', 'batch_stats'} (the model's `param_dtype`) for input [1, H, W, 3]."""
    dummy = jnp.zeros((1, *image_size, 3), model.param_dtype)
    return dict(jax.jit(lambda r: model.init(r, dummy, train=True))(rng))
