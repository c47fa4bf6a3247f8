"""BoT, the strong baseline (REFERENCE sections 1-3): ResNet + BNNeck, label-smoothed ID loss +
batch-hard triplet + center loss, coupled Adam with the warmup multi-step lr, SGD centers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reid_jax import optim
from reid_jax.losses import bot_loss, check_loss_config
from reid_jax.methods.base import LoadFn, Variables
from reid_jax.models import create_model, feature_dim, init_variables
from reid_jax.models.backbones import check_backbone


def init_centers(rng: jax.Array, num_classes: int, dim: int) -> jax.Array:
    """Center-loss centers [num_classes, dim] float32, N(0, 1) as the original."""
    return jax.random.normal(rng, (num_classes, dim), jnp.float32)


class BoT:
    """Parameters {"model": Baseline params, "centers": [C, D] float32}; one model."""

    name = "bot"
    num_models = 1

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
        check_loss_config(config.loss)
        self.config = config
        self.num_classes = num_classes
        self.model = create_model(config.model, num_classes)

    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        check_backbone(config.model.backbone, config.model.depth)
        check_loss_config(config.loss)
        if config.loss.triplet_weight > 0 and config.data.ids_per_batch < 2:
            raise ValueError(f"config.data.ids_per_batch={config.data.ids_per_batch}: the "
                             "triplet loss needs >= 2 identities per batch (a negative)")

    @staticmethod
    def num_classes_in(model_params: dict) -> int:
        """C of stored Baseline params (the classifier's width)."""
        return int(np.shape(model_params["neck"]["classifier"]["kernel"])[-1])

    @staticmethod
    def num_classes_in_torch(state_dict: dict) -> int:
        """C of a BoT `.pth` state dict (rows of classifier.weight)."""
        if "classifier.weight" not in state_dict:
            raise ValueError("the .pth has no classifier.weight: not a whole BoT model")
        return int(state_dict["classifier.weight"].shape[0])

    def init(self, rng: jax.Array, load: LoadFn | None = None) -> tuple[dict, dict]:
        variables = init_variables(self.model, rng, tuple(self.config.data.image_size))
        if load is not None:
            variables = load(variables)
        centers = init_centers(jax.random.fold_in(rng, 1), self.num_classes,
                               feature_dim(self.config.model.depth))
        return {"model": variables["params"], "centers": centers}, variables["batch_stats"]

    def loss(self, params: dict, batch_stats: dict, batch: dict,
             rng: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
        del rng  # no stochastic layer
        (logits, global_feat), updates = self.model.apply(
            {"params": params["model"], "batch_stats": batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"])
        total, metrics = bot_loss(logits, global_feat, batch["label"], params["centers"],
                                  self.config.loss)
        return total, (metrics, updates["batch_stats"])

    def optimizer(self, lr_table) -> optax.GradientTransformationExtraArgs:
        return optim.bot_optimizer(self.config, lr_table)

    def model_variables(self, params: dict, batch_stats: dict) -> list[Variables]:
        return [{"params": params["model"], "batch_stats": batch_stats}]

    def embed(self, variables: Variables, images: jax.Array) -> dict:
        return {"features": self.model.apply(variables, images, train=False)}
