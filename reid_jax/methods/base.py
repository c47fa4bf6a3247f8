"""What the generic trainer and evaluator need from a re-ID method.

A method (BoT, AlignedReID) owns its model(s) and any extra trainable state, its loss over the
GLOBAL batch, its optimiser partition, and its inference features. The trainer sees only this
interface: parameters are one pytree `params` whose "model" entry holds the network's params
(for M mutually learning models, M copies stacked on a leading axis); `batch_stats` is the
model's BatchNorm statistics collection, laid out like params["model"].
"""

from collections.abc import Callable
from typing import Protocol

import jax
import optax

Variables = dict  # {"params": ..., "batch_stats": ...} of ONE model
LoadFn = Callable[[Variables], Variables]  # initial variables of a model -> pretrained ones


class Method(Protocol):
    """The seam between a method and the trainer / evaluator (see the module docstring)."""

    name: str
    num_models: int  # 1, or M for mutual learning
    num_classes: int  # training identities C

    @staticmethod
    def check_config(config) -> None:
        """Raises ValueError naming the first method-specific key (loss weights, ...) whose
        value cannot work; called before anything is loaded."""

    @staticmethod
    def num_classes_in(model_params: dict) -> int:
        """The training identity count C of stored params of one model (the classifier)."""

    @staticmethod
    def num_classes_in_torch(state_dict: dict) -> int:
        """C of a PyTorch state dict of the whole model."""

    def init(self, rng: jax.Array, load: LoadFn | None = None) -> tuple[dict, dict]:
        """(params, batch_stats) to start training from; `load` replaces each model's initial
        variables (pretrained weights)."""

    def loss(self, params: dict, batch_stats: dict, batch: dict,
             rng: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
        """Train-mode forward and loss over the global batch {"image": [B, H, W, 3] float32
        normalised, "label": [B] int32}: (total loss, (scalar float32 metrics, new
        batch_stats)). `rng` is the step's key (for stochastic layers)."""

    def optimizer(self, lr_table) -> optax.GradientTransformationExtraArgs:
        """The optimiser over `params`; its `update` takes `epoch=` (see reid_jax.optim)."""

    def model_variables(self, params: dict, batch_stats: dict) -> list[Variables]:
        """Each model's inference variables; the first is the one exported and ranked best."""

    def embed(self, variables: Variables, images: jax.Array) -> dict:
        """Inference features of one model: images [B, H, W, 3] float32 normalised ->
        {"features": [B, D]} (+ "local_features" [B, S, d] for a local branch)."""
