"""PK sampler: batch structure over whole epochs, the batches-per-epoch distribution against a
plain-python transcription of BoT's RandomIdentitySampler, resume and host slicing."""

import copy
import json
import random
from collections import defaultdict

import numpy as np
import pytest

from data_pipelines.sampler import PKSampler

P, K = 16, 4


def market_like_pids(seed: int = 0) -> np.ndarray:
    """751 ids and 12,936 images (Market-1501's train totals), 2..72 images per id."""
    rng = np.random.default_rng(seed)
    counts = np.clip(np.round(rng.lognormal(np.log(14), 0.6, 751)), 2, 72).astype(int)
    while counts.sum() != 12936:
        i = rng.integers(751)
        step = 1 if counts.sum() < 12936 else -1
        if 2 <= counts[i] + step <= 72:
            counts[i] += step
    return np.repeat(np.arange(751), counts)


def reference_epoch_length(pids: np.ndarray, seed: int) -> int:
    """BoT's RandomIdentitySampler.__iter__ (data/samplers/triplet_sampler.py), transcribed; it
    returns the number of P*K batches the DataLoader cuts from its index list."""
    py_random, np_random = random.Random(seed), np.random.RandomState(seed)
    index_dic = defaultdict(list)
    for index, pid in enumerate(pids.tolist()):
        index_dic[pid].append(index)
    batch_idxs_dict = defaultdict(list)
    for pid in index_dic:
        idxs = copy.deepcopy(index_dic[pid])
        if len(idxs) < K:
            idxs = list(np_random.choice(idxs, size=K, replace=True))
        py_random.shuffle(idxs)
        batch_idxs = []
        for idx in idxs:
            batch_idxs.append(idx)
            if len(batch_idxs) == K:
                batch_idxs_dict[pid].append(batch_idxs)
                batch_idxs = []
    avai_pids = list(index_dic)
    final_idxs = []
    while len(avai_pids) >= P:
        for pid in py_random.sample(avai_pids, P):
            final_idxs.extend(batch_idxs_dict[pid].pop(0))
            if len(batch_idxs_dict[pid]) == 0:
                avai_pids.remove(pid)
    assert len(final_idxs) % (P * K) == 0
    return len(final_idxs) // (P * K)


def test_every_batch_is_p_ids_by_k_images_and_small_ids_repeat():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(40), rng.integers(1, 12, 40))  # ids with 1..11 images
    rng.shuffle(pids)
    sampler = PKSampler(pids, 8, 4, seed=3)
    for epoch in (1, 2, 3):
        batches = sampler.epoch_batches(epoch)
        assert batches.shape[1] == 32 and len(batches) > 0
        used = defaultdict(list)
        for batch in batches:
            ids = pids[batch].reshape(8, 4)
            assert (ids == ids[:, :1]).all()  # K images of one id, adjacent
            assert len(set(ids[:, 0].tolist())) == 8  # P distinct ids
            for chunk in batch.reshape(8, 4):
                used[int(pids[chunk[0]])].append(chunk)
        for pid, chunks in used.items():
            count = int((pids == pid).sum())
            images = np.concatenate(chunks)
            assert len(chunks) <= max(count, 4) // 4
            if count >= 4:  # shuffled without replacement within the epoch
                assert len(set(images.tolist())) == len(images)
            else:  # K draws with replacement from its few images
                assert len(images) == 4 and set(images.tolist()) <= set(np.flatnonzero(pids == pid))


def test_batches_per_epoch_match_the_reference_in_distribution():
    pids = market_like_pids()
    ours = np.array([len(PKSampler(pids, P, K, seed=s).epoch_batches(1)) for s in range(40)])
    reference = np.array([reference_epoch_length(pids, seed=s) for s in range(40)])
    assert 180 <= ours.mean() <= 190 and 180 <= reference.mean() <= 190
    spread = np.sqrt(ours.var() / len(ours) + reference.var() / len(reference))
    assert abs(ours.mean() - reference.mean()) <= 4 * spread + 0.25
    assert abs(ours.std() - reference.std()) <= 1.0
    assert ours.min() >= reference.min() - 2 and ours.max() <= reference.max() + 2


def test_epochs_differ_and_are_seeded():
    pids = market_like_pids()
    a, b = PKSampler(pids, P, K, seed=0), PKSampler(pids, P, K, seed=0)
    assert np.array_equal(a.epoch_batches(5), b.epoch_batches(5))
    assert not np.array_equal(a.epoch_batches(1)[:5], a.epoch_batches(2)[:5])
    assert not np.array_equal(a.epoch_batches(1)[:5],
                              PKSampler(pids, P, K, seed=1).epoch_batches(1)[:5])


def test_resume_mid_epoch_continues_identically():
    pids = np.repeat(np.arange(12), 6)  # 18 chunks / 4 ids per batch: a few batches per epoch
    sampler = PKSampler(pids, 4, 3, seed=7)
    for _ in range(9):
        next(sampler)
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = [next(sampler) for _ in range(20)]
    assert len({item.epoch for item in expected}) > 1  # crosses epoch boundaries
    resumed = PKSampler(pids, 4, 3, seed=7)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (next(resumed) for _ in range(20)), strict=True):
        assert (want.epoch, want.step, want.steps_in_epoch) == (got.epoch, got.step,
                                                               got.steps_in_epoch)
        assert np.array_equal(want.indices, got.indices)


def test_state_after_and_epoch_bookkeeping():
    pids = np.repeat(np.arange(10), 4)
    sampler = PKSampler(pids, 5, 4, seed=0)  # 10 chunks -> exactly 2 batches per epoch
    items = [next(sampler) for _ in range(5)]
    assert [(i.epoch, i.step, i.steps_in_epoch) for i in items] == [
        (1, 0, 2), (1, 1, 2), (2, 0, 2), (2, 1, 2), (3, 0, 2)]
    assert sampler.state_after(items[1]) == {"seed": 0, "epoch": 2, "step": 0}
    assert sampler.state_after(items[2]) == {"seed": 0, "epoch": 2, "step": 1}
    with pytest.raises(ValueError, match="seed 0"):
        PKSampler(pids, 5, 4, seed=1).load_state_dict(sampler.state_dict())


def test_hosts_get_contiguous_slices_of_the_global_batch():
    pids = market_like_pids()
    whole = PKSampler(pids, P, K, seed=2)
    hosts = [PKSampler(pids, P, K, seed=2, host_index=h, host_count=4) for h in range(4)]
    for _ in range(3):
        global_batch = next(whole).indices
        assert np.array_equal(np.concatenate([next(h).indices for h in hosts]), global_batch)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="only 3 ids"):
        PKSampler(np.arange(3), 4, 2, seed=0)
    with pytest.raises(ValueError, match="host 0 of 3"):
        PKSampler(np.arange(10), 4, 2, seed=0, host_count=3)
