"""AlignedReID's losses over the global batch (REFERENCE section 8; the re-production's
`global_loss`, `local_loss`, ID loss and `train_ml.py`'s mutual terms).

`config.loss` keys read by `aligned_loss` (the re-production's flag in brackets, its default):
  normalize_feature      bool: L2-normalise global features and local stripes before any
                         distance [--normalize_feature, True; the published runs use False]
  global_margin          float >= 0, or None for the soft margin [-gm, 0.3]
  local_margin           float >= 0, or None for the soft margin [-lm, 0.3]
  local_own_hard_mining  bool: the local triplet mines its own hard pairs on the N x N local
                         distance matrix, instead of the global distance's pairs
                         [--local_dist_own_hard_sample, False]
  global_weight          [-glw, 1]   local_weight [-llw, 0]   id_weight [-idlw, 0]
  pm_weight              [-pmlw, 1]  gdm_weight [-gdmlw, 1]   ldm_weight [-ldmlw, 0]
                         weights >= 0. A weight 0 skips its term (its metric reads 0), except
                         the global triplet, always computed (its hard pairs and distance
                         matrix feed the local and gdm terms); the local distances are
                         computed when local_weight > 0 or the ldm term is on. The mutual
                         weights act only with M >= 2 models; ldm_weight > 0 needs
                         local_own_hard_mining.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from reid_jax.losses.local import batch_local_distance, local_distance
from reid_jax.losses.metric import hard_example_mining_with_indices, pairwise_distance, ranking_loss
from reid_jax.losses.mutual import mutual_distance_loss, mutual_probability_loss
from reid_jax.losses.softmax import cross_entropy_label_smooth

LOSS_WEIGHTS = ("global_weight", "local_weight", "id_weight", "pm_weight", "gdm_weight",
                "ldm_weight")
METRICS = ("loss", "global_loss", "local_loss", "id_loss", "pm_loss", "gdm_loss", "ldm_loss",
           "id_accuracy", "dist_ap", "dist_an")


def check_aligned_loss_config(loss_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first `config.loss` key whose value is out of range."""
    for key in LOSS_WEIGHTS:
        if not loss_config[key] >= 0:
            raise ValueError(f"config.loss.{key}={loss_config[key]!r}: expected a weight >= 0")
    for key in ("global_margin", "local_margin"):
        margin = loss_config[key]
        if margin is not None and not margin >= 0:
            raise ValueError(f"config.loss.{key}={margin!r}: expected >= 0, or None for the soft "
                             "margin")
    for key in ("normalize_feature", "local_own_hard_mining"):
        if not isinstance(loss_config[key], bool):
            raise ValueError(f"config.loss.{key}={loss_config[key]!r}: expected True or False")
    if loss_config.ldm_weight > 0 and not loss_config.local_own_hard_mining:
        raise ValueError(f"config.loss.ldm_weight={loss_config.ldm_weight!r}: the local distance "
                         "mutual loss needs the N x N local distances of "
                         "config.loss.local_own_hard_mining=True")


def normalize_feature(x: jax.Array) -> jax.Array:
    """x / (|x| + 1e-12) along the last axis (the re-production's `normalize`), any shape [..., D].

    The norm's gradient at a zero vector is 0, as torch.norm's (a ReLU stripe can be all zero;
    jnp.linalg.norm would give NaN there).
    """
    squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    nonzero = squared > 0
    norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
    return x / (norm + 1e-12)


class TripletResult(NamedTuple):
    """A batch-hard triplet term: loss scalar; dist_ap, dist_an [N] the mined distances;
    p_inds, n_inds [N] int32 their columns; dist_mat [N, N] the distances mined on (None when
    the pairs were given)."""

    loss: jax.Array
    dist_ap: jax.Array
    dist_an: jax.Array
    p_inds: jax.Array
    n_inds: jax.Array
    dist_mat: jax.Array | None


def global_triplet_loss(global_feat: jax.Array, labels: jax.Array, margin: float | None,
                        normalize: bool) -> TripletResult:
    """Batch-hard triplet on the global features [N, D] float, labels [N] int32 (PK batch).

    Euclidean distances (optionally of `normalize_feature`d features), hardest positive (the
    anchor included) and negative per anchor, first index on ties; `ranking_loss` with `margin`.
    """
    if normalize:
        global_feat = normalize_feature(global_feat)
    dist = pairwise_distance(global_feat, global_feat)
    dist_ap, dist_an, p_inds, n_inds = hard_example_mining_with_indices(dist, labels)
    return TripletResult(ranking_loss(dist_ap, dist_an, margin), dist_ap, dist_an, p_inds,
                         n_inds, dist)


def local_triplet_loss(local_feat: jax.Array, labels: jax.Array, margin: float | None,
                       normalize: bool,
                       hard_pairs: tuple[jax.Array, jax.Array] | None = None) -> TripletResult:
    """Batch-hard triplet on the local distance of stripe features [N, H, c] float.

    hard_pairs: (p_inds, n_inds) [N] int32 from the global mining: the loss uses
    `batch_local_distance(local, local[p_inds])` and likewise for n_inds (the gradient flows
    into both arguments). None: the pairs are mined on the N x N `local_distance(local, local)`
    with `labels` [N] int32, returned as dist_mat.
    """
    if normalize:
        local_feat = normalize_feature(local_feat)
    if hard_pairs is None:
        dist = local_distance(local_feat, local_feat)
        dist_ap, dist_an, p_inds, n_inds = hard_example_mining_with_indices(dist, labels)
    else:
        dist = None
        p_inds, n_inds = hard_pairs
        dist_ap = batch_local_distance(local_feat, local_feat[p_inds])
        dist_an = batch_local_distance(local_feat, local_feat[n_inds])
    return TripletResult(ranking_loss(dist_ap, dist_an, margin), dist_ap, dist_an, p_inds,
                         n_inds, dist)


def _check_outputs(outputs: dict[str, jax.Array], labels: jax.Array, needs_local: bool,
                   needs_logits: bool) -> None:
    ranks = {"global": 3, "local": 4, "logits": 3}
    needed = [*(["local"] if needs_local else []), *(["logits"] if needs_logits else [])]
    missing = [key for key in needed if key not in outputs]
    if missing:
        raise ValueError(f"aligned_loss: outputs lack {missing}, needed by the loss weights in "
                         "config.loss (logits come from the classifier: model.use_classifier)")
    shapes = {key: outputs[key].shape for key in ranks if key in outputs}
    if any(len(shape) != ranks[key] or shape[:2] != shapes["global"][:2]
           for key, shape in shapes.items()) or shapes["global"][1] != labels.shape[0]:
        raise ValueError(f"aligned_loss: outputs {shapes} and labels {labels.shape} must be "
                         "global [M, N, D], local [M, N, H, c], logits [M, N, C], labels [N]")


def aligned_loss(outputs: dict[str, jax.Array], labels: jax.Array,
                 loss_config: ml_collections.ConfigDict
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AlignedReID's training loss of M >= 1 models on the same global batch.

    outputs: the models' outputs stacked on a leading model axis: "global" [M, N, D] float32,
    "local" [M, N, H, c] float32 (needed when the local or local-mutual term is on), "logits"
    [M, N, C] float32 (needed for the ID loss and, with M >= 2, the probability mutual loss).
    labels: [N] int32 identities of a PK batch. loss_config: `config.loss` (keys in the module
    docstring).

    Model i's loss: global_weight L_global + local_weight L_local + id_weight L_id, plus for
    M >= 2 pm_weight L_pm + gdm_weight L_gdm + ldm_weight L_ldm against its partners held
    constant. Returns (total scalar = the sum of the M models' losses, metrics), in the outputs'
    dtype (float32). Metrics are [M], per model: `loss` (its total), the unweighted parts
    `global_loss`, `local_loss`, `id_loss`, `pm_loss`, `gdm_loss`, `ldm_loss` (0 where off),
    `id_accuracy` (argmax logits == label; 0 without logits), `dist_ap`, `dist_an` (batch means
    of the global mined distances).
    """
    check_aligned_loss_config(loss_config)
    cfg = loss_config
    num_models = outputs["global"].shape[0]
    mutual = num_models > 1
    use_local = cfg.local_weight > 0 or (mutual and cfg.ldm_weight > 0)
    use_pm = mutual and cfg.pm_weight > 0
    _check_outputs(outputs, labels, use_local, cfg.id_weight > 0 or use_pm)

    def one_model(out: dict[str, jax.Array]) -> dict[str, jax.Array]:
        glob = global_triplet_loss(out["global"], labels, cfg.global_margin,
                                   cfg.normalize_feature)
        zero = jnp.zeros((), glob.loss.dtype)
        parts = {"global_loss": glob.loss, "global_dist": glob.dist_mat,
                 "dist_ap": jnp.mean(glob.dist_ap), "dist_an": jnp.mean(glob.dist_an),
                 "local_loss": zero, "id_loss": zero, "id_accuracy": zero}
        if use_local:
            hard_pairs = None if cfg.local_own_hard_mining else (glob.p_inds, glob.n_inds)
            local = local_triplet_loss(out["local"], labels, cfg.local_margin,
                                       cfg.normalize_feature, hard_pairs)
            parts["local_loss"] = local.loss
            if local.dist_mat is not None:
                parts["local_dist"] = local.dist_mat
        if "logits" in out:
            logits = out["logits"]
            if cfg.id_weight > 0:
                parts["id_loss"] = cross_entropy_label_smooth(logits, labels, 0.0)
            parts["id_accuracy"] = jnp.mean(
                (jnp.argmax(logits, axis=-1) == labels).astype(glob.loss.dtype))
        return parts

    parts = jax.vmap(one_model)(outputs)
    zeros = jnp.zeros((num_models,), parts["global_loss"].dtype)
    parts["pm_loss"] = mutual_probability_loss(outputs["logits"]) if use_pm else zeros
    parts["gdm_loss"] = (mutual_distance_loss(parts["global_dist"])
                         if mutual and cfg.gdm_weight > 0 else zeros)
    parts["ldm_loss"] = (mutual_distance_loss(parts["local_dist"])
                         if mutual and cfg.ldm_weight > 0 else zeros)
    parts["loss"] = (cfg.global_weight * parts["global_loss"]
                     + cfg.local_weight * parts["local_loss"]
                     + cfg.id_weight * parts["id_loss"]
                     + cfg.pm_weight * parts["pm_loss"]
                     + cfg.gdm_weight * parts["gdm_loss"]
                     + cfg.ldm_weight * parts["ldm_loss"])
    return jnp.sum(parts["loss"]), {key: parts[key] for key in METRICS}
