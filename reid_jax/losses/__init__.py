"""Losses over the global batch. BoT: label-smoothed CE, batch-hard triplet, center loss.
AlignedReID: global and local (shortest-path) triplets, ID loss, mutual learning."""

from reid_jax.losses.aligned import (
    TripletResult,
    aligned_loss,
    check_aligned_loss_config,
    global_triplet_loss,
    local_triplet_loss,
    normalize_feature,
)
from reid_jax.losses.bot import bot_loss, check_loss_config
from reid_jax.losses.center import center_loss
from reid_jax.losses.local import batch_local_distance, local_distance, shortest_path
from reid_jax.losses.metric import (
    clamp,
    hard_example_mining,
    hard_example_mining_with_indices,
    pairwise_distance,
    ranking_loss,
    triplet_loss,
)
from reid_jax.losses.mutual import mutual_distance_loss, mutual_probability_loss
from reid_jax.losses.softmax import cross_entropy_label_smooth

__all__ = [
    "TripletResult",
    "aligned_loss",
    "batch_local_distance",
    "bot_loss",
    "center_loss",
    "check_aligned_loss_config",
    "check_loss_config",
    "clamp",
    "cross_entropy_label_smooth",
    "global_triplet_loss",
    "hard_example_mining",
    "hard_example_mining_with_indices",
    "local_distance",
    "local_triplet_loss",
    "mutual_distance_loss",
    "mutual_probability_loss",
    "normalize_feature",
    "pairwise_distance",
    "ranking_loss",
    "shortest_path",
    "triplet_loss",
]
