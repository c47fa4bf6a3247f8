"""Label-smoothed cross-entropy: BoT's CrossEntropyLabelSmooth (REFERENCE section 2, L_id)."""

import jax
import jax.numpy as jnp


def cross_entropy_label_smooth(logits: jax.Array, labels: jax.Array, epsilon: float) -> jax.Array:
    """Batch mean of -sum_k q_k log softmax(logits)_k, q = (1 - eps) onehot(label) + eps / C.

    logits: [B, C] float32. labels: [B] int32 in [0, C). epsilon: smoothing in [0, 1); 0 gives the
    plain cross-entropy. Returns a float32 scalar.
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    label_log_prob = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    # sum_k (eps / C) log p_k == eps * mean_k log p_k.
    per_sample = (1.0 - epsilon) * label_log_prob + epsilon * jnp.mean(log_probs, axis=-1)
    return -jnp.mean(per_sample)
