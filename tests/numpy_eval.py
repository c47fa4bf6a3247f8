"""Plain-numpy transcription of the reference evaluation protocol, shared by the tests."""

import numpy as np


def reference_eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """BoT's `eval_func` (utils/reid_metric.py) with AGW's mINP, transcribed; argsort made stable.

    Returns (cmc [max_rank] float32, mAP, mINP, AP per valid query, first match index per valid
    query, number of valid queries).
    """
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp, first_match = [], [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        cmc = orig_cmc.cumsum()
        pos_idx = np.where(orig_cmc == 1)
        pos_max_idx = np.max(pos_idx)
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        first_match.append(int(np.argmax(orig_cmc)))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = orig_cmc.sum()
        tmp_cmc = orig_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * orig_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    assert num_valid_q > 0, "Error: all query identities do not appear in gallery"
    all_cmc = np.asarray(all_cmc).astype(np.float32)
    all_cmc = all_cmc.sum(0) / num_valid_q
    return (all_cmc, np.mean(all_ap), np.mean(all_inp), np.asarray(all_ap),
            np.asarray(first_match), int(num_valid_q))


def assert_metrics_match(metrics: dict, distmat, q_pids, g_pids, q_camids, g_camids,
                         max_rank: int = 50) -> tuple:
    """Asserts that reid_jax `metrics` (an `evaluate_rankings` result, or the "original" /
    "re_ranked" entry of `evaluate_features`) equal `reference_eval_func` on `distmat`: CMC,
    mAP and mINP to 1e-6 absolute, and the number of valid queries where `metrics` has it.
    Returns reference_eval_func's outputs."""
    reference = reference_eval_func(np.asarray(distmat), q_pids, g_pids, q_camids, g_camids,
                                    max_rank)
    cmc, m_ap, m_inp, _, _, num_valid = reference
    np.testing.assert_allclose(metrics["cmc"], cmc, atol=1e-6, rtol=0, err_msg="cmc")
    np.testing.assert_allclose(metrics["mAP"], m_ap, atol=1e-6, rtol=0, err_msg="mAP")
    np.testing.assert_allclose(metrics["mINP"], m_inp, atol=1e-6, rtol=0, err_msg="mINP")
    if "num_valid_queries" in metrics:
        assert metrics["num_valid_queries"] == num_valid
    return reference
