"""The BoT losses against PyTorch transcriptions of reid-strong-baseline's loss code.

The torch side is tests/torch_losses.py (the `ref` fixture), the original modules line by line:
CrossEntropyLabelSmooth, euclidean_dist, hard_example_mining (torch.max / torch.min over dim on the
masked view), TripletLoss (nn.MarginRankingLoss / nn.SoftMarginLoss) and CenterLoss.
Values and gradients (features, logits, centers) are compared; every JAX side runs under jit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.market import get_config
from reid_jax import losses

RTOL = 1e-5


# ------------------------------------------------------------------ PyTorch reference ----

@pytest.fixture(scope="module")
def ref(torch):
    """tests/torch_losses.py: the BoT loss code transcribed to PyTorch (needs torch)."""
    import torch_losses
    return torch_losses


def torch_value_and_grads(torch, fn, *arrays):
    """fn(*tensors) -> scalar or tuple led by the scalar; returns (outputs as numpy, gradients of
    the scalar w.r.t. every input, zeros for an input it does not use)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out = out if isinstance(out, tuple) else (out,)
    out[0].backward()
    grads = [np.zeros_like(a) if t.grad is None else t.grad.numpy()
             for a, t in zip(arrays, tensors, strict=True)]
    return [o.detach().numpy() for o in out], grads


# ------------------------------------------------------------------------------- helpers ----

def pk_labels(rng: np.random.Generator, p: int, k: int) -> np.ndarray:
    """A shuffled PK batch of labels [P * K] int64: P random ids out of 751, K samples each."""
    ids = rng.choice(751, size=p, replace=False)
    return rng.permutation(np.repeat(ids, k))


def assert_close(actual, expected, rtol: float = RTOL) -> None:
    """Relative to each entry, with an absolute floor at rtol * the largest |expected|."""
    expected = np.asarray(expected)
    atol = rtol * float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


def jax_triplet(margin):
    def fn(feats, labels):
        loss, dist_ap, dist_an = losses.triplet_loss(feats, labels, margin)
        return loss, (dist_ap, dist_an)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))


# --------------------------------------------------------------------------------- tests ----

@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_cross_entropy_label_smooth_matches_torch(torch, ref, epsilon):
    rng = np.random.default_rng(0)
    num_classes = 751
    logits = (3.0 * rng.standard_normal((64, num_classes))).astype(np.float32)
    labels = pk_labels(rng, 16, 4)
    (expected,), (expected_grad,) = torch_value_and_grads(
        torch, lambda x: ref.cross_entropy_label_smooth(
            x, torch.tensor(labels), num_classes, epsilon), logits)

    fn = jax.jit(jax.value_and_grad(losses.cross_entropy_label_smooth), static_argnums=2)
    value, grad = fn(jnp.asarray(logits), jnp.asarray(labels, jnp.int32), epsilon)
    assert_close(value, expected)
    assert_close(grad, expected_grad)


def test_cross_entropy_without_smoothing_is_plain_cross_entropy(torch):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((32, 100)).astype(np.float32)
    labels = rng.integers(0, 100, 32)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    value = losses.cross_entropy_label_smooth(jnp.asarray(logits), jnp.asarray(labels), 0.0)
    assert_close(value, expected.numpy())


def test_pairwise_distance_matches_torch(torch, ref):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 64)).astype(np.float32)
    y = np.concatenate([x[:3], rng.standard_normal((5, 64)).astype(np.float32)])
    expected = ref.euclidean_dist(torch.tensor(x), torch.tensor(y)).numpy()
    actual = jax.jit(losses.pairwise_distance)(jnp.asarray(x), jnp.asarray(y))
    assert actual.shape == (12, 8)
    # Self-distances are sqrt(rounding noise), so only the others are compared relatively.
    is_self = np.zeros((12, 8), bool)
    is_self[np.arange(3), np.arange(3)] = True
    assert_close(np.asarray(actual)[~is_self], expected[~is_self])
    assert np.all(np.asarray(actual)[is_self] < 1e-2)


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("p,k,dim", [(4, 4, 32), (8, 4, 2048), (6, 3, 256)])
def test_triplet_loss_matches_torch(torch, ref, margin, p, k, dim):
    rng = np.random.default_rng(p * dim)
    labels = pk_labels(rng, p, k)
    feats = rng.standard_normal((p * k, dim)).astype(np.float32)
    (expected, exp_ap, exp_an), (expected_grad,) = torch_value_and_grads(
        torch, lambda f: ref.triplet_loss(f, torch.tensor(labels), margin), feats)

    (value, (dist_ap, dist_an)), grad = jax_triplet(margin)(
        jnp.asarray(feats), jnp.asarray(labels, jnp.int32))
    assert_close(value, expected)
    assert_close(dist_ap, exp_ap)
    assert_close(dist_an, exp_an)
    assert_close(grad, expected_grad)
    if margin is not None:  # The hinge must be active for some anchors and not for all.
        active = exp_ap - exp_an + margin > 0
        assert active.any()


def tied_batch(rng: np.random.Generator, p: int, dim: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """P ids x K=4 samples laid out per id as (u, v, u, v): every anchor's hardest positive and
    hardest negative are tied between two identical rows. Integer-valued features keep every
    dot product, hence every distance, exact in both frameworks, so the ties are real."""
    ids = rng.choice(751, size=p, replace=False)
    labels = np.repeat(ids, 4)
    vectors = rng.integers(-3, 4, size=(p, 2, dim)).astype(dtype)
    feats = vectors[:, [0, 1, 0, 1]].reshape(p * 4, dim)
    return feats, labels


def mined_ties(dist: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, N] bool masks of the columns holding each row's max over positives / min over
    negatives."""
    same = labels[:, None] == labels[None, :]
    pos = np.where(same, dist, -np.inf)
    neg = np.where(same, np.inf, dist)
    return pos == pos.max(1, keepdims=True), neg == neg.min(1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_ties_send_gradient_to_the_first_occurrence_as_torch(torch, ref, margin, dtype):
    rng = np.random.default_rng(3)
    p, dim = 8, 32
    feats, labels = tied_batch(rng, p, dim, dtype)

    # The ties are real, the same in both frameworks: every row's max over positives and min over
    # negatives sit at >= 2 columns (sqrt may differ by an ulp across frameworks, not within one).
    torch_ties = mined_ties(
        ref.euclidean_dist(torch.tensor(feats), torch.tensor(feats)).numpy(), labels)
    assert np.all(torch_ties[0].sum(1) >= 2) and np.all(torch_ties[1].sum(1) >= 2)

    (expected, exp_ap, exp_an), (expected_grad,) = torch_value_and_grads(
        torch, lambda f: ref.triplet_loss(f, torch.tensor(labels), margin), feats)
    # Where the gradient goes on a tie matters: the duplicated rows get different gradients.
    assert not np.allclose(expected_grad[0::4], expected_grad[2::4])

    with jax.enable_x64(dtype == np.float64):
        jax_dist = np.asarray(losses.pairwise_distance(jnp.asarray(feats), jnp.asarray(feats)))
        for jax_tie, torch_tie in zip(mined_ties(jax_dist, labels), torch_ties, strict=True):
            np.testing.assert_array_equal(jax_tie, torch_tie)
        (value, (dist_ap, dist_an)), grad = jax_triplet(margin)(
            jnp.asarray(feats), jnp.asarray(labels, jnp.int32))
    assert grad.dtype == dtype
    assert_close(value, expected)
    assert_close(dist_ap, exp_ap)
    assert_close(dist_an, exp_an)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("p,k,dim,num_classes", [(16, 4, 2048, 751), (4, 4, 32, 10)])
def test_center_loss_matches_torch(torch, ref, p, k, dim, num_classes):
    rng = np.random.default_rng(dim)
    labels = rng.permutation(np.repeat(rng.choice(num_classes, p, replace=False), k))
    feats = rng.standard_normal((p * k, dim)).astype(np.float32)
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32)
    (expected,), (exp_feat_grad, exp_center_grad) = torch_value_and_grads(
        torch, lambda f, c: ref.center_loss(f, torch.tensor(labels), c), feats, centers)

    fn = jax.jit(jax.value_and_grad(losses.center_loss, argnums=(0, 2)))
    value, (feat_grad, center_grad) = fn(jnp.asarray(feats), jnp.asarray(labels, jnp.int32),
                                         jnp.asarray(centers))
    assert_close(value, expected)
    assert_close(feat_grad, exp_feat_grad)
    assert_close(center_grad, exp_center_grad)
    assert np.count_nonzero(np.abs(exp_center_grad).sum(1)) == p  # Only the batch's ids move.


def test_center_loss_at_the_centers_is_the_clamp_floor(torch, ref):
    """Features exactly at their centers: every entry of BoT's masked distmat clamps to 1e-12
    (loss C * 1e-12) and the clamp passes no gradient. Integer values keep the zeros exact."""
    rng = np.random.default_rng(4)
    num_classes = 20
    centers = rng.integers(-3, 4, size=(num_classes, 16)).astype(np.float32)
    labels = pk_labels(rng, 4, 4) % num_classes
    feats = centers[labels]
    (expected,), (exp_feat_grad, exp_center_grad) = torch_value_and_grads(
        torch, lambda f, c: ref.center_loss(f, torch.tensor(labels), c), feats, centers)
    value, (feat_grad, center_grad) = jax.value_and_grad(losses.center_loss, argnums=(0, 2))(
        jnp.asarray(feats), jnp.asarray(labels, jnp.int32), jnp.asarray(centers))
    assert_close(value, expected)
    assert expected == pytest.approx(num_classes * 1e-12, rel=1e-5)
    np.testing.assert_array_equal(feat_grad, exp_feat_grad)
    np.testing.assert_array_equal(center_grad, exp_center_grad)


def bot_config(**overrides):
    config = get_config()
    for key, value in overrides.items():
        config.loss[key] = value
    return config.loss


@pytest.mark.parametrize("overrides", [
    {},  # BoT: margin 0.3, smoothing 0.1, center 0.0005
    {"triplet_margin": None, "label_smoothing": 0.0, "center_weight": 0.0},
    {"id_weight": 0.5, "triplet_weight": 2.0, "center_weight": 0.01},
])
def test_bot_loss_is_the_weighted_sum_of_the_torch_parts(torch, ref, overrides):
    loss_config = bot_config(**overrides)
    rng = np.random.default_rng(5)
    p, k, dim, num_classes = 8, 4, 128, 751
    labels = pk_labels(rng, p, k)
    logits = rng.standard_normal((p * k, num_classes)).astype(np.float32)
    logits[np.arange(0, p * k, 3), labels[::3]] += 10.0  # Some right answers.
    feats = rng.standard_normal((p * k, dim)).astype(np.float32)
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32)
    t_labels = torch.tensor(labels)

    def torch_total(lg, f, c):
        id_loss = ref.cross_entropy_label_smooth(lg, t_labels, num_classes,
                                                   loss_config.label_smoothing)
        tri, dist_ap, dist_an = ref.triplet_loss(f, t_labels, loss_config.triplet_margin)
        cen = ref.center_loss(f, t_labels, c)
        total = loss_config.id_weight * id_loss + loss_config.triplet_weight * tri
        if loss_config.center_weight > 0:
            total = total + loss_config.center_weight * cen
        return total, id_loss, tri, cen, dist_ap.mean(), dist_an.mean()

    (total, id_loss, tri, cen, dist_ap, dist_an), expected_grads = torch_value_and_grads(
        torch, torch_total, logits, feats, centers)

    fn = jax.jit(jax.value_and_grad(
        lambda lg, f, c: losses.bot_loss(lg, f, jnp.asarray(labels, jnp.int32), c, loss_config),
        argnums=(0, 1, 2), has_aux=True))
    (value, metrics), grads = fn(jnp.asarray(logits), jnp.asarray(feats), jnp.asarray(centers))

    assert_close(value, total)
    assert_close(metrics["loss"], total)
    assert_close(metrics["id_loss"], id_loss)
    assert_close(metrics["triplet_loss"], tri)
    assert_close(metrics["center_loss"], cen if loss_config.center_weight > 0 else 0.0)
    assert_close(metrics["dist_ap"], dist_ap)
    assert_close(metrics["dist_an"], dist_an)
    assert metrics["id_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert 0 < metrics["id_accuracy"] < 1
    for grad, expected in zip(grads, expected_grads, strict=True):
        assert_close(grad, expected)


@pytest.mark.parametrize("key,value", [
    ("label_smoothing", 1.0), ("label_smoothing", -0.1), ("triplet_margin", -0.3),
    ("center_weight", -1.0), ("id_weight", float("nan"))])
def test_bot_loss_rejects_out_of_range_config(key, value):
    loss_config = bot_config(**{key: value})
    labels = jnp.zeros((4,), jnp.int32).at[2:].set(1)
    with pytest.raises(ValueError, match=f"config.loss.{key}="):
        losses.bot_loss(jnp.zeros((4, 3)), jnp.ones((4, 8)), labels, jnp.zeros((3, 8)),
                        loss_config)


def test_bot_loss_rejects_centers_of_the_wrong_shape():
    labels = jnp.zeros((4,), jnp.int32).at[2:].set(1)
    with pytest.raises(ValueError, match="centers"):
        losses.bot_loss(jnp.zeros((4, 3)), jnp.ones((4, 8)), labels, jnp.zeros((3, 16)),
                        bot_config())


def test_clamp_matches_torch_clamp_value_and_gradient_at_the_bounds(torch):
    x = np.array([-1.0, 0.0, 0.5, 2.0, 3.0], np.float32)
    (expected,), (expected_grad,) = torch_value_and_grads(
        torch, lambda t: (t.clamp(min=0.0, max=2.0) * torch.arange(1.0, 6.0)).sum(), x)
    value, grad = jax.value_and_grad(
        lambda v: jnp.sum(losses.clamp(v, 0.0, 2.0) * jnp.arange(1.0, 6.0)))(jnp.asarray(x))
    assert value == pytest.approx(float(expected))
    np.testing.assert_array_equal(grad, expected_grad)  # [0, 2, 3, 4, 0]: bounds pass it whole.
