"""AlignedReID (REFERENCE section 8, as the re-production runs it): ResNet with a global feature
and a local stripe branch, global + local (shortest-path) batch-hard triplets and an ID loss,
and mutual learning of M models, all trained in ONE jitted step: the models' params and BN
statistics are stacked on a leading axis; the forward runs each model on its slice (M is small
and static; `vmap` would make every convolution one with per-model kernels, which XLA:CPU runs
~3x slower than M plain ones) and stacks the outputs. Coupled Adam at the exponential-decay lr,
every parameter."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from reid_jax import optim
from reid_jax.losses import aligned_loss, check_aligned_loss_config
from reid_jax.methods.base import LoadFn, Variables
from reid_jax.models import create_aligned_model, init_variables


class AlignedReIDMethod:
    """Parameters {"model": AlignedReID params stacked [M, ...]}; batch_stats stacked the same
    way. `config.model.num_models` = M (1: plain training)."""

    name = "aligned"

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
        self.check_config(config)
        self.config = config
        self.num_classes = num_classes
        self.num_models = config.model.num_models
        self.model = create_aligned_model(config.model, num_classes)

    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        check_aligned_loss_config(config.loss)
        if config.model.num_models < 1:
            raise ValueError(f"config.model.num_models={config.model.num_models}: expected >= 1")
        uses_pairs = config.loss.global_weight > 0 or config.loss.local_weight > 0
        if uses_pairs and config.data.ids_per_batch < 2:
            raise ValueError(f"config.data.ids_per_batch={config.data.ids_per_batch}: the "
                             "triplet losses need >= 2 identities per batch (a negative)")
        needs_logits = config.loss.id_weight > 0 or (config.model.num_models > 1
                                                     and config.loss.pm_weight > 0)
        if needs_logits and not config.model.use_classifier:
            raise ValueError("config.model.use_classifier=False, but config.loss.id_weight or "
                             "(with mutual learning) config.loss.pm_weight need the classifier")

    @staticmethod
    def num_classes_in(model_params: dict) -> int:
        """C of stored params (one model, or stacked): the `fc` width, 0 without a classifier."""
        return int(np.shape(model_params["fc"]["kernel"])[-1]) if "fc" in model_params else 0

    @staticmethod
    def num_classes_in_torch(state_dict: dict) -> int:
        """C of the re-production's `.pth` (rows of fc.weight; 0 without a classifier)."""
        return int(state_dict["fc.weight"].shape[0]) if "fc.weight" in state_dict else 0

    def init(self, rng: jax.Array, load: LoadFn | None = None) -> tuple[dict, dict]:
        size = tuple(self.config.data.image_size)
        models = []
        for index in range(self.num_models):
            variables = init_variables(self.model, jax.random.fold_in(rng, index), size)
            models.append(load(variables) if load is not None else variables)
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *models)
        return {"model": stacked["params"]}, stacked["batch_stats"]

    def loss(self, params: dict, batch_stats: dict, batch: dict,
             rng: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
        del rng  # no stochastic layer

        def forward(index: int) -> tuple[dict, dict]:
            variables = jax.tree.map(lambda leaf: leaf[index],
                                     {"params": params["model"], "batch_stats": batch_stats})
            outputs, updates = self.model.apply(variables, batch["image"], train=True,
                                                mutable=["batch_stats"])
            return outputs, updates["batch_stats"]

        outputs, new_stats = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                                          *[forward(i) for i in range(self.num_models)])
        total, per_model = aligned_loss(outputs, batch["label"], self.config.loss)
        metrics = {key: value[0] for key, value in per_model.items()}
        for index in range(1, self.num_models):
            metrics.update({f"model{index}/{key}": value[index]
                            for key, value in per_model.items()})
        return total, (metrics, new_stats)

    def optimizer(self, lr_table) -> optax.GradientTransformationExtraArgs:
        return optim.coupled_adam(lr_table, self.config.optim)

    def model_variables(self, params: dict, batch_stats: dict) -> list[Variables]:
        stacked = {"params": params["model"], "batch_stats": batch_stats}
        count = jax.tree.leaves(stacked)[0].shape[0]
        return [jax.tree.map(lambda leaf, i=index: leaf[i], stacked) for index in range(count)]

    def embed(self, variables: Variables, images: jax.Array) -> dict:
        outputs = self.model.apply(variables, images, train=False)
        return {"features": outputs["global"], "local_features": outputs["local"]}
