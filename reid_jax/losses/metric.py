"""Batch-hard triplet loss as BoT computes it (REFERENCE section 2, L_tri).

Written over the whole global PK batch: under jit with the batch sharded, XLA inserts the
collectives, so one device and many devices mine the same triplets.
"""

import jax
import jax.numpy as jnp

from reid_jax.distances import squared_euclidean


def clamp(x: jax.Array, lo: float, hi: float | None = None) -> jax.Array:
    """torch.clamp(x, lo, hi) with torch's gradient: it passes where lo <= x <= hi, bounds
    included (jnp.clip halves it at a bound)."""
    out = jnp.where(x < lo, lo, x)
    return out if hi is None else jnp.where(x > hi, hi, out)


def pairwise_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Euclidean distances [N, M] between rows of x [N, D] and y [M, D] in their dtype, BoT's
    euclidean_dist: sqrt(max(|x|^2 + |y|^2 - 2 x.y, 1e-12))."""
    return jnp.sqrt(clamp(squared_euclidean(x, y), 1e-12))


def hard_example_mining(dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Hardest positive and hardest negative distance of every anchor.

    dist: [N, N] float32 pairwise distances. labels: [N] int32 identities; every anchor needs at
    least one sample of another identity. Returns (dist_ap [N], dist_an [N]) float32: the max
    distance over same-id samples (the anchor itself included) and the min over other ids.
    As torch.max / torch.min(dim) in BoT, the gradient goes to ONE element per row, the first
    (lowest column) on ties, not split among ties as jnp.max's gradient would be.
    """
    same = labels[:, None] == labels[None, :]
    pos = jnp.argmax(jnp.where(same, dist, -jnp.inf), axis=1)
    neg = jnp.argmin(jnp.where(same, jnp.inf, dist), axis=1)
    dist_ap = jnp.take_along_axis(dist, pos[:, None], axis=1)[:, 0]
    dist_an = jnp.take_along_axis(dist, neg[:, None], axis=1)[:, 0]
    return dist_ap, dist_an


def triplet_loss(features: jax.Array, labels: jax.Array,
                 margin: float | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch-hard triplet loss on raw (not normalised) features [N, D] float32, labels [N] int32.

    margin: a float gives mean(relu(d_ap - d_an + margin)) (torch MarginRankingLoss(margin) on
    (d_an, d_ap, y=1)); None gives the soft margin mean(softplus(d_ap - d_an)) (torch
    SoftMarginLoss on (d_an - d_ap, y=1)). Returns (loss scalar, dist_ap [N], dist_an [N]) float32.
    """
    dist_ap, dist_an = hard_example_mining(pairwise_distance(features, features), labels)
    if margin is None:
        loss = jnp.mean(jax.nn.softplus(dist_ap - dist_an))
    else:
        loss = jnp.mean(clamp(dist_ap - dist_an + margin, 0.0))
    return loss, dist_ap, dist_an
