"""Feature normalisation and pairwise distances, computed on device in row chunks.

Distances follow the reference (BoT `eval_func` / `re_ranking`): squared Euclidean by expansion,
|x|^2 + |y|^2 - 2 x.y, not clamped (it can be a rounding error below zero, as in the reference).
"""

import jax
import jax.numpy as jnp
import numpy as np

DISTANCES = ("squared_euclidean", "euclidean", "cosine")


def check_distance(metric: str) -> None:
    """Raises a ValueError naming `config.eval.distance` when `metric` is not one of DISTANCES."""
    if metric not in DISTANCES:
        raise ValueError(f"config.eval.distance={metric!r}; expected one of {DISTANCES}")


def l2_normalize(features: jax.Array) -> jax.Array:
    """Rows divided by their L2 norm ([N, D] float32 -> [N, D] float32).

    As torch.nn.functional.normalize (eps 1e-12): a zero row stays zero.
    """
    norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
    return features / jnp.maximum(norm, 1e-12)


def squared_euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
    """|x|^2 + |y|^2 - 2 x.y [A, B] between the rows of `x` [A, D] and `y` [B, D], in their
    dtype, not clamped. The product runs at full precision (no TF32 / bf16 passes on GPU or
    TPU): the expansion cancels badly otherwise."""
    dot = jnp.dot(x, y.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(x * x, axis=1, keepdims=True) + jnp.sum(y * y, axis=1)[None, :] - 2.0 * dot


def pairwise_distance(x: jax.Array, y: jax.Array, metric: str) -> jax.Array:
    """Distances between the rows of `x` [A, D] and of `y` [B, D] -> [A, B] float32.

    squared_euclidean: |x|^2 + |y|^2 - 2 x.y; euclidean: its square root (clamped at 0 first);
    cosine: 1 - x.y / (|x| |y|).
    """
    check_distance(metric)
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    if metric == "cosine":
        dot = jnp.dot(x, y.T, precision=jax.lax.Precision.HIGHEST)
        xn = jnp.linalg.norm(x, axis=1, keepdims=True)
        yn = jnp.linalg.norm(y, axis=1, keepdims=True)
        return 1.0 - dot / jnp.maximum(xn * yn.T, 1e-12)
    squared = squared_euclidean(x, y)
    if metric == "euclidean":
        return jnp.sqrt(jnp.maximum(squared, 0.0))
    return squared


pairwise_distance_jit = jax.jit(pairwise_distance, static_argnames="metric")


def distance_matrix(x: np.ndarray, y: np.ndarray, metric: str, chunk_size: int) -> np.ndarray:
    """[A, B] float32 numpy distances between rows of `x` [A, D] and `y` [B, D].

    Computed on device `chunk_size` rows of `x` at a time (the last chunk is padded so one
    compiled kernel serves every chunk), so device memory stays O(chunk_size * B).
    """
    check_distance(metric)
    y_dev = jnp.asarray(y, jnp.float32)
    out = np.empty((x.shape[0], y.shape[0]), np.float32)
    for start, rows in row_chunks(np.asarray(x, np.float32), chunk_size):
        out[start:start + len(rows)] = np.asarray(
            pairwise_distance_jit(jnp.asarray(pad_rows(rows, chunk_size)), y_dev, metric)
        )[:len(rows)]
    return out


def row_chunks(array: np.ndarray, chunk_size: int):
    """Yields (start, array[start:start + chunk_size]) over the leading axis."""
    if chunk_size < 1:
        raise ValueError(f"config.eval.chunk_size={chunk_size}; expected a positive integer")
    for start in range(0, array.shape[0], chunk_size):
        yield start, array[start:start + chunk_size]


def pad_rows(array: np.ndarray, rows: int, value=0) -> np.ndarray:
    """`array` padded along axis 0 to `rows` rows with `value` (a fixed shape for jit)."""
    missing = rows - array.shape[0]
    if missing <= 0:
        return array
    pad = np.full((missing, *array.shape[1:]), value, dtype=array.dtype)
    return np.concatenate([array, pad], axis=0)
