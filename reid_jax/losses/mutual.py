"""AlignedReID's mutual-learning losses (REFERENCE section 8, `train_ml.py`).

Each of M models learns against every partner j != i, the partner held constant
(`jax.lax.stop_gradient`, torch's `.detach()`). Inputs are the models' outputs stacked on a
leading axis; every function returns one loss per model [M] (zeros for M = 1). As the partners
are constants, d(sum_i loss_i) / d(outputs_i) = d(loss_i) / d(outputs_i): one gradient of the
sum trains all M models.
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy


def _partner_mean(pair_losses: jax.Array) -> jax.Array:
    """[M, M] losses of model i against partner j -> [M]: the mean over j != i (0 for M = 1)."""
    num_models = pair_losses.shape[0]
    if num_models == 1:
        return jnp.zeros((1,), pair_losses.dtype)
    partners = 1.0 - jnp.eye(num_models, dtype=pair_losses.dtype)
    return jnp.sum(partners * pair_losses, axis=1) / (num_models - 1)


def mutual_probability_loss(logits: jax.Array) -> jax.Array:
    """Probability mutual loss of every model: sum_{j != i} KL(p_j || p_i) / (M - 1), the KL
    summed over classes and averaged over the batch (torch `F.kl_div(log_softmax_i, softmax_j,
    reduction="sum") / N`, with 0 log 0 = 0).

    logits: [M, N, C] float, the classifier outputs of M models on the same batch. Returns [M].
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
    # [i, j, N, C]: p_j (log p_j - log p_i).
    kl = xlogy(probs, probs)[None] - probs[None] * log_probs[:, None]
    return _partner_mean(jnp.sum(kl, axis=(2, 3)) / logits.shape[1])


def mutual_distance_loss(dist: jax.Array) -> jax.Array:
    """Distance mutual loss of every model: sum_{j != i} sum((D_i - D_j)^2) / ((M - 1) N^2).

    dist: [M, N, N] float, each model's pairwise distance matrix of the batch (global or local
    distances). Returns [M].
    """
    diff = dist[:, None] - jax.lax.stop_gradient(dist)[None]
    return _partner_mean(jnp.sum(jnp.square(diff), axis=(2, 3)) / dist.shape[1] ** 2)
