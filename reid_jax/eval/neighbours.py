"""k nearest neighbours and row maxima of a large distance matrix given block by block.

For re-ranking (REFERENCE section 5, steps 1-2): the (Q+G) x (Q+G) matrix is never held whole.
Each [C, C] block is folded into running per-row states (the k + MARGIN smallest raw distances
with their column indices, and the row maximum) and dropped. For a symmetric matrix (distances
computed from features) only blocks on or above the diagonal are computed, each serving its rows
and, transposed, its columns: half the distance computations.

The k neighbours are the first k of the row sorted by normalised distance (distance / row max),
ties by index, as a stable argsort of the normalised row. The candidates are chosen by raw
distance with MARGIN spare entries and re-sorted once the row max is known: exact unless more
than MARGIN distinct raw values round to one normalised value at the k-th neighbour.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

MARGIN = 8


@functools.partial(jax.jit, static_argnames=("num_all", "transpose"))
def _merge_block(values, index, row_max, block, col_start, num_all: int, transpose: bool):
    """Folds a block of raw distances into its rows' running state.

    values / index [C, k]: the k smallest distances so far (ascending, ties by index) over
    columns < col_start; row_max [C]; block [C, C] (or its transpose) covering columns
    col_start.. (those >= num_all are padding). Returns the updated (values, index, row_max).
    """
    block = block.T if transpose else block
    columns = col_start + jnp.arange(block.shape[1], dtype=jnp.int32)
    real = columns[None, :] < num_all
    row_max = jnp.maximum(row_max, jnp.max(jnp.where(real, block, -jnp.inf), axis=1))
    merged = jnp.concatenate([values, jnp.where(real, block, jnp.inf)], axis=1)
    merged_index = jnp.concatenate([index, jnp.broadcast_to(columns, block.shape)], axis=1)
    neg, position = jax.lax.top_k(-merged, values.shape[1])
    return -neg, jnp.take_along_axis(merged_index, position, axis=1), row_max


@functools.partial(jax.jit, static_argnames="k")
def _normalised_order(row_max, values, index, k: int):
    """The first k of (values / row_max, index) in lexicographic order -> [N, k] int32."""
    normalised = values / row_max[:, None]
    return jax.lax.sort((normalised, index), dimension=1, num_keys=2)[1][:, :k]


def nearest_neighbours(block: Callable, symmetric: bool, num_query: int, num_all: int, k: int,
                       chunk_size: int) -> tuple[np.ndarray, jax.Array, np.ndarray]:
    """One pass over the [chunk_size, chunk_size] blocks of an N x N matrix.

    `block(row, col, size)` returns entries [row:row + size, col:col + size] (numpy or jax; cut
    short at N); with `symmetric` the matrix must equal its transpose. Row chunk r receives its
    column blocks in increasing order (for a symmetric matrix the blocks left of the diagonal
    arrive transposed, from earlier rows), so the running top-k keeps ties in index order.

    Returns row maxima [N] float32 numpy, the first k columns of each normalised row's stable
    argsort [N, k] int32 (device), and the raw block [:Q, Q:] ([Q, G] float32 numpy; Q =
    num_query).
    """
    starts = range(0, num_all, chunk_size)
    num_raw = min(k + MARGIN, num_all)
    state = {s: (jnp.full((chunk_size, num_raw), jnp.inf), jnp.full((chunk_size, num_raw),
                                                                     num_all, jnp.int32),
                 jnp.full((chunk_size,), -jnp.inf)) for s in starts}
    query_gallery = np.empty((num_query, num_all - num_query), np.float32)
    for row in starts:
        for col in starts:
            if symmetric and col < row:
                continue
            raw = block(row, col, chunk_size)
            raw = jnp.asarray(raw if raw.shape == (chunk_size, chunk_size) else np.pad(
                raw, [(0, chunk_size - raw.shape[0]), (0, chunk_size - raw.shape[1])]))
            state[row] = _merge_block(*state[row], raw, col, num_all, False)
            if symmetric and col != row:
                state[col] = _merge_block(*state[col], raw, row, num_all, True)
            if row < num_query and col + chunk_size > num_query:
                rows = slice(0, min(chunk_size, num_query - row))
                cols = slice(max(num_query - col, 0), min(chunk_size, num_all - col))
                query_gallery[row:row + rows.stop, col + cols.start - num_query:
                              col + cols.stop - num_query] = np.asarray(raw[rows, cols])
    values, index, row_max = (jnp.concatenate(parts)[:num_all] for parts in zip(*state.values(),
                                                                               strict=True))
    return np.asarray(row_max), _normalised_order(row_max, values, index, k), query_gallery
