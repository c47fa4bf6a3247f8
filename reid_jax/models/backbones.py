"""The backbones of BoT's `modeling/baseline.py` MODEL.NAME choices, by `config.model.backbone`
and `config.model.depth`:

  "resnet"        resnet18 ... resnet152 (torchvision layout; `stem_relu` chooses the stem ReLU)
  "resnet_ibn_a"  resnet50_ibn_a (101, 152: `resnet_ibn_a.py`'s other depths)
  "se_resnet"     se_resnet50, se_resnet101, se_resnet152
  "se_resnext"    se_resnext50 (32x4d), se_resnext101

`stem_relu` applies to "resnet" only: the others follow BoT's code, which keeps the stem ReLU.
Every backbone is created as the `backbone` module (torch prefix `base.`).
"""

from typing import Any

from flax import linen as nn

from reid_jax.models.resnet import STAGE_SIZES, ResNet
from reid_jax.models.senet import RESNEXT_GROUPS, SENet

BACKBONES = {
    "resnet": tuple(sorted(STAGE_SIZES)),
    "resnet_ibn_a": (50, 101, 152),
    "se_resnet": (50, 101, 152),
    "se_resnext": (50, 101),
}


def check_backbone(backbone: str, depth: int) -> None:
    """ValueError unless `backbone` is one of BACKBONES and `depth` one of its depths."""
    if backbone not in BACKBONES:
        raise ValueError(f"model.backbone={backbone!r}; expected one of {tuple(BACKBONES)}")
    if depth not in BACKBONES[backbone]:
        raise ValueError(f"model.depth={depth} does not exist for model.backbone={backbone!r}; "
                         f"expected one of {BACKBONES[backbone]}")


def create_backbone(backbone: str, depth: int, last_stride: int, stem_relu: bool, dtype: Any,
                    param_dtype: Any) -> nn.Module:
    """The `backbone` module: [B, H, W, 3] -> last feature map [B, H', W', 512 * expansion]."""
    check_backbone(backbone, depth)
    if backbone.startswith("se_"):
        return SENet(depth, last_stride, RESNEXT_GROUPS if backbone == "se_resnext" else 1,
                     dtype, param_dtype, name="backbone")
    ibn = backbone == "resnet_ibn_a"
    return ResNet(depth, last_stride, stem_relu or ibn, dtype, param_dtype, ibn,
                  name="backbone")
