"""Flax models: torchvision-layout ResNets, BNNeck, the BoT baseline."""

from reid_jax.models.baseline import Baseline, create_model, init_variables
from reid_jax.models.batchnorm import BatchNorm
from reid_jax.models.resnet import ResNet, feature_dim

__all__ = ["Baseline", "BatchNorm", "ResNet", "create_model", "feature_dim", "init_variables"]
