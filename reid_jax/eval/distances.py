"""Feature normalisation and pairwise distances, computed on device in row chunks.

Distances follow the references: BoT's `eval_func` / `re_ranking` squared Euclidean by
expansion, |x|^2 + |y|^2 - 2 x.y, not clamped (it can be a rounding error below zero, as in the
reference); AlignedReID's test distances "euclidean" (global), "local" (the shortest-path local
distance of the stripe features, reid_jax.losses.local_distance) and "global_local" (their plain
sum). Features are dicts {"features": [N, D] global, "local_features": [N, S, d] stripes}.
"""


import jax
import jax.numpy as jnp
import numpy as np

from reid_jax.losses.local import local_distance
from reid_jax.losses.metric import squared_euclidean

GLOBAL_DISTANCES = ("squared_euclidean", "euclidean", "cosine")
LOCAL_DISTANCES = ("local", "global_local")
DISTANCES = GLOBAL_DISTANCES + LOCAL_DISTANCES
LOCAL_BLOCK = 256  # gallery images per local-distance block: [C * S, 256 * S] stripe distances


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


def pairwise_distance(x: jax.Array, y: jax.Array, metric: str) -> jax.Array:
    """Distances between the rows of `x` [A, D] and of `y` [B, D] -> [A, B] float32.

    squared_euclidean: |x|^2 + |y|^2 - 2 x.y; euclidean: its square root (clamped at 0 first);
    cosine: 1 - x.y / (|x| |y|).
    """
    if metric not in GLOBAL_DISTANCES:
        raise ValueError(f"pairwise_distance: metric {metric!r} is not one of {GLOBAL_DISTANCES}")
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


def feature_distance(x: dict, y: dict, metric: str) -> jax.Array:
    """Distances [A, B] float32 between feature dicts x (A images) and y (B images), for any
    metric of DISTANCES. The local distances run over blocks of LOCAL_BLOCK images of y (a
    `lax.map`), so memory stays O(A * S * LOCAL_BLOCK * S) whatever B is."""
    check_distance(metric)
    if metric in GLOBAL_DISTANCES:
        return pairwise_distance(x["features"], y["features"], metric)
    check_local_features(metric, x, y)
    x_local = x["local_features"].astype(jnp.float32)
    y_local = y["local_features"].astype(jnp.float32)
    num_y = y_local.shape[0]
    block = min(LOCAL_BLOCK, num_y)
    blocks = -(-num_y // block)
    padded = jnp.pad(y_local, [(0, blocks * block - num_y), (0, 0), (0, 0)])
    per_block = jax.lax.map(lambda y_block: local_distance(x_local, y_block),
                            padded.reshape(blocks, block, *y_local.shape[1:]))
    local = jnp.moveaxis(per_block, 0, 1).reshape(x_local.shape[0], -1)[:, :num_y]
    if metric == "local":
        return local
    return local + pairwise_distance(x["features"], y["features"], "euclidean")


feature_distance_jit = jax.jit(feature_distance, static_argnames="metric")


def distance_matrix(x: np.ndarray | dict, y: np.ndarray | dict, metric: str,
                    chunk_size: int) -> np.ndarray:
    """[A, B] float32 numpy distances between `x` and `y`: arrays [A, D] and [B, D], or feature
    dicts (see `feature_distance`).

    Computed on device `chunk_size` rows of `x` at a time (the last chunk is padded so one
    compiled kernel serves every chunk), so device memory stays O(chunk_size * B).
    """
    check_distance(metric)
    x, y = (as_features(f) for f in (x, y))
    y_dev = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), y)
    num_x = len(x["features"])
    out = np.empty((num_x, len(y["features"])), np.float32)
    for start in range(0, num_x, check_chunk_size(chunk_size)):
        rows = np.arange(start, min(start + chunk_size, num_x))
        out[start:start + len(rows)] = np.asarray(feature_distance_jit(
            select_rows(x, pad_rows(rows, chunk_size, rows[0])), y_dev, metric))[:len(rows)]
    return out


def check_local_features(metric: str, *features: dict) -> None:
    """ValueError naming config.eval.distance when a local metric meets features without
    stripes (a method with a global feature only)."""
    if metric in LOCAL_DISTANCES and any("local_features" not in f for f in features):
        raise ValueError(f"config.eval.distance={metric!r} needs local features; this method "
                         "has only global ones")


def select_rows(features: dict, rows: np.ndarray) -> dict:
    """The images `rows` [C] int of a feature dict."""
    return {key: value[rows] for key, value in features.items()}


def as_features(features: np.ndarray | dict) -> dict:
    """A feature dict: {"features": array} for a bare [N, D] array, else the dict's feature
    entries as float32 numpy."""
    if not isinstance(features, dict):
        features = {"features": features}
    return {key: np.asarray(features[key], np.float32)
            for key in ("features", "local_features") if key in features}


def check_chunk_size(chunk_size: int) -> int:
    if chunk_size < 1:
        raise ValueError(f"config.eval.chunk_size={chunk_size}; expected a positive integer")
    return chunk_size


def pad_rows(array: np.ndarray, rows: int, value=0) -> np.ndarray:
    """`array` padded along axis 0 to `rows` rows with `value` (a fixed shape for jit)."""
    missing = rows - array.shape[0]
    if missing <= 0:
        return array
    pad = np.full((missing, *array.shape[1:]), value, dtype=array.dtype)
    return np.concatenate([array, pad], axis=0)
