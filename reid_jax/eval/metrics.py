"""CMC, mAP and mINP with the Market-1501 protocol (REFERENCE section 5), ranks on device.

The reference (BoT `eval_func`, mINP from AGW) argsorts every query's whole gallery row. Only the
positions of the true matches matter, so here each query's ranking is never sorted: the 0-based
rank of a true match m is the number of valid gallery entries g that come before it,

    rank(m) = #{g valid : d[g] < d[m]  or  (d[g] == d[m] and g < m)},

which is exactly its position in a STABLE argsort of the row (ties in distance keep gallery
order, as `np.argsort(kind="stable")`; the reference's default quicksort leaves tie order
unspecified). "Valid" drops gallery entries with the query's id AND camera. Junk images (id -1)
are expected to be removed by the dataset; any id that differs from the query's (0 distractors,
-1 junk) is simply a non-match. The counts run on device in query chunks, as [C, M, G] compares
reduced over the gallery, M the largest number of true matches of a query in the chunk (queries
are grouped by that number to keep padding small). AP, INP and CMC follow from the integer ranks
on the host in float64.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from reid_jax.eval.distances import check_chunk_size, pad_rows


def valid_matches(query_pids: np.ndarray, gallery_pids: np.ndarray, query_cams: np.ndarray,
                  gallery_cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, gallery) true match: same id, different camera.

    Returns (query index [P] int64, gallery index [P] int64), sorted by query then gallery index.
    """
    gallery_order = np.argsort(gallery_pids, kind="stable")
    sorted_pids = gallery_pids[gallery_order]
    low = np.searchsorted(sorted_pids, query_pids, side="left")
    counts = np.searchsorted(sorted_pids, query_pids, side="right") - low
    query_index = np.repeat(np.arange(len(query_pids)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    gallery_index = gallery_order[np.repeat(low, counts) + offsets]
    keep = gallery_cams[gallery_index] != query_cams[query_index]
    return query_index[keep], gallery_index[keep]


def _count_before(dist: jax.Array, match_index: jax.Array, query_pids: jax.Array,
                  query_cams: jax.Array, gallery_pids: jax.Array,
                  gallery_cams: jax.Array) -> jax.Array:
    """0-based stable-sort rank of each listed match among its query's valid gallery entries.

    dist [C, G] float32, match_index [C, M] int32 (G marks padding) -> [C, M] int32 (padding
    entries hold garbage).
    """
    num_gallery = dist.shape[1]
    valid = ((gallery_pids[None, :] != query_pids[:, None])
             | (gallery_cams[None, :] != query_cams[:, None]))
    masked = jnp.where(valid, dist, jnp.inf)
    thresholds = jnp.take_along_axis(masked, jnp.minimum(match_index, num_gallery - 1), axis=1)
    gallery_index = jnp.arange(num_gallery, dtype=jnp.int32)

    def one_query(args):
        row, row_thresholds, row_matches = args
        before = ((row[None, :] < row_thresholds[:, None])
                  | ((row[None, :] == row_thresholds[:, None])
                     & (gallery_index[None, :] < row_matches[:, None])))
        # A float32 sum is exact below 2^24 entries and vectorises better than an int sum.
        return jnp.sum(jnp.where(before, 1.0, 0.0), axis=1).astype(jnp.int32)

    args = (masked, thresholds, match_index)
    if jax.default_backend() == "cpu":  # a row at a time keeps the row in cache: ~2x on CPU
        return jax.lax.map(one_query, args)
    return jax.vmap(one_query)(args)


_count_before_jit = jax.jit(_count_before)


def match_ranks(dist_rows: Callable[[np.ndarray], jax.Array], query_pids: np.ndarray,
                gallery_pids: np.ndarray, query_cams: np.ndarray, gallery_cams: np.ndarray,
                chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of every true match in its query's filtered, stably sorted gallery.

    `dist_rows(query_indices [C] int)` returns those queries' distance rows [C, G] float32 on
    device. Returns (query index [P] int64, rank [P] int64), P the number of true matches.
    """
    check_chunk_size(chunk_size)
    if len(gallery_pids) >= 2**24:
        raise ValueError(f"{len(gallery_pids)} gallery images: ranks are counted in float32, "
                         "exact below 2^24")
    match_query, match_gallery = valid_matches(query_pids, gallery_pids, query_cams, gallery_cams)
    num_matches = np.bincount(match_query, minlength=len(query_pids))
    first = np.cumsum(num_matches) - num_matches
    queries = np.flatnonzero(num_matches)
    queries = queries[np.argsort(num_matches[queries], kind="stable")]
    ranks = np.empty(len(match_query), np.int64)
    chunk_size = min(chunk_size, max(len(queries), 1))
    device_ids = [jnp.asarray(a, jnp.int32) for a in (gallery_pids, gallery_cams)]
    num_gallery = len(gallery_pids)
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start:start + chunk_size]
        # Matches per query padded to a power of two: few compiled shapes, little padding
        # (the queries are sorted by their number of matches).
        width = 1 << max(3, math.ceil(math.log2(num_matches[chunk].max())))
        column = np.arange(width)[None, :]
        used = column < num_matches[chunk][:, None]
        flat = np.where(used, first[chunk][:, None] + column, 0)
        match_index = np.where(used, match_gallery[flat], num_gallery).astype(np.int32)
        rows = pad_rows(chunk, chunk_size, chunk[0])
        counts = np.asarray(_count_before_jit(
            dist_rows(rows),
            pad_rows(match_index, chunk_size, num_gallery),
            jnp.asarray(query_pids[rows], jnp.int32), jnp.asarray(query_cams[rows], jnp.int32),
            *device_ids))[:len(chunk)]
        ranks[flat[used]] = counts[used]
    return match_query, ranks


def metrics_from_ranks(match_query: np.ndarray, ranks: np.ndarray, num_queries: int,
                       max_rank: int) -> dict:
    """CMC / AP / INP from the 0-based ranks of the true matches (any order), float64.

    AP = mean over a query's matches of (k / (rank_k + 1)), k = 1.. in rank order; INP = number
    of matches / (last rank + 1); CMC(r) = share of valid queries with first rank <= r.
    """
    order = np.lexsort((ranks, match_query))
    match_query, ranks = match_query[order], ranks[order]
    num_matches = np.bincount(match_query, minlength=num_queries)
    valid = num_matches > 0
    if not valid.any():
        raise ValueError("no query has a true match (same id, other camera) in the gallery")
    first = np.cumsum(num_matches) - num_matches
    k = np.arange(len(ranks)) - first[match_query] + 1
    precision_sum = np.bincount(match_query, weights=k / (ranks + 1.0), minlength=num_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        all_ap = np.where(valid, precision_sum / num_matches, np.nan)
        last = first + num_matches - 1
        all_inp = np.where(valid, num_matches / (ranks[np.minimum(last, len(ranks) - 1)] + 1.0),
                           np.nan)
    first_match = np.where(valid, ranks[np.minimum(first, len(ranks) - 1)], -1)
    num_valid = int(valid.sum())
    hits = np.bincount(first_match[valid & (first_match < max_rank)], minlength=max_rank)
    return {
        "cmc": np.cumsum(hits) / num_valid,
        "mAP": float(np.mean(all_ap[valid])),
        "mINP": float(np.mean(all_inp[valid])),
        "all_AP": all_ap,
        "all_INP": all_inp,
        "first_match_index": first_match,
        "num_valid_queries": num_valid,
        "num_skipped_queries": num_queries - num_valid,
    }


def evaluate_rankings(distmat: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray,
                      query_cams: np.ndarray, gallery_cams: np.ndarray, max_rank: int = 50,
                      chunk_size: int = 1024) -> dict:
    """Market-1501 protocol metrics from a query x gallery distance matrix.

    Args:
      distmat: [Q, G] float distances (smaller = more similar), numpy or jax.
      query_pids, gallery_pids: [Q], [G] int person ids. query_cams, gallery_cams: camera ids.
      max_rank: CMC length; cut to G when the gallery is smaller (as the reference does).
      chunk_size: queries per device step.

    Returns a dict: "cmc" [max_rank] float64 (cmc[r] = rank-(r+1) accuracy), "mAP", "mINP"
    (floats in [0, 1]), "all_AP" / "all_INP" [Q] float64 (NaN for skipped queries),
    "first_match_index" [Q] int64 (0-based position of the first true match in the query's
    filtered ranking, -1 when skipped), "num_valid_queries", "num_skipped_queries" (queries with
    no true match in another camera; left out of every mean, as in the reference).
    """
    distmat = np.asarray(distmat, np.float32)
    query_pids, gallery_pids, query_cams, gallery_cams = (
        np.asarray(a).astype(np.int64) for a in (query_pids, gallery_pids, query_cams,
                                                 gallery_cams))
    if distmat.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"distmat shape {distmat.shape} does not match {len(query_pids)} queries"
                         f" x {len(gallery_pids)} gallery ids")
    if len(query_cams) != len(query_pids) or len(gallery_cams) != len(gallery_pids):
        raise ValueError("camera ids and person ids differ in length")
    match_query, ranks = match_ranks(lambda rows: distmat[rows], query_pids, gallery_pids,
                                     query_cams, gallery_cams, chunk_size)
    return metrics_from_ranks(match_query, ranks, len(query_pids),
                              min(max_rank, len(gallery_pids)))
