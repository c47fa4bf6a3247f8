"""Evaluation entry points: feature extraction, metrics (+ re-ranking) from features, a report.

The pieces live in distances.py (normalisation, chunked distances), metrics.py (CMC / mAP /
mINP, REFERENCE section 5), rerank.py (k-reciprocal re-ranking) and neighbours.py (its blockwise
k-nearest-neighbour pass); the public functions are re-exported here.
Cross-domain evaluation is the same call on another dataset's query / gallery streams.
"""

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reid_jax.distances import check_distance, distance_matrix, l2_normalize, pairwise_distance_jit
from reid_jax.metrics import evaluate_rankings, match_ranks, metrics_from_ranks
from reid_jax.rerank import re_ranking, re_ranking_features

__all__ = ["distance_matrix", "evaluate_features", "evaluate_rankings", "extract_features",
           "format_report", "l2_normalize", "re_ranking", "re_ranking_features", "summarize"]

REPORT_RANKS = (1, 5, 10)


def extract_features(apply_fn: Callable, variables, batches: Iterable[dict], flip: bool = False,
                     feat_norm: bool = True) -> dict:
    """Runs the model over an evaluation stream.

    Args:
      apply_fn: `(variables, images [B, H, W, 3] float32) -> [B, D]` inference features (e.g.
        `lambda v, x: model.apply(v, x, train=False)`); jit-compiled here, once per batch shape
        and apply_fn object (pass the same object for query and gallery to compile once).
      batches: dicts with "image" [B, H, W, 3] float32, "pid" [B] int, "camid" [B] int, "path"
        [B] (str or bytes) and "mask" [B] bool (False marks padding rows, which are dropped).
      flip: average the features of each image and of its horizontal flip (before normalising).
      feat_norm: L2-normalise the features (the reference default, `config.eval.feat_norm`).

    Returns {"features": [N, D] float32, "pids": [N] int64, "camids": [N] int64, "paths": [N]
    str, "feat_norm": bool} as numpy, in stream order.
    """
    outputs, masks, pids, camids, paths = [], [], [], [], []
    for batch in batches:  # dispatch every batch before reading any result back
        outputs.append(_embed(apply_fn, variables, batch["image"], flip, feat_norm))
        mask = np.asarray(batch["mask"], bool)
        masks.append(mask)
        pids.append(np.asarray(batch["pid"])[mask])
        camids.append(np.asarray(batch["camid"])[mask])
        paths.extend(p.decode() if isinstance(p, bytes) else str(p)
                     for p in np.asarray(batch["path"], object)[mask])
    if not outputs:
        raise ValueError("extract_features: the batch stream is empty")
    features = np.concatenate([np.asarray(f)[m] for f, m in zip(outputs, masks, strict=True)])
    return {"features": features.astype(np.float32),
            "pids": np.concatenate(pids).astype(np.int64),
            "camids": np.concatenate(camids).astype(np.int64),
            "paths": np.asarray(paths, dtype=str), "feat_norm": feat_norm}


@functools.partial(jax.jit, static_argnames=("apply_fn", "flip", "feat_norm"))
def _embed(apply_fn: Callable, variables, images: jax.Array, flip: bool, feat_norm: bool):
    """[B, H, W, 3] -> [B, D] float32 features (flip-averaged, L2-normalised if asked)."""
    feats = apply_fn(variables, images).astype(jnp.float32)
    if flip:
        feats = (feats + apply_fn(variables, jnp.flip(images, axis=2)).astype(jnp.float32)) / 2.0
    return l2_normalize(feats) if feat_norm else feats


def evaluate_features(query: dict, gallery: dict, eval_config: ml_collections.ConfigDict) -> dict:
    """Distances, CMC / mAP / mINP and, when `eval_config.rerank`, the same after re-ranking.

    `query` / `gallery` are `extract_features` outputs. Reads `eval_config` keys feat_norm
    (normalise features not normalised at extraction), distance, max_rank, chunk_size, rerank,
    k1, k2, lambda_value. The query x gallery distances are never held whole without
    re-ranking: each query chunk's distances are reduced to match ranks on device.

    Returns {"original": metrics} plus {"re_ranked": metrics} with re-ranking, each metrics dict
    as `evaluate_rankings` returns it.
    """
    check_distance(eval_config.distance)
    feats = []
    for stream in (query, gallery):
        f = np.asarray(stream["features"], np.float32)
        if eval_config.feat_norm and not stream.get("feat_norm", False):
            f = np.asarray(l2_normalize(f))
        feats.append(f)
    query_feats, gallery_feats = feats
    ids = (query["pids"], gallery["pids"], query["camids"], gallery["camids"])
    max_rank = min(eval_config.max_rank, len(gallery_feats))
    gallery_dev = jnp.asarray(gallery_feats)
    match_query, ranks = match_ranks(
        lambda rows: pairwise_distance_jit(query_feats[rows], gallery_dev, eval_config.distance),
        *ids, eval_config.chunk_size)
    results = {"original": metrics_from_ranks(match_query, ranks, len(query_feats), max_rank)}
    if eval_config.rerank:
        distmat = re_ranking_features(query_feats, gallery_feats, eval_config.k1, eval_config.k2,
                                      eval_config.lambda_value, eval_config.chunk_size,
                                      eval_config.distance)
        results["re_ranked"] = evaluate_rankings(distmat, *ids, max_rank=max_rank,
                                                 chunk_size=eval_config.chunk_size)
    return results


def summarize(results: dict) -> dict:
    """JSON-able summary of `evaluate_features` results: for each of "original" / "re_ranked",
    {"rank1", "rank5", "rank10", "mAP", "mINP"} in percent and the query counts."""
    summary = {}
    for name, metrics in results.items():
        cmc = metrics["cmc"]
        row = {f"rank{r}": 100.0 * float(cmc[min(r, len(cmc)) - 1]) for r in REPORT_RANKS}
        row["mAP"] = 100.0 * metrics["mAP"]
        row["mINP"] = 100.0 * metrics["mINP"]
        row["num_valid_queries"] = int(metrics["num_valid_queries"])
        row["num_skipped_queries"] = int(metrics["num_skipped_queries"])
        summary[name] = row
    return summary


def format_report(results: dict) -> str:
    """A markdown table of rank-1/5/10, mAP and mINP (percent), one row per setting."""
    summary = summarize(results)
    columns = [f"rank{r}" for r in REPORT_RANKS] + ["mAP", "mINP"]
    lines = ["| setting | " + " | ".join(c.replace("rank", "rank-") for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, row in summary.items():
        lines.append(f"| {name.replace('_', '-')} | "
                     + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    skipped = {row["num_skipped_queries"] for row in summary.values()}
    if skipped != {0}:
        lines.append(f"({max(skipped)} queries without a true match in another camera skipped)")
    return "\n".join(lines)
