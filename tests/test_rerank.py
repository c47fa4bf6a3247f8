"""k-reciprocal re-ranking against a dense numpy transcription of BoT's `re_ranking`."""

import numpy as np
import pytest
from numpy_eval import assert_metrics_match

from configs.market import get_config
from reid_jax import eval as reid_eval
from reid_jax.eval.neighbours import nearest_neighbours


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """BoT's utils/re_ranking.py (Zhong et al.'s code), REFERENCE section 5 steps 1-6, transcribed
    with its dense N x N arrays. Changes: inputs given as distance blocks (as Zhong's original),
    float32 where BoT stores V / jaccard in float16, and a stable argsort."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1),
         np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0).astype(np.float32)
    query_num = q_g_dist.shape[0]
    all_num = gallery_num = original_dist.shape[0]
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)

    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate,
                                                           :int(np.around(k1 / 2)) + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index,
                                                            :int(np.around(k1 / 2)) + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2 / 3 * len(
                    candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,
                                                         candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del initial_rank
    invIndex = []
    for i in range(gallery_num):
        invIndex.append(np.where(V[:, i] != 0)[0])

    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)

    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def clustered_features(seed, num_query=30, num_gallery=150, num_ids=12, dim=16, noise=0.6):
    """Unit features around id centroids (so k-reciprocal sets are large and expansions happen),
    with ids and cameras."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((num_ids, dim))
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q = centroids[q_pids] + noise * rng.standard_normal((num_query, dim))
    g = centroids[g_pids] + noise * rng.standard_normal((num_gallery, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cams = rng.integers(0, 4, num_query), rng.integers(0, 4, num_gallery)
    return q.astype(np.float32), g.astype(np.float32), q_pids, g_pids, cams


def squared_distances(x, y):
    """float64 squared Euclidean, rounded once to float32 (exactly symmetric for x is y)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    return np.sum((x[:, None] - y[None]) ** 2, axis=2).astype(np.float32)


def dense_case(seed):
    q, g, *_ = clustered_features(seed)
    return squared_distances(q, g), squared_distances(q, q), squared_distances(g, g)


def test_re_ranking_matches_reference_and_chunking_does_not_matter():
    q_g, q_q, g_g = dense_case(0)
    expected = reference_re_ranking(q_g, q_q, g_g)
    chunked = reid_eval.re_ranking(q_g, q_q, g_g, chunk_size=16)
    np.testing.assert_allclose(chunked, expected, atol=1e-4, rtol=0)
    whole = reid_eval.re_ranking(q_g, q_q, g_g, chunk_size=1000)
    np.testing.assert_allclose(whole, chunked, atol=1e-6, rtol=0)  # float sums may reorder


def test_re_ranking_without_query_expansion_matches_reference():
    q_g, q_q, g_g = dense_case(1)
    expected = reference_re_ranking(q_g, q_q, g_g, k1=6, k2=1, lambda_value=0.5)
    ours = reid_eval.re_ranking(q_g, q_q, g_g, k1=6, k2=1, lambda_value=0.5, chunk_size=16)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_re_ranking_uses_columns_of_asymmetric_input_and_does_not_square():
    rng = np.random.default_rng(3)
    q_g = rng.random((30, 150)).astype(np.float32)
    q_q, g_g = rng.random((30, 30)).astype(np.float32), rng.random((150, 150)).astype(np.float32)
    expected = reference_re_ranking(q_g, q_q, g_g)
    ours = reid_eval.re_ranking(q_g, q_q, g_g, chunk_size=16)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_re_ranking_sums_a_chunk_over_several_triple_blocks(monkeypatch):
    # The jaccard overlaps of a gallery chunk summed over blocks of 64 (query, gallery, column)
    # triples, where a chunk of 16 gallery rows here has thousands.
    from reid_jax.eval import rerank

    monkeypatch.setattr(rerank, "TRIPLE_BLOCK", 64)
    calls = []
    min_overlap = rerank._min_overlap
    monkeypatch.setattr(rerank, "_min_overlap",
                        lambda *args, **kwargs: calls.append(1) or min_overlap(*args, **kwargs))
    q_g, q_q, g_g = dense_case(5)
    ours = reid_eval.re_ranking(q_g, q_q, g_g, chunk_size=16)
    assert len(calls) > 10 * len(range(0, 150, 16))
    np.testing.assert_allclose(ours, reference_re_ranking(q_g, q_q, g_g), atol=1e-4, rtol=0)


def test_re_ranking_features_matches_reference_and_metrics_agree():
    q, g, q_pids, g_pids, (q_cams, g_cams) = clustered_features(4)
    expected = reference_re_ranking(squared_distances(q, g), squared_distances(q, q),
                                    squared_distances(g, g))
    ours = reid_eval.re_ranking_features(q, g, chunk_size=16)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    ids = (q_pids, g_pids, q_cams, g_cams)
    assert_metrics_match(reid_eval.evaluate_rankings(ours, *ids), expected, *ids)


def test_evaluate_features_with_rerank_matches_reference():
    q, g, q_pids, g_pids, (q_cams, g_cams) = clustered_features(5)
    config = get_config().eval
    config.rerank, config.chunk_size = True, 16
    results = reid_eval.evaluate_features(
        {"features": 3 * q, "pids": q_pids, "camids": q_cams, "feat_norm": False},
        {"features": 3 * g, "pids": g_pids, "camids": g_cams, "feat_norm": False}, config)
    expected = reference_re_ranking(squared_distances(q, g), squared_distances(q, q),
                                    squared_distances(g, g))
    assert_metrics_match(results["re_ranked"], expected, q_pids, g_pids, q_cams, g_cams)


@pytest.mark.parametrize("symmetric", [False, True])
def test_blockwise_neighbours_match_stable_argsort_with_ties(symmetric):
    rng = np.random.default_rng(6)
    matrix = rng.integers(1, 6, (45, 45)).astype(np.float32)  # few values: many ties
    if symmetric:
        matrix = np.minimum(matrix, matrix.T)
    np.fill_diagonal(matrix, 0)
    row_max, ranks, corner = nearest_neighbours(
        lambda r, c, size: matrix[r:r + size, c:c + size], symmetric, 10, 45, 9, chunk_size=8)
    normalised = matrix / matrix.max(axis=1, keepdims=True)
    np.testing.assert_array_equal(ranks, np.argsort(normalised, axis=1, kind="stable")[:, :9])
    np.testing.assert_array_equal(row_max, matrix.max(axis=1))
    np.testing.assert_array_equal(corner, matrix[:10, 10:])
