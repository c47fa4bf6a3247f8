"""Flax models: torchvision-layout ResNets, BoT's IBN-a ResNets and SE-ResNe(X)ts, BNNeck, the
BoT baseline, AlignedReID."""

from reid_jax.models.aligned import AlignedReID, create_aligned_model
from reid_jax.models.backbones import BACKBONES
from reid_jax.models.baseline import Baseline, create_model, init_variables
from reid_jax.models.batchnorm import BatchNorm
from reid_jax.models.resnet import ResNet, feature_dim
from reid_jax.models.senet import SENet

__all__ = ["BACKBONES", "AlignedReID", "Baseline", "BatchNorm", "ResNet", "SENet",
           "create_aligned_model", "create_model", "feature_dim", "init_variables"]
