"""AlignedReID's test-time distances ("local", "global_local") against a numpy transcription of
the re-production's `aligned_reid/utils/distance.py` and `dataset/TestSet.py` (REFERENCE
section 8), through `feature_distance`, `distance_matrix`, `evaluate_features` and re-ranking.

Known, intended difference: reid_jax clamps a squared stripe distance at 1e-12 before the square
root (as the training loss does) where the test code clamps at 0, so two identical stripes are
~1e-6 apart instead of 0 (a stripe cell tanh(5e-7) = 5e-7, at most (m + n - 1) * 5e-7 = 5.5e-6
on a path of 6 x 6 stripes). Features here lie on a 1/16 grid, so every squared expansion is
exact in float32 for both sides and the remaining differences are float32 rounding of tanh versus
(exp(e) - 1) / (exp(e) + 1) and of the path sums: distances are compared at atol 1e-5.
"""

import itertools

import jax
import numpy as np
import pytest
from numpy_eval import assert_metrics_match
from test_rerank import reference_re_ranking

from configs.market import get_config
from reid_jax import eval as reid_eval
from reid_jax.eval import distances
from reid_jax.eval.distances import distance_matrix, feature_distance, l2_normalize

DIST_ATOL = 1e-5
STRIPES, LOCAL_DIM, GLOBAL_DIM = 6, 8, 16


# --- The re-production's test distances (aligned_reid/utils/distance.py), transcribed. ---------

def normalize(nparray, order=2, axis=0):
    """Normalize a N-D numpy array along the specified axis."""
    norm = np.linalg.norm(nparray, ord=order, axis=axis, keepdims=True)
    return nparray / (norm + np.finfo(np.float32).eps)


def compute_dist(array1, array2, type="euclidean"):
    """Euclidean distances of all pairs of rows, [m1, n] x [m2, n] -> [m1, m2]."""
    assert type == "euclidean"
    square1 = np.sum(np.square(array1), axis=1)[..., np.newaxis]
    square2 = np.sum(np.square(array2), axis=1)[np.newaxis, ...]
    squared_dist = - 2 * np.matmul(array1, array2.T) + square1 + square2
    squared_dist[squared_dist < 0] = 0
    dist = np.sqrt(squared_dist)
    return dist


def shortest_dist(dist_mat):
    """dist_mat [m, n, *] -> [*]: the shortest right / down path from (0, 0) to (m-1, n-1)."""
    m, n = dist_mat.shape[:2]
    dist = np.zeros_like(dist_mat)
    for i in range(m):
        for j in range(n):
            if (i == 0) and (j == 0):
                dist[i, j] = dist_mat[i, j]
            elif (i == 0) and (j > 0):
                dist[i, j] = dist[i, j - 1] + dist_mat[i, j]
            elif (i > 0) and (j == 0):
                dist[i, j] = dist[i - 1, j] + dist_mat[i, j]
            else:
                dist[i, j] = \
                    np.min(np.stack([dist[i - 1, j], dist[i, j - 1]], axis=0), axis=0) \
                    + dist_mat[i, j]
    dist = dist[-1, -1]
    return dist


def parallel_local_dist(x, y):
    """x [M, m, d], y [N, n, d] -> local distances [M, N]."""
    M, m, d = x.shape
    N, n, d = y.shape
    x = x.reshape([M * m, d])
    y = y.reshape([N * n, d])
    dist_mat = compute_dist(x, y, type="euclidean")
    dist_mat = (np.exp(dist_mat) - 1.) / (np.exp(dist_mat) + 1.)
    dist_mat = dist_mat.reshape([M, m, N, n]).transpose([1, 3, 0, 2])
    dist_mat = shortest_dist(dist_mat)
    return dist_mat


def reference_distance(x, y, metric, normalize_feat=False):
    """TestSet.eval's distances between feature dicts x and y ("euclidean": global only,
    "local", "global_local" = global_q_g_dist + local_q_g_dist), after TestSet.extract_feat's
    optional normalisation (global rows and each stripe)."""
    x_global, y_global = x["features"], y["features"]
    x_local, y_local = x.get("local_features"), y.get("local_features")
    if normalize_feat:
        x_global, y_global = normalize(x_global, axis=1), normalize(y_global, axis=1)
        if x_local is not None:
            x_local, y_local = normalize(x_local, axis=-1), normalize(y_local, axis=-1)
    if metric == "euclidean":
        return compute_dist(x_global, y_global, type="euclidean")
    local = parallel_local_dist(x_local, y_local)
    if metric == "local":
        return local
    assert metric == "global_local"
    return compute_dist(x_global, y_global, type="euclidean") + local


# --- Data ---------------------------------------------------------------------------------------

def local_case(seed, num_query, num_gallery, num_ids=10, grid=16):
    """Query / gallery streams whose images of one id share a global centre and per-stripe
    centres (different stripes of an image have different centres; a random third of the images
    has its stripes shifted down by one, so the shortest path leaves the diagonal). Values are
    rounded to a 1/grid grid: squared expansions are exact in float32. Gallery ids include 0
    (distractors); cameras 0..3."""
    rng = np.random.default_rng(seed)
    global_centres = 0.5 * rng.standard_normal((num_ids + 1, GLOBAL_DIM))
    stripe_centres = 0.5 * rng.standard_normal((num_ids + 1, STRIPES, LOCAL_DIM))
    streams = []
    for num, low in ((num_query, 1), (num_gallery, 0)):
        pids = rng.integers(low, num_ids + 1, num)
        shift = (rng.random(num) < 1 / 3).astype(int)
        stripe_index = np.minimum(np.arange(STRIPES)[None, :] + shift[:, None], STRIPES - 1)
        local = (stripe_centres[pids[:, None], stripe_index]
                 + 0.5 * rng.standard_normal((num, STRIPES, LOCAL_DIM)))
        glob = global_centres[pids] + 0.5 * rng.standard_normal((num, GLOBAL_DIM))
        streams.append({
            "features": (np.round(glob * grid) / grid).astype(np.float32),
            "local_features": (np.round(local * grid) / grid).astype(np.float32),
            "pids": pids, "camids": rng.integers(0, 4, num), "feat_norm": False})
    return streams


def features_only(stream):
    return {key: stream[key] for key in ("features", "local_features")}


@pytest.fixture(scope="module", autouse=True)
def small_local_block():
    """LOCAL_BLOCK 8 for this module, so blocking and padding run on small galleries. It is read
    when `feature_distance` is traced: jax's caches are dropped before and after, so no kernel
    traced with another block size is reused here, nor one of these elsewhere."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distances, "LOCAL_BLOCK", 8)
        jax.clear_caches()
        yield
    jax.clear_caches()


def top_level_scan_lengths(x, y, metric):
    """Lengths of the scans at the top level of feature_distance's jaxpr (lax.map's blocks)."""
    jaxpr = jax.make_jaxpr(lambda a, b: feature_distance(a, b, metric))(x, y)
    return [eqn.params["length"] for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]


def assert_rankings_cannot_flip(ours, expected, query, gallery):
    """Every (true match, valid non-match) pair of distances of a query differs by more than
    twice the largest |ours - expected|: the two matrices rank each query's matches at the same
    positions, so CMC / AP / INP agree. (Swaps of two matches, of two non-matches or of removed
    same-camera entries change no metric, and near ties among those occur in this data.)"""
    error = np.abs(ours.astype(np.float64) - expected).max()
    same_id = query["pids"][:, None] == gallery["pids"][None, :]
    same_cam = query["camids"][:, None] == gallery["camids"][None, :]
    match, non_match = same_id & ~same_cam, ~same_id
    gap = np.inf
    for row, is_match, is_non_match in zip(expected.astype(np.float64), match, non_match,
                                           strict=True):
        if is_match.any():
            gap = min(gap, np.abs(row[is_match][:, None] - row[is_non_match][None, :]).min())
    assert gap > 2 * error, (gap, error)
    return error, gap


# --- Tests --------------------------------------------------------------------------------------

def test_transcribed_shortest_dist_is_the_shortest_monotone_path():
    """The literal double loop against brute force over all C(m+n-2, m-1) right / down paths,
    for a batch of matrices at once (the [m, n, *] form parallel_local_dist uses)."""
    rng = np.random.default_rng(0)
    m, n = 4, 5
    dist_mat = rng.random((m, n, 3, 2))
    best = np.full((3, 2), np.inf)
    for downs in itertools.combinations(range(m + n - 2), m - 1):
        i = j = 0
        total = dist_mat[0, 0].copy()
        for step in range(m + n - 2):
            i, j = (i + 1, j) if step in downs else (i, j + 1)
            total += dist_mat[i, j]
        best = np.minimum(best, total)
    np.testing.assert_allclose(shortest_dist(dist_mat), best, rtol=1e-12)


@pytest.mark.parametrize("metric,num_gallery,chunks", [
    ("local", 45, (1, 7, 64)), ("global_local", 45, (7,)), ("local", 40, (5,)),
    ("global_local", 5, (12,))])
def test_distances_match_transcription(metric, num_gallery, chunks):
    """distance_matrix (the jitted feature_distance over query chunks: of 1, of 7 with a padded
    last chunk, 64 > 12 queries) against the transcribed TestSet distances. With
    LOCAL_BLOCK 8 (checked on feature_distance's jaxpr) a gallery of 45 is 6 blocks (3 padding
    rows), 40 is 5 whole blocks, 5 one block of 5 (as any gallery below the default 256)."""
    query, gallery = (features_only(s) for s in local_case(1, 12, num_gallery))
    expected = reference_distance(query, gallery, metric)
    assert top_level_scan_lengths(query, gallery, metric) == [-(-num_gallery // 8)]
    errors = []
    for chunk in chunks:
        ours = distance_matrix(query, gallery, metric, chunk)
        assert ours.shape == (12, num_gallery) and ours.dtype == np.float32
        errors.append(np.abs(ours - expected).max())
    assert max(errors) < DIST_ATOL, errors


def test_global_part_is_the_reference_euclidean_distance():
    query, gallery = (features_only(s) for s in local_case(2, 12, 45))
    expected = reference_distance(query, gallery, "euclidean")
    np.testing.assert_allclose(distance_matrix(query, gallery, "euclidean", 7), expected,
                               atol=DIST_ATOL, rtol=0)


@pytest.mark.parametrize("metric", ["local", "global_local"])
@pytest.mark.parametrize("feat_norm", [False, True])
def test_evaluate_features_matches_reference(metric, feat_norm):
    """CMC / mAP / mINP of evaluate_features against reference_eval_func on the transcription's
    distances (normalised as TestSet.extract_feat does when feat_norm). Our distances, computed
    by the kernel evaluate_features runs (chunk 16), are within DIST_ATOL of the reference, and
    no (match, non-match) pair is close enough for that difference to swap it."""
    query, gallery = local_case(3, 30, 90)
    config = get_config().eval
    config.distance, config.feat_norm, config.chunk_size, config.max_rank = (
        metric, feat_norm, 16, 20)
    results = reid_eval.evaluate_features(query, gallery, config)
    assert set(results) == {"original"}
    expected = reference_distance(query, gallery, metric, normalize_feat=feat_norm)
    ours = [features_only(s) for s in (query, gallery)]
    if feat_norm:  # as evaluate_features normalises
        ours = [{key: np.asarray(l2_normalize(value)) for key, value in f.items()} for f in ours]
    error, _ = assert_rankings_cannot_flip(distance_matrix(*ours, metric, 16), expected, query,
                                           gallery)
    assert error < DIST_ATOL
    original = results["original"]
    _, m_ap, _, all_ap, _, _ = assert_metrics_match(
        original, expected, query["pids"], gallery["pids"], query["camids"], gallery["camids"],
        20)
    np.testing.assert_allclose(original["all_AP"][~np.isnan(original["all_AP"])], all_ap,
                               atol=1e-12)
    assert 0.2 < m_ap < 0.98  # the ids' structure shows: rankings are neither random nor trivial


def reranking_reference(query, gallery, metric):
    """reference_re_ranking fed TestSet.eval's three distance blocks."""
    return reference_re_ranking(reference_distance(query, gallery, metric),
                                reference_distance(query, query, metric),
                                reference_distance(gallery, gallery, metric))


@pytest.mark.parametrize("metric", ["local", "global_local"])
def test_re_ranking_features_matches_reference(metric):
    """re_ranking_features on feature dicts (chunk 16: 7 blocks over 100 images; LOCAL_BLOCK 8
    splits each block's and each gathered row's local distances) against the dense reference on
    the transcription's q_g, q_q, g_g distances, then the metrics of both rankings."""
    query, gallery = local_case(4, 20, 80)
    expected = reranking_reference(query, gallery, metric)
    ours = reid_eval.re_ranking_features(features_only(query), features_only(gallery),
                                         chunk_size=16, metric=metric)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    ids = (query["pids"], gallery["pids"], query["camids"], gallery["camids"])
    assert_metrics_match(reid_eval.evaluate_rankings(ours, *ids), expected, *ids)


def test_evaluate_features_with_rerank_and_local_distance():
    """evaluate_features' re-ranked metrics with the local distance against reference_eval_func
    on the dense reference's re-ranking (the data and chunk size of the test above, so its
    kernels are reused)."""
    query, gallery = local_case(4, 20, 80)
    config = get_config().eval
    config.distance, config.feat_norm, config.rerank, config.chunk_size = (
        "local", False, True, 16)
    results = reid_eval.evaluate_features(query, gallery, config)
    expected = reranking_reference(query, gallery, "local")
    assert_metrics_match(results["re_ranked"], expected, query["pids"], gallery["pids"],
                         query["camids"], gallery["camids"])


@pytest.mark.parametrize("metric", ["local", "global_local"])
@pytest.mark.parametrize("missing", ["query", "gallery"])
def test_local_distance_without_local_features_is_an_error(metric, missing):
    query, gallery = local_case(6, 4, 10)
    (query if missing == "query" else gallery).pop("local_features")
    config = get_config().eval
    config.distance = metric
    with pytest.raises(ValueError, match=f"config.eval.distance='{metric}'"):
        reid_eval.evaluate_features(query, gallery, config)
