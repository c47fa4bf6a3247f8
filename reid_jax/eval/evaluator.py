"""Evaluation of features (distances, CMC / mAP / mINP, re-ranking) and of a model on a dataset.

The pieces live in distances.py (normalisation, chunked distances), metrics.py (CMC / mAP /
mINP, REFERENCE section 5), rerank.py (k-reciprocal re-ranking) and neighbours.py (its blockwise
k-nearest-neighbour pass); features.py runs the model. Cross-domain evaluation is the same call on
another dataset's query / gallery streams.
"""

from collections.abc import Iterable

import jax.numpy as jnp
import ml_collections
import numpy as np

from reid_jax.eval.distances import (
    as_features,
    check_distance,
    check_local_features,
    feature_distance_jit,
    l2_normalize,
    select_rows,
)
from reid_jax.eval.features import EmbedFn, extract_features
from reid_jax.eval.metrics import evaluate_rankings, match_ranks, metrics_from_ranks
from reid_jax.eval.rerank import re_ranking_features


class Evaluator:
    """A model's metrics on one dataset's query and gallery.

    embed_fn: the method's inference forward (see features.py), the same object for every call
    so that the forward compiles once per run. query / gallery: re-iterable batch streams (see
    `extract_features`). eval_config: `config.eval`.
    """

    def __init__(self, embed_fn: EmbedFn, query: Iterable[dict], gallery: Iterable[dict],
                 eval_config: ml_collections.ConfigDict):
        check_distance(eval_config.distance)
        self.embed_fn, self.query, self.gallery = embed_fn, query, gallery
        self.eval_config = eval_config

    def features(self, variables: dict) -> tuple[dict, dict]:
        """(query, gallery) `extract_features` outputs of the model `variables`."""
        return tuple(extract_features(self.embed_fn, variables, batches, self.eval_config.flip,
                                      self.eval_config.feat_norm)
                     for batches in (self.query, self.gallery))

    def __call__(self, variables: dict, rerank: bool) -> dict:
        """`evaluate_features` of the model `variables`, re-ranked too when `rerank`."""
        eval_config = ml_collections.ConfigDict(self.eval_config.to_dict())
        eval_config.rerank = rerank
        return evaluate_features(*self.features(variables), eval_config)


def evaluate_features(query: dict, gallery: dict, eval_config: ml_collections.ConfigDict) -> dict:
    """Distances, CMC / mAP / mINP and, when `eval_config.rerank`, the same after re-ranking.

    `query` / `gallery` are `extract_features` outputs ("features" [N, D], and "local_features"
    [N, S, d] for the local distances). Reads `eval_config` keys feat_norm
    (normalise features not normalised at extraction), distance, max_rank, chunk_size, rerank,
    k1, k2, lambda_value. The query x gallery distances are never held whole without
    re-ranking: each query chunk's distances are reduced to match ranks on device.

    Returns {"original": metrics} plus {"re_ranked": metrics} with re-ranking, each metrics dict
    as `evaluate_rankings` returns it.
    """
    metric = eval_config.distance
    check_distance(metric)
    feats = []
    for stream in (query, gallery):
        f = as_features(stream)
        if eval_config.feat_norm and not stream.get("feat_norm", False):
            f = {key: np.asarray(l2_normalize(value)) for key, value in f.items()}
        feats.append(f)
    check_local_features(metric, *feats)
    query_feats, gallery_feats = feats
    ids = (query["pids"], gallery["pids"], query["camids"], gallery["camids"])
    num_query, num_gallery = len(query_feats["features"]), len(gallery_feats["features"])
    max_rank = min(eval_config.max_rank, num_gallery)
    gallery_dev = {key: jnp.asarray(value) for key, value in gallery_feats.items()}
    match_query, ranks = match_ranks(
        lambda rows: feature_distance_jit(select_rows(query_feats, rows), gallery_dev, metric),
        *ids, eval_config.chunk_size)
    results = {"original": metrics_from_ranks(match_query, ranks, num_query, max_rank)}
    if eval_config.rerank:
        distmat = re_ranking_features(query_feats, gallery_feats, eval_config.k1, eval_config.k2,
                                      eval_config.lambda_value, eval_config.chunk_size, metric)
        results["re_ranked"] = evaluate_rankings(distmat, *ids, max_rank=max_rank,
                                                 chunk_size=eval_config.chunk_size)
    return results
