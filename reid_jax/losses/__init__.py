"""BoT losses over the global batch: label-smoothed CE, batch-hard triplet, center loss."""

from reid_jax.losses.bot import bot_loss, check_loss_config
from reid_jax.losses.center import center_loss
from reid_jax.losses.metric import clamp, hard_example_mining, pairwise_distance, triplet_loss
from reid_jax.losses.softmax import cross_entropy_label_smooth

__all__ = [
    "bot_loss",
    "center_loss",
    "check_loss_config",
    "clamp",
    "cross_entropy_label_smooth",
    "hard_example_mining",
    "pairwise_distance",
    "triplet_loss",
]
