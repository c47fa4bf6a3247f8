"""Evaluation: features, distances, CMC / mAP / mINP (Market-1501 protocol), k-reciprocal
re-ranking, reports. Works on features from anywhere:

    from reid_jax import eval as reid_eval
    metrics = reid_eval.evaluate_rankings(distmat, query_pids, gallery_pids, query_cams,
                                          gallery_cams, max_rank=50)
"""

from reid_jax.eval.distances import distance_matrix, l2_normalize, pairwise_distance
from reid_jax.eval.evaluator import Evaluator, evaluate_features
from reid_jax.eval.features import extract_features
from reid_jax.eval.metrics import evaluate_rankings
from reid_jax.eval.report import flat_summary, format_report, summarize
from reid_jax.eval.rerank import re_ranking, re_ranking_features

__all__ = ["Evaluator", "distance_matrix", "evaluate_features", "evaluate_rankings",
           "extract_features", "flat_summary", "format_report", "l2_normalize",
           "pairwise_distance", "re_ranking", "re_ranking_features", "summarize"]
