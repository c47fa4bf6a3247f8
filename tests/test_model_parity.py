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
    images = tr.random_images(2, size, seed=1)

    expected = {}
    with torch.no_grad():
        for neck_feat in ("after", "before"):
            reference.neck_feat = neck_feat
            expected[neck_feat] = reference(images).numpy()

    @jax.jit
    def features(variables, images):
        return {neck_feat: model.clone(neck_feat=neck_feat).apply(variables, images, train=False)
                for neck_feat in ("after", "before")}

    with jax.default_matmul_precision("highest"):
        got = features(variables, tr.to_nhwc(images))
    for neck_feat in ("after", "before"):
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
