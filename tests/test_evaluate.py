"""CMC / mAP / mINP, distances and feature extraction against plain numpy references (BoT's
`eval_func` transcribed in tests/numpy_eval.py)."""

import json
import re

import numpy as np
import pytest
from numpy_eval import assert_metrics_match

from configs.market import get_config
from reid_jax import eval as reid_eval
from reid_jax.eval.distances import distance_matrix, l2_normalize


def assert_matches_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50, chunk_size=7):
    ours = reid_eval.evaluate_rankings(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                                      chunk_size=chunk_size)
    _, _, _, all_ap, first, num_valid = assert_metrics_match(ours, distmat, q_pids, g_pids,
                                                             q_cams, g_cams, max_rank)
    valid = ~np.isnan(ours["all_AP"])
    np.testing.assert_allclose(ours["all_AP"][valid], all_ap, atol=1e-12)
    np.testing.assert_array_equal(ours["first_match_index"][valid], first)
    assert np.all(ours["first_match_index"][~valid] == -1)
    assert ours["num_skipped_queries"] == len(q_pids) - num_valid
    return ours


def random_case(seed, num_query=40, num_gallery=300, num_ids=30, levels=10):
    """Ids with junk (-1) and distractors (0) in the gallery, query ids without any gallery image,
    3 cameras (many same-camera matches) and distances on a coarse grid (many exact ties)."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(-1, num_ids + 1, num_gallery)
    q_pids = rng.integers(1, num_ids + 6, num_query)
    g_cams = rng.integers(0, 3, num_gallery)
    q_cams = rng.integers(0, 3, num_query)
    distmat = (rng.integers(0, levels, (num_query, num_gallery)) / levels).astype(np.float32)
    return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", range(4))
def test_rankings_match_reference_on_random_data_with_ties(seed):
    ours = assert_matches_reference(*random_case(seed))
    assert ours["num_skipped_queries"] > 0


def test_rankings_match_reference_with_continuous_distances_and_short_cmc():
    distmat, q_pids, g_pids, q_cams, g_cams = random_case(7, levels=2)
    distmat = distmat + np.random.default_rng(0).random(distmat.shape, dtype=np.float32)
    assert_matches_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)


def test_chunk_size_does_not_change_results():
    case = random_case(11, num_query=60)
    results = [reid_eval.evaluate_rankings(*case, chunk_size=c) for c in (1, 8, 1024)]
    for other in results[1:]:
        for key in ("cmc", "all_AP", "all_INP", "first_match_index"):
            np.testing.assert_array_equal(other[key], results[0][key])


def parse_market_name(name):
    pid, cam = re.match(r"(-?\d+)_c(\d)", name).groups()
    return int(pid), int(cam) - 1


def test_rankings_match_reference_on_market_mini_ids(shared_data):
    root = shared_data / "market1501-mini"
    query = [parse_market_name(p.name) for p in sorted((root / "query").glob("*.jpg"))]
    gallery = [parse_market_name(p.name)
               for p in sorted((root / "bounding_box_test").glob("*.jpg"))]
    q_pids, q_cams = map(np.asarray, zip(*query, strict=True))
    g_pids, g_cams = map(np.asarray, zip(*gallery, strict=True))
    assert len(q_pids) == 3 and len(g_pids) == 60 and -1 in g_pids and 0 in g_pids
    rng = np.random.default_rng(0)
    for levels in (3, 1000):
        distmat = (rng.integers(0, levels, (3, 60)) / levels).astype(np.float32)
        assert_matches_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)


def test_hand_computed_case():
    # Gallery: (id, cam) = (1, 0) (1, 1) (2, 1) (1, 2) (3, 2).
    g_pids, g_cams = np.array([1, 1, 2, 1, 3]), np.array([0, 1, 1, 2, 2])
    q_pids, q_cams = np.array([1, 1, 3]), np.array([0, 3, 2])
    distmat = np.array([
        # Query (1, cam 0): (1, 0) is removed; order (2,1) (1,1) (3,2) (1,2): matches at 2 and 4.
        [0.1, 0.3, 0.2, 0.5, 0.4],
        # Query (1, cam 3): all tied, gallery order: matches at ranks 1, 2, 4.
        [0.7, 0.7, 0.7, 0.7, 0.7],
        # Query (3, cam 2): its only gallery image shares its camera: skipped.
        [0.1, 0.2, 0.3, 0.4, 0.5],
    ], np.float32)
    out = reid_eval.evaluate_rankings(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    ap = [(1 / 2 + 2 / 4) / 2, (1 / 1 + 2 / 2 + 3 / 4) / 3]
    np.testing.assert_allclose(out["all_AP"][:2], ap)
    assert np.isnan(out["all_AP"][2])
    assert out["mAP"] == pytest.approx(np.mean(ap))
    assert out["mINP"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    np.testing.assert_allclose(out["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out["first_match_index"], [1, 0, -1])
    assert out["num_valid_queries"] == 2 and out["num_skipped_queries"] == 1


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a true match"):
        reid_eval.evaluate_rankings(np.zeros((1, 2), np.float32), np.array([1]), np.array([1, 2]),
                                   np.array([0]), np.array([0, 0]))


def test_distances_against_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((13, 8)), rng.standard_normal((21, 8))
    diff = x[:, None, :] - y[None, :, :]
    squared = np.sum(diff ** 2, axis=2)
    cosine = 1 - (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    for metric, expected in (("squared_euclidean", squared), ("euclidean", np.sqrt(squared)),
                             ("cosine", cosine)):
        for chunk in (4, 13, 100):
            np.testing.assert_allclose(distance_matrix(x, y, metric, chunk), expected,
                                       rtol=1e-5, atol=1e-5)
    norm = np.asarray(l2_normalize(x))
    np.testing.assert_allclose(norm, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="config.eval.distance='manhattan'"):
        distance_matrix(x, y, "manhattan", 4)


def linear_apply(variables, images):
    """A stand-in model: [B, H, W, 3] -> {"features": [B, D]} through a fixed matrix (not flip
    invariant)."""
    return {"features": images.reshape(images.shape[0], -1) @ variables["w"]}


def make_batches(images, pids, camids, batch_size):
    """Evaluation batches padded to `batch_size` rows, as the data pipeline emits them."""
    batches = []
    for start in range(0, len(images), batch_size):
        n = min(batch_size, len(images) - start)
        pad = batch_size - n
        batches.append({
            "image": np.concatenate([images[start:start + n],
                                     np.full((pad, *images.shape[1:]), 9.0, np.float32)]),
            "pid": np.concatenate([pids[start:start + n], np.full(pad, -7)]).astype(np.int32),
            "camid": np.concatenate([camids[start:start + n], np.zeros(pad)]).astype(np.int32),
            "path": np.array([f"img{i}.jpg".encode() for i in range(start, start + n)]
                             + [b""] * pad, dtype=object),
            "mask": np.arange(batch_size) < n,
        })
    return batches


@pytest.mark.parametrize("flip,feat_norm", [(False, False), (False, True), (True, True)])
def test_extract_features_drops_padding_flips_and_normalises(flip, feat_norm):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((11, 4, 3, 3)).astype(np.float32)
    pids, camids = rng.integers(0, 5, 11), rng.integers(0, 3, 11)
    w = rng.standard_normal((36, 6)).astype(np.float32)
    out = reid_eval.extract_features(linear_apply, {"w": w},
                                     make_batches(images, pids, camids, 4), flip=flip,
                                     feat_norm=feat_norm)
    flat = images.reshape(11, -1).astype(np.float64) @ w
    if flip:
        flat = (flat + images[:, :, ::-1].reshape(11, -1).astype(np.float64) @ w) / 2
    if feat_norm:
        flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    assert out["features"].dtype == np.float32 and out["features"].shape == (11, 6)
    np.testing.assert_allclose(out["features"], flat, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["pids"], pids)
    np.testing.assert_array_equal(out["camids"], camids)
    assert list(out["paths"]) == [f"img{i}.jpg" for i in range(11)]
    assert out["feat_norm"] == feat_norm


def test_extract_features_compiles_the_forward_once():
    traces = []

    def apply(variables, images):
        traces.append(images.shape)  # runs only while jax traces
        return linear_apply(variables, images)

    rng = np.random.default_rng(1)
    images = rng.standard_normal((10, 4, 3, 3)).astype(np.float32)
    w = {"w": rng.standard_normal((36, 5)).astype(np.float32)}
    for _ in range(2):  # query, then gallery
        reid_eval.extract_features(apply, w, make_batches(images, np.zeros(10), np.zeros(10), 4))
    assert traces == [(4, 4, 3, 3)]


def features_case(seed, num_query=50, num_gallery=260, num_ids=20, dim=12):
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((num_ids + 1, dim))
    q_pids, g_pids = rng.integers(1, num_ids + 1, num_query), rng.integers(0, num_ids + 1,
                                                                             num_gallery)
    q = (centroids[q_pids] + 0.8 * rng.standard_normal((num_query, dim))).astype(np.float32)
    g = (centroids[g_pids] + 0.8 * rng.standard_normal((num_gallery, dim))).astype(np.float32)
    query = {"features": q, "pids": q_pids, "camids": rng.integers(0, 4, num_query),
             "feat_norm": False}
    gallery = {"features": g, "pids": g_pids, "camids": rng.integers(0, 4, num_gallery),
               "feat_norm": False}
    return query, gallery


def numpy_distance(x, y, metric, normalise):
    x, y = x.astype(np.float64), y.astype(np.float64)
    if normalise:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    squared = np.sum((x[:, None] - y[None]) ** 2, axis=2)
    cosine = 1 - (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    return {"squared_euclidean": squared, "euclidean": np.sqrt(squared), "cosine": cosine}[metric]


@pytest.mark.parametrize("metric,feat_norm", [("squared_euclidean", True), ("cosine", False),
                                              ("euclidean", False)])
def test_evaluate_features_matches_reference(metric, feat_norm):
    config = get_config().eval
    config.distance, config.feat_norm, config.chunk_size, config.max_rank = (
        metric, feat_norm, 16, 20)
    query, gallery = features_case(1)
    results = reid_eval.evaluate_features(query, gallery, config)
    assert set(results) == {"original"}
    distmat = numpy_distance(query["features"], gallery["features"], metric, feat_norm)
    assert_metrics_match(results["original"], distmat, query["pids"], gallery["pids"],
                         query["camids"], gallery["camids"], 20)


def test_report_and_json_summary():
    config = get_config().eval
    config.rerank, config.chunk_size = True, 16
    query, gallery = features_case(2, num_query=30, num_gallery=150)
    results = reid_eval.evaluate_features(query, gallery, config)
    summary = reid_eval.summarize(results)
    json.dumps(summary)
    assert set(summary) == {"original", "re_ranked"}
    for name, metrics in results.items():
        assert summary[name]["rank1"] == pytest.approx(100 * metrics["cmc"][0])
        assert summary[name]["rank10"] == pytest.approx(100 * metrics["cmc"][9])
        assert summary[name]["mAP"] == pytest.approx(100 * metrics["mAP"])
    report = reid_eval.format_report(results)
    lines = report.splitlines()
    assert lines[0] == "| setting | rank-1 | rank-5 | rank-10 | mAP | mINP |"
    assert lines[2].startswith("| original | ") and lines[3].startswith("| re-ranked | ")
    assert f"{summary['re_ranked']['mAP']:.1f}" in lines[3]


def test_second_evaluation_compiles_nothing():
    """An Evaluator called twice in a run (features, distances, ranks, re-ranking; other model
    weights, other features, same sizes) compiles its kernels during the first call only: every
    shape is fixed by the dataset and the config, never by the data."""
    from jax import monitoring

    compiles = []

    def count(name, secs, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    monitoring.register_event_duration_secs_listener(count)
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((9, 36))
    pids = {"query": rng.integers(1, 9, 40), "gallery": rng.integers(0, 9, 150)}
    camids = {split: rng.integers(0, 3, len(p)) for split, p in pids.items()}
    images = {split: (centroids[p] + 0.9 * rng.standard_normal((len(p), 36))).reshape(
        -1, 4, 3, 3).astype(np.float32) for split, p in pids.items()}
    config = get_config().eval
    config.chunk_size = 32
    evaluator = reid_eval.Evaluator(
        linear_apply, *(make_batches(images[s], pids[s], camids[s], 16)
                        for s in ("query", "gallery")), config)
    weights = [{"w": rng.standard_normal((36, 12)).astype(np.float32)} for _ in range(2)]
    first = evaluator(weights[0], rerank=True)
    before = len(compiles)
    second = evaluator(weights[1], rerank=True)
    monitoring.unregister_event_duration_listener(count)
    assert len(compiles) == before, f"{len(compiles) - before} compilations"
    assert before > 0 and second["re_ranked"]["mAP"] != first["re_ranked"]["mAP"]
