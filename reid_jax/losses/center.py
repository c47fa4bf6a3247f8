"""Center loss as BoT computes it (REFERENCE section 2, L_center)."""

import jax
import jax.numpy as jnp

from reid_jax.losses.metric import clamp


def center_loss(features: jax.Array, labels: jax.Array, centers: jax.Array) -> jax.Array:
    """(1 / B) sum_i |f_i - c_{y_i}|^2 (no 1/2), a float32 scalar.

    features: [B, D] float32. labels: [B] int32 in [0, C). centers: [C, D] float32, an argument so
    that the caller gets its gradient.

    As BoT's CenterLoss: each squared distance in the expanded form |f|^2 + |c|^2 - 2 f.c, clamped
    to [1e-12, 1e12] (no gradient outside); BoT clamps its whole masked [B, C] matrix, so each of
    the B (C - 1) masked-out zeros adds 1e-12 too. Only the B needed distances are computed here.
    """
    batch_size, num_classes = features.shape[0], centers.shape[0]
    own = centers[labels]
    squared = (jnp.sum(features * features, axis=1) + jnp.sum(own * own, axis=1)
               - 2.0 * jnp.sum(features * own, axis=1))
    return jnp.sum(clamp(squared, 1e-12, 1e12)) / batch_size + (num_classes - 1) * 1e-12
