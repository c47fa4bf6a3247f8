"""AlignedReID's local distance: stripe-to-stripe distances, then the shortest path through them
(REFERENCE section 8, the re-production's `local_dist` / `batch_local_dist` / `shortest_dist`).

Stripe distances d_ij = (exp(e_ij) - 1) / (exp(e_ij) + 1) of the Euclidean distances e_ij are
computed as tanh(e_ij / 2), the same function: the original's quotient overflows to inf / inf =
NaN in float32 once e > 88, where tanh gives 1.
"""

import jax
import jax.numpy as jnp

from reid_jax.losses.metric import pairwise_distance


def shortest_path(dist: jax.Array) -> jax.Array:
    """Length of the shortest monotone path through `dist` [..., m, n] float -> [...].

    From (0, 0) to (m - 1, n - 1) moving right or down, a path's length the sum of its cells:
    S[0, 0] = d[0, 0], S[0, j] = S[0, j - 1] + d[0, j], S[i, 0] = S[i - 1, 0] + d[i, 0],
    S[i, j] = min(S[i - 1, j], S[i, j - 1]) + d[i, j]; returns S[..., m - 1, n - 1].

    Computed as an anti-diagonal wavefront, one `lax.scan` step per diagonal i + j = k
    (m + n - 1 steps, each over all cells of the diagonal and all leading dims), so every cell
    gets exactly the reference's `min(up, left) + d` and the gradient splits 1/2 - 1/2 on ties
    as torch.min(a, b) does (ties are systematic: a symmetric `dist` ties up and left on the
    diagonal). Cells off the matrix hold +inf, which never wins a min against a real cell.
    """
    *batch, m, n = dist.shape
    diag = jnp.arange(m + n - 1)[:, None]
    row = jnp.arange(m)[None, :]
    col = diag - row
    on_matrix = (col >= 0) & (col < n)
    # [..., m + n - 1, m]: entry [k, i] is d[i, k - i]; diagonals lead for the scan.
    cells = jnp.where(on_matrix, dist[..., row, jnp.clip(col, 0, n - 1)], jnp.inf)
    cells = jnp.moveaxis(cells, -2, 0)
    off = jnp.full((*batch, 1), jnp.inf, dist.dtype)
    # Diagonal "-1": a zero left of (0, 0) starts the path, so step 0 gives S[0, 0] = d[0, 0].
    start = jnp.full((*batch, m), jnp.inf, dist.dtype).at[..., 0].set(0)

    def step(prev: jax.Array, diagonal: jax.Array) -> tuple[jax.Array, None]:
        # Cell (i, k - i): up (i - 1, k - i) is prev[i - 1], left (i, k - i - 1) is prev[i].
        up = jnp.concatenate([off, prev[..., :-1]], axis=-1)
        return jnp.minimum(up, prev) + diagonal, None

    last, _ = jax.lax.scan(step, start, cells)
    return last[..., m - 1]


def _stripe_distance(e: jax.Array) -> jax.Array:
    """(exp(e) - 1) / (exp(e) + 1) of Euclidean distances e >= 0, as tanh(e / 2)."""
    return jnp.tanh(0.5 * e)


def local_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Local distances [M, N] between every image of x [M, m, d] and every image of y [N, n, d]
    (stripe features; m, n stripes of width d), in their float dtype.

    e_ij: the Euclidean distance sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, min 1e-12)) between stripe i
    of one image and stripe j of the other, d_ij = tanh(e_ij / 2) in [0, 1), then
    `shortest_path` of the m x n matrix (a value in [0, m + n - 1)).
    """
    big_m, m, dim = x.shape
    big_n, n, _ = y.shape
    e = pairwise_distance(x.reshape(big_m * m, dim), y.reshape(big_n * n, dim))
    d = _stripe_distance(e).reshape(big_m, m, big_n, n).transpose(0, 2, 1, 3)
    return shortest_path(d)


def batch_local_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Local distances [N] of the row pairs (x[k], y[k]), x [N, m, d], y [N, n, d]; as
    `local_distance` but only for matching rows."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch_local_distance: x {x.shape} and y {y.shape} must have the same "
                         "number of rows")
    return shortest_path(_stripe_distance(jax.vmap(pairwise_distance)(x, y)))
