"""Batch-hard triplet loss as BoT computes it (REFERENCE section 2, L_tri).

Written over the whole global PK batch: under jit with the batch sharded, XLA inserts the
collectives, so one device and many devices mine the same triplets.
"""

import jax
import jax.numpy as jnp


def squared_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
    """|x|^2 + |y|^2 - 2 x.y [A, B] between the rows of `x` [A, D] and `y` [B, D], in their
    dtype, not clamped. The product runs at full precision (no TF32 / bf16 passes on GPU or
    TPU): the expansion cancels badly otherwise."""
    dot = jnp.dot(x, y.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(x * x, axis=1, keepdims=True) + jnp.sum(y * y, axis=1)[None, :] - 2.0 * dot


def clamp(x: jax.Array, lo: float, hi: float | None = None) -> jax.Array:
    """torch.clamp(x, lo, hi) with torch's gradient: it passes where lo <= x <= hi, bounds
    included (jnp.clip halves it at a bound)."""
    out = jnp.where(x < lo, lo, x)
    return out if hi is None else jnp.where(x > hi, hi, out)


def pairwise_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Euclidean distances [N, M] between rows of x [N, D] and y [M, D] in their dtype, BoT's
    euclidean_dist: sqrt(max(|x|^2 + |y|^2 - 2 x.y, 1e-12))."""
    return jnp.sqrt(clamp(squared_euclidean(x, y), 1e-12))


def hard_example_mining_with_indices(
        dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Hardest positive and hardest negative of every anchor, with their indices.

    dist: [N, N] float pairwise distances. labels: [N] int32 identities; every anchor needs at
    least one sample of another identity. Returns (dist_ap [N], dist_an [N], p_inds [N] int32,
    n_inds [N] int32): the max distance over same-id samples (the anchor itself included) and
    the min over other ids, and the columns holding them. As torch.max / torch.min(dim) in the
    references, the gradient goes to ONE element per row, the first (lowest column) on ties,
    not split among ties as jnp.max's gradient would be.
    """
    same = labels[:, None] == labels[None, :]
    pos = jnp.argmax(jnp.where(same, dist, -jnp.inf), axis=1)
    neg = jnp.argmin(jnp.where(same, jnp.inf, dist), axis=1)
    dist_ap = jnp.take_along_axis(dist, pos[:, None], axis=1)[:, 0]
    dist_an = jnp.take_along_axis(dist, neg[:, None], axis=1)[:, 0]
    return dist_ap, dist_an, pos.astype(jnp.int32), neg.astype(jnp.int32)


def hard_example_mining(dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(dist_ap [N], dist_an [N]) of `hard_example_mining_with_indices` (BoT's mining)."""
    dist_ap, dist_an, _, _ = hard_example_mining_with_indices(dist, labels)
    return dist_ap, dist_an


def ranking_loss(dist_ap: jax.Array, dist_an: jax.Array, margin: float | None) -> jax.Array:
    """Triplet ranking loss of mined distances dist_ap, dist_an [N] -> float scalar.

    margin: a float gives mean(relu(d_ap - d_an + margin)) (torch MarginRankingLoss(margin) on
    (d_an, d_ap, y=1)); None gives the soft margin mean(softplus(d_ap - d_an)) (torch
    SoftMarginLoss on (d_an - d_ap, y=1)).
    """
    if margin is None:
        return jnp.mean(jax.nn.softplus(dist_ap - dist_an))
    return jnp.mean(clamp(dist_ap - dist_an + margin, 0.0))


def triplet_loss(features: jax.Array, labels: jax.Array,
                 margin: float | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch-hard triplet loss on raw (not normalised) features [N, D] float32, labels [N] int32.

    margin: as `ranking_loss`. Returns (loss scalar, dist_ap [N], dist_an [N]) float32.
    """
    dist_ap, dist_an = hard_example_mining(pairwise_distance(features, features), labels)
    return ranking_loss(dist_ap, dist_an, margin), dist_ap, dist_an
