"""Forward parity of reid_jax's Baseline with the PyTorch BoT reference (tests/torch_reference.py).

Weights go the way a user's would: random torch model -> torch.save (BoT key layout) -> our
reader and mapping -> Flax. Images are NCHW for torch, NHWC for ours.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402

from reid_jax import torch_weights  # noqa: E402
from reid_jax.models import Baseline, init_variables  # noqa: E402

pytestmark = pytest.mark.torch

NUM_CLASSES = 11


def _convert(reference: tr.Baseline, model: Baseline, tmp_path, image_size) -> dict:
    path = tmp_path / "bot.pth"
    torch.save(reference.state_dict(), path)
    target = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size))
    return torch_weights.load_torch_weights(path, target)


@pytest.mark.parametrize("depth,last_stride,stem_relu,neck", [
    (18, 1, False, "bnneck"),
    (18, 2, True, "no"),
    pytest.param(50, 1, False, "bnneck", marks=pytest.mark.slow),
    pytest.param(50, 1, True, "bnneck", marks=pytest.mark.slow),
])
def test_eval_features_match_torch(tmp_path, depth, last_stride, stem_relu, neck):
    size = (256, 128)
    arch = dict(depth=depth, last_stride=last_stride, stem_relu=stem_relu, neck=neck)
    reference = tr.randomize_(tr.Baseline(NUM_CLASSES, **arch), seed=depth, image_size=size)
    model = Baseline(NUM_CLASSES, **arch)
    variables = _convert(reference, model, tmp_path, size)
    expected, got = tr.eval_features_both_necks(reference, model, variables,
                                                tr.random_images(2, size, seed=1))
    for neck_feat in tr.NECK_FEATS:
        assert got[neck_feat].shape == (2, 512 * (4 if depth >= 50 else 1))
        np.testing.assert_allclose(got[neck_feat], expected[neck_feat], atol=1e-4, rtol=0,
                                   err_msg=neck_feat)


@pytest.mark.parametrize("neck", ["bnneck", "no"])
def test_train_forward_and_running_stats_match_torch(tmp_path, neck):
    """One train-mode forward: logits, global feature and every BatchNorm's updated running mean
    and (unbiased) running variance, against torch's buffers."""
    size = (64, 32)
    arch = dict(depth=18, last_stride=1, stem_relu=False, neck=neck)
    reference = tr.randomize_(tr.Baseline(NUM_CLASSES, **arch), seed=5, image_size=size)
    model = Baseline(NUM_CLASSES, **arch)
    variables = _convert(reference, model, tmp_path, size)
    images = tr.random_images(4, size, seed=2)

    reference.train()
    with torch.no_grad():
        logits, global_feat = reference(images)
    updated = {k: v.numpy() for k, v in reference.state_dict().items()}
    expected_stats = torch_weights.torch_to_flax(updated, variables)["batch_stats"]

    with jax.default_matmul_precision("highest"):
        (got_logits, got_feat), state = jax.jit(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
                variables, tr.to_nhwc(images))
    np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_feat, global_feat.numpy(), atol=1e-4, rtol=0)

    got_stats = jax.tree_util.tree_flatten_with_path(state["batch_stats"])[0]
    want_stats = jax.tree.leaves(expected_stats)
    assert len(got_stats) == len(want_stats) == (2 * 21 if neck == "bnneck" else 2 * 20)
    for (path, got), want in zip(got_stats, want_stats, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
    # The update really moved them: the starting statistics are far from the updated ones.
    before = jax.tree.leaves(variables["batch_stats"])
    assert max(np.abs(b - w).max() for b, w in zip(before, want_stats, strict=True)) > 1e-2


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_bfloat16_batchnorm_rounds_only_its_output(train):
    """BN on bfloat16 activations with |mean| / std ~ 3 (post-ReLU maps look like this): the
    result equals PyTorch's float64 BatchNorm of the same bfloat16 values, rounded once to
    bfloat16 (<= 1/2 ulp + float32 noise); the folded x * m + (b - mean * m) in bfloat16 misses
    that by several ulps."""
    from reid_jax.models import BatchNorm

    rng = np.random.default_rng(0)
    channels = 16
    x = (3.0 + rng.normal(size=(8, 6, 5, channels))).astype(jax.numpy.bfloat16)
    scale = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    bias = rng.normal(scale=0.2, size=channels).astype(np.float32)
    stats = {"mean": (3.0 + rng.normal(scale=0.1, size=channels)).astype(np.float32),
             "var": rng.uniform(0.7, 1.4, channels).astype(np.float32)}
    norm = BatchNorm(dtype=jax.numpy.bfloat16)
    variables = {"params": {"scale": scale, "bias": bias}, "batch_stats": stats}
    got = norm.apply(variables, x, train=train, mutable=["batch_stats"])[0]

    reference = torch.nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(scale))
        reference.bias.copy_(torch.tensor(bias))
        reference.running_mean.copy_(torch.tensor(stats["mean"]))
        reference.running_var.copy_(torch.tensor(stats["var"]))
        reference.train(train)
        exact = reference(torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2))
    exact = exact.permute(0, 2, 3, 1).numpy()
    # bfloat16 keeps 8 significant bits: its ulp at |y| in [2^e, 2^(e+1)) is 2^(e-7).
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(exact), 2.0 ** -120))) - 7)
    error = np.abs(np.asarray(got, np.float64) - exact)
    assert np.all(error <= 0.5 * ulp + 1e-6), float(np.max(error / ulp))
