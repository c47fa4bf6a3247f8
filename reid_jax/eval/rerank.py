"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) as BoT runs it, in memory O(N * k).

REFERENCE section 5, steps 1-6, over N = Q + G samples (queries first). The reference holds
dense N x N arrays (distances, ranks, V, jaccard); here only these are kept:

  * per sample i: the row maximum and the k nearest neighbours (stable order by normalised
    distance);
  * V as sparse rows: the indices of U(i) (at most (k1+1) (round(k1/2)+2) of them) and their
    weights, and after query expansion the union of k2 such rows;
  * the Q x G output, whose jaccard part is accumulated gallery chunk by gallery chunk from an
    inverted index of the query rows of V (only (q, g, j) with j in both supports are touched).

Step 1 quirk kept: BoT divides D by its column maxima and transposes, so row i of the working
matrix is column i of D (the same as row i for a symmetric D). Distances are used as given, never
squared. Differences from BoT's code: V and the jaccard distances are float32 (BoT stores them as
float16 to save memory, which rounds the result at ~1e-3), and ties in distance are broken by
sample index (a stable argsort) where BoT's quicksort leaves them unspecified.

The nearest neighbours come from neighbours.py (blocks of the distance matrix, each reduced to
running top-k lists and row maxima, then dropped).
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from reid_jax.eval.distances import (
    as_features,
    check_chunk_size,
    check_distance,
    feature_distance,
    pad_rows,
)
from reid_jax.eval.neighbours import nearest_neighbours

TRIPLE_BLOCK = 1 << 24  # at most this many (gallery, column, query) triples per _min_overlap call


def re_ranking(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20,
               k2: int = 6, lambda_value: float = 0.3, chunk_size: int = 1024) -> np.ndarray:
    """Re-ranked query x gallery distances from the three dense distance blocks.

    Args:
      q_g_dist: [Q, G] float, q_q_dist: [Q, Q], g_g_dist: [G, G] (numpy, kept on the host).
      k1, k2, lambda_value: as in the paper (BoT: 20, 6, 0.3).
      chunk_size: the working matrix goes to the device in [chunk_size, chunk_size] blocks.

    Returns the final distances [Q, G] float32 numpy.
    """
    q_g, q_q, g_g = (np.asarray(a, np.float32) for a in (q_g_dist, q_q_dist, g_g_dist))
    num_query, num_gallery = q_g.shape
    if q_q.shape != (num_query, num_query) or g_g.shape != (num_gallery, num_gallery):
        raise ValueError(f"re_ranking: q_q_dist {q_q.shape} and g_g_dist {g_g.shape} do not fit "
                         f"q_g_dist {q_g.shape}")

    def split(start: int, size: int) -> tuple[slice, slice]:
        """Indices start..start + size of the stacked samples, as (query, gallery) slices."""
        stop = start + size
        return (slice(min(start, num_query), min(stop, num_query)),
                slice(max(start - num_query, 0), max(stop - num_query, 0)))

    def block(row: int, col: int, size: int) -> np.ndarray:
        """Working matrix [row:row + size, col:col + size]: D[col.., row..]^T, D the stacked
        [[q_q, q_g], [q_g^T, g_g]]."""
        (dq_rows, dg_rows), (dq_cols, dg_cols) = split(col, size), split(row, size)
        d_block = np.concatenate([
            np.concatenate([q_q[dq_rows, dq_cols], q_g[dq_rows, dg_cols]], axis=1),
            np.concatenate([q_g[dq_cols, dg_rows].T, g_g[dg_rows, dg_cols]], axis=1)], axis=0)
        return d_block.T

    def pairs(row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Working-matrix entries [row, col] = D[col, row] for row [C, 1], col [C, L]."""
        row_q, col_q = row < num_query, col < num_query
        r_q, r_g = np.minimum(row, num_query - 1), np.clip(row - num_query, 0, num_gallery - 1)
        c_q, c_g = np.minimum(col, num_query - 1), np.clip(col - num_query, 0, num_gallery - 1)
        return np.where(col_q, np.where(row_q, q_q[c_q, r_q], q_g[c_q, r_g]),
                        np.where(row_q, q_g[r_q, c_g], g_g[c_g, r_g]))

    return _rerank(block, False, pairs, num_query, num_gallery, k1, k2, lambda_value, chunk_size)


def re_ranking_features(query_feats: np.ndarray | dict, gallery_feats: np.ndarray | dict,
                        k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        chunk_size: int = 1024, metric: str = "squared_euclidean") -> np.ndarray:
    """Re-ranking from features [Q, D] and [G, D] float32 (or feature dicts, see
    distances.feature_distance), as BoT calls it: D = squared Euclidean distances of the
    features (L2-normalised beforehand when the config says so); `metric` may name another of
    distances.DISTANCES, the local ones included.

    The N x N distances are computed on device in [chunk_size, chunk_size] blocks, each used
    for its rows and (D being symmetric) its columns, so only the upper triangle of blocks is
    computed, and none is kept. Returns the final distances [Q, G] float32 numpy.
    """
    check_distance(metric)
    query_feats, gallery_feats = as_features(query_feats), as_features(gallery_feats)
    num_query, num_gallery = len(query_feats["features"]), len(gallery_feats["features"])
    num_all = num_query + num_gallery
    size = min(chunk_size, num_all)
    rows = -(-num_all // size) * size
    feats = {key: jnp.asarray(pad_rows(np.concatenate([query_feats[key], gallery_feats[key]]),
                                       rows)) for key in query_feats}

    def block(row: int, col: int, size: int) -> jax.Array:
        return _block_distances(feats, row, col, size, metric)

    def pairs(row: np.ndarray, col: np.ndarray) -> jax.Array:
        return _gathered_distances(feats, jnp.asarray(row[:, 0]), jnp.asarray(col), metric)

    return _rerank(block, True, pairs, num_query, num_gallery, k1, k2, lambda_value, chunk_size)


@functools.partial(jax.jit, static_argnames=("size", "metric"))
def _block_distances(feats: dict, row, col, size: int, metric: str):
    """Distances between images row..row + size and col..col + size -> [size, size]."""
    x = {key: jax.lax.dynamic_slice_in_dim(value, row, size) for key, value in feats.items()}
    y = {key: jax.lax.dynamic_slice_in_dim(value, col, size) for key, value in feats.items()}
    return feature_distance(x, y, metric)


@functools.partial(jax.jit, static_argnames="metric")
def _gathered_distances(feats: dict, row, col, metric: str):
    """Distances of image row[c] to images col[c, l] -> [C, L], 32 rows at a time."""
    def one_row(args):
        r, c = args
        x = {key: value[r][None] for key, value in feats.items()}
        y = {key: value[c] for key, value in feats.items()}
        return feature_distance(x, y, metric)[0]
    return jax.lax.map(one_row, (row, col), batch_size=32)


def _rerank(block: Callable, symmetric: bool, pairs: Callable, num_query: int, num_gallery: int,
            k1: int, k2: int, lambda_value: float, chunk_size: int) -> np.ndarray:
    """Steps 1-6 given the working matrix as `block(row, col, size) -> [<=size, <=size]`
    (equal to its own transpose when `symmetric`) and `pairs(row [C, 1], col [C, L]) -> [C, L]`
    entries (raw distances)."""
    num_all = num_query + num_gallery
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"re-ranking: k1={k1}, k2={k2}, lambda_value={lambda_value}; expected "
                         "k1 >= 1, k2 >= 1, 0 <= lambda_value <= 1")
    check_chunk_size(chunk_size)
    chunk_size = min(chunk_size, num_all)
    k_full = min(k1 + 1, num_all)
    k_half = min(int(np.around(k1 / 2)) + 1, num_all)
    row_max, ranks, final = nearest_neighbours(block, symmetric, num_query, num_all,
                                               max(k_full, k2), chunk_size)
    v_index, v_weight = _k_reciprocal_weights(pairs, row_max, ranks, k_full, k_half, chunk_size)
    if k2 != 1:
        v_index, v_weight = _query_expansion(v_index, v_weight, ranks[:, :k2], chunk_size)
    final /= row_max[:num_query, None]
    _jaccard_and_final(v_index, v_weight, final, lambda_value, chunk_size)
    return final


@functools.partial(jax.jit, static_argnames="k")
def _reciprocal(ranks: jax.Array, rows: jax.Array, k: int) -> jax.Array:
    """For rows i [C]: mask [C, k] of the j in ranks[i, :k] with i in ranks[j, :k]."""
    forward = ranks[rows, :k]
    backward = ranks[forward, :k]
    return jnp.any(backward == rows[:, None, None], axis=2)


@functools.partial(jax.jit, static_argnames=("k_full", "k_half"))
def _expanded_sets(ranks, half_mask, rows, k_full: int, k_half: int):
    """Step 3 set logic for rows i [C]: candidate members of U(i) [C, k_full * (k_half + 1)]
    int32, duplicates possible, N marking non-members."""
    num_all = ranks.shape[0]
    forward = ranks[rows, :k_full]  # [C, kf]
    k_mask = _reciprocal(ranks, rows, k_full)  # K(i) = forward[k_mask]
    cand_sets = ranks[forward, :k_half]  # [C, kf, kh]: K'(c) = cand_sets[c][cand_mask[c]]
    cand_mask = half_mask[forward]
    in_k = jnp.any((cand_sets[..., None] == forward[:, None, None, :])
                   & k_mask[:, None, None, :], axis=3)
    overlap = jnp.sum(in_k & cand_mask, axis=2)
    accept = k_mask & (3 * overlap > 2 * jnp.sum(cand_mask, axis=2))  # |K' & K| > 2/3 |K'|
    members = jnp.concatenate([
        jnp.where(k_mask, forward, num_all),
        jnp.where(accept[..., None] & cand_mask, cand_sets, num_all).reshape(len(rows), -1),
    ], axis=1)
    return members


@functools.partial(jax.jit, static_argnames="num_all")
def _unique_entries(index: jax.Array, values: jax.Array, num_all: int):
    """Merges repeated indices of each row, summing their values.

    index [C, M] int32 (num_all = empty), values [C, M] float32 -> (index [C, M]: the unique
    ones ascending, then num_all; summed values [C, M]; count [C]). One sort of the packed keys
    index * M + position per row (a multi-operand sort is several times slower on CPU).
    """
    num_rows, width = index.shape
    if (num_all + 1) * width >= 2**31:
        raise ValueError(f"re-ranking: {num_all} samples x {width} set entries overflow int32")
    row = jnp.arange(num_rows)[:, None]
    keys = jnp.sort(index * width + jnp.arange(width, dtype=jnp.int32)[None, :], axis=1)
    index, values = keys // width, jnp.take_along_axis(values, keys % width, axis=1)
    first = (index < num_all) & jnp.concatenate(
        [jnp.ones((num_rows, 1), bool), index[:, 1:] != index[:, :-1]], axis=1)
    slot = jnp.cumsum(first, axis=1) - 1
    unique = jnp.full_like(index, num_all).at[row, jnp.where(first, slot, width)].set(
        index, mode="drop")
    summed = jnp.zeros_like(values).at[row, slot].add(jnp.where(index < num_all, values, 0.0))
    return unique, summed, jnp.sum(first, axis=1)


@jax.jit
def _normalised_weights(raw, row_max, member):
    """V rows: exp(-raw / row_max) over the members, divided by their sum -> [C, L] float32."""
    weight = jnp.where(member, jnp.exp(-(raw / row_max[:, None])), 0.0)
    return weight / jnp.sum(weight, axis=1, keepdims=True)


def _k_reciprocal_weights(pairs: Callable, row_max: np.ndarray, ranks: jax.Array, k_full: int,
                          k_half: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: V as sparse rows (index [N, L] int32 with N for empty slots, weight [N, L])."""
    num_all = ranks.shape[0]
    starts = range(0, num_all, chunk_size)
    half_mask = jnp.concatenate([
        _reciprocal(ranks, _padded_range(start, num_all, chunk_size), k_half)
        for start in starts])[:num_all]
    members = [_union_members(ranks, half_mask, _padded_range(start, num_all, chunk_size),
                              k_full, k_half) for start in starts]
    width = _width(("union", num_all, k_full, k_half),
                   max(int(np.max(count)) for _, count in members))
    index = np.concatenate([np.asarray(unique[:, :width]) for unique, _ in members])[:num_all]
    weight = np.empty(index.shape, np.float32)
    for start in starts:
        rows = _padded_range(start, num_all, chunk_size)
        chunk = pad_rows(index[start:start + chunk_size], chunk_size, num_all)
        raw = pairs(rows[:, None], np.minimum(chunk, num_all - 1))
        weight[start:start + chunk_size] = np.asarray(_normalised_weights(
            raw, row_max[rows], chunk < num_all))[:len(index) - start]
    return index, weight


@functools.partial(jax.jit, static_argnames=("k_full", "k_half"))
def _union_members(ranks, half_mask, rows, k_full: int, k_half: int):
    """U(i) for rows i [C]: (indices [C, k_full (k_half + 1)] ascending then N, count [C])."""
    members = _expanded_sets(ranks, half_mask, rows, k_full, k_half)
    unique, _, count = _unique_entries(members, jnp.zeros(members.shape), ranks.shape[0])
    return unique, count


# The widest bucket each sparse width has used in this process, by (what, sizes...): a width
# only grows, so a run's evaluations share their compiled shapes (at most a few per run, in
# practice one), while no shape is padded to its far larger worst case.
_WIDTHS: dict[tuple, int] = {}


def _width(key: tuple, needed: int, smallest: int = 16) -> int:
    """The power of two >= `needed` (>= `smallest`), never below the one used before for
    `key`."""
    width = max(smallest, 1 << math.ceil(math.log2(max(needed, 1))), _WIDTHS.get(key, 0))
    _WIDTHS[key] = width
    return width


def _padded_range(start: int, num_all: int, chunk_size: int) -> np.ndarray:
    """Row indices start..start + chunk_size, those past the end replaced by the last row."""
    return np.minimum(np.arange(start, start + chunk_size), num_all - 1).astype(np.int32)


def _query_expansion(v_index: np.ndarray, v_weight: np.ndarray, neighbours: jax.Array,
                     chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: row i of V becomes the mean of the rows of its k2 nearest samples (sparse)."""
    num_all = neighbours.shape[0]
    v_index_dev, v_weight_dev = jnp.asarray(v_index), jnp.asarray(v_weight)
    means = [_mean_rows(v_index_dev, v_weight_dev, neighbours,
                        _padded_range(start, num_all, chunk_size))
             for start in range(0, num_all, chunk_size)]
    width = _width(("expanded", num_all, *v_index.shape[1:], neighbours.shape[1]),
                   max(int(np.max(count)) for _, _, count in means))
    index = np.concatenate([np.asarray(unique[:, :width]) for unique, _, _ in means])[:num_all]
    weight = np.concatenate([np.asarray(mean[:, :width]) for _, mean, _ in means])[:num_all]
    return index, weight


@jax.jit
def _mean_rows(v_index, v_weight, neighbours, rows):
    """For rows i [C]: the mean of the sparse V rows neighbours[i] -> (index, weight) [C, k2 L],
    and the count of entries [C]."""
    num_all, k2 = neighbours.shape
    members = v_index[neighbours[rows]].reshape(len(rows), -1)
    unique, summed, count = _unique_entries(members, v_weight[neighbours[rows]].reshape(
        len(rows), -1), num_all)
    return unique, summed / k2, count


@functools.partial(jax.jit, static_argnames=("num_query", "block"))
def _min_overlap(gallery_index, gallery_weight, column_start, column_count, column_query,
                 column_weight, first_triple, num_query: int, block: int):
    """Part of m[q, g] = sum_j min(V[q, j], V[g, j]) for one chunk of gallery rows -> [Q, C]
    float32: the (g, j, q) triples first_triple .. first_triple + block.

    gallery_index / gallery_weight [C, L]: the chunk's sparse V rows (N = empty slot). The query
    rows of V as an inverted index: for column j, entries column_start[j] ..
    column_start[j] + column_count[j] of column_query / column_weight. The triples are laid out
    flat, g by g and j by j; their count is data-dependent, the block size is not, so one
    compiled kernel serves every block of every evaluation.
    """
    num_rows = gallery_index.shape[0]
    flat_index = gallery_index.reshape(-1)
    counts = column_count[flat_index]
    ends = jnp.cumsum(counts)
    slot = first_triple + jnp.arange(block)
    # entry(slot) = #{e : ends[e] <= slot} (a searchsorted), in O(entries + block): the entries
    # ending before the block, plus a running count of those ending inside it.
    inside = ends - first_triple
    marks = jnp.zeros(block, jnp.int32).at[jnp.where(inside > 0, inside, block)].add(
        1, mode="drop")
    entry = jnp.sum(inside <= 0) + jnp.cumsum(marks)
    entry = jnp.minimum(entry, flat_index.shape[0] - 1)
    offset = slot - (ends - counts)[entry]
    position = jnp.minimum(column_start[flat_index[entry]] + offset, column_query.shape[0] - 1)
    overlap = jnp.minimum(gallery_weight.reshape(-1)[entry], column_weight[position])
    segment = column_query[position] * num_rows + entry // gallery_index.shape[1]
    overlap = jnp.where(slot < ends[-1], overlap, 0.0)
    return jax.ops.segment_sum(overlap, segment, num_segments=num_query * num_rows).reshape(
        num_query, num_rows)


@jax.jit
def _final_chunk(overlap, distance, lambda_value):
    """Steps 5-6: (1 - lambda) * jaccard + lambda * normalised distance, [Q, C]."""
    jaccard = 1.0 - overlap / (2.0 - overlap)
    return jaccard * (1.0 - lambda_value) + distance * lambda_value


def _jaccard_and_final(v_index: np.ndarray, v_weight: np.ndarray, final: np.ndarray,
                       lambda_value: float, chunk_size: int) -> None:
    """Steps 5-6, in place on `final` [Q, G] (which holds the normalised distances)."""
    num_query, num_gallery = final.shape
    num_all = num_query + num_gallery
    query_index, query_weight = v_index[:num_query], v_weight[:num_query]
    used = query_index < num_all
    columns, owners = query_index[used], np.nonzero(used)[0]
    order = np.argsort(columns, kind="stable")
    column_count = np.bincount(columns, minlength=num_all + 1)
    column_start = np.cumsum(column_count) - column_count
    capacity = _width(("inverted", num_query, num_all), int(used.sum()), 1 << 12)
    inverted = [jnp.asarray(a) for a in (
        column_start, column_count, pad_rows(owners[order].astype(np.int32), capacity),
        pad_rows(query_weight[used][order], capacity))]
    starts = range(num_query, num_all, chunk_size)
    triples = [int(column_count[v_index[start:start + chunk_size]].sum()) for start in starts]
    # Padded to what the largest chunk needs (not to TRIPLE_BLOCK: ~20x fewer slots at Market
    # scale), in blocks of at most TRIPLE_BLOCK (bounded memory for any gallery).
    block = _width(("triples", num_query, num_all, chunk_size, TRIPLE_BLOCK),
                   min(max(triples), TRIPLE_BLOCK), min(1 << 12, TRIPLE_BLOCK))
    for start, chunk_triples in zip(starts, triples, strict=True):
        stop = min(start + chunk_size, num_all)
        rows = jnp.asarray(pad_rows(v_index[start:stop], chunk_size, num_all))
        weights = jnp.asarray(pad_rows(v_weight[start:stop], chunk_size))
        overlap = jnp.zeros((num_query, chunk_size), jnp.float32)
        for first in range(0, chunk_triples, block):
            overlap = overlap + _min_overlap(rows, weights, *inverted, first, num_query, block)
        columns = slice(start - num_query, stop - num_query)
        distance = np.pad(final[:, columns], [(0, 0), (0, chunk_size - (stop - start))])
        final[:, columns] = np.asarray(_final_chunk(overlap, distance, lambda_value))[
            :, :stop - start]
