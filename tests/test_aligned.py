"""AlignedReID (model, local distance, losses, mutual learning) against the PyTorch transcription
of AlignedReID-Re-Production-Pytorch in tests/torch_aligned.py (the `ta` fixture).

Values and gradients are compared; the JAX side runs under jit. Float32, except where float32
noise dominates: a self-distance (an image or stripe against itself) is sqrt of the expansion's
rounding noise (~1e-3 in float32, different in each framework), with a gradient
1 / (2 sqrt(noise)). Distance matrices are compared off their diagonal, and the local
distance mutual loss, which differentiates the diagonal of the local distance matrix (1e-4
apart from torch in float32), runs in float64, where the noise stays under the 1e-12 clamp and
neither side passes gradient there.
"""

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_losses import assert_close, mined_ties, tied_batch, torch_value_and_grads

from reid_jax import losses, torch_weights
from reid_jax.models import AlignedReID, create_aligned_model, init_variables

NUM_CLASSES = 11
IMAGE_SIZE = (128, 96)  # ResNet-18, last stride 2: a 4 x 3 map (XLA:CPU is slow below 3 wide).
TERMS = ("loss", "global_loss", "local_loss", "id_loss", "pm_loss", "gdm_loss", "ldm_loss")


@pytest.fixture(scope="module")
def ta(torch):
    """tests/torch_aligned.py: the re-production transcribed to PyTorch (needs torch)."""
    import torch_aligned
    return torch_aligned


def x64(dtype):
    """Context enabling float64 in JAX when `dtype` is float64."""
    return jax.enable_x64(np.dtype(dtype) == np.float64)


def pk_batch(rng: np.random.Generator, p: int, k: int) -> np.ndarray:
    """Shuffled labels [P * K] int64 in [0, P): valid class indices for the classifier."""
    return rng.permutation(np.repeat(np.arange(p), k))


def path_ties(d: np.ndarray) -> int:
    """Exact ties up == left met by the shortest-path recursion on d [..., m, n] (numpy)."""
    s = np.array(d)
    s[..., 0, :] = np.cumsum(d[..., 0, :], axis=-1)
    s[..., :, 0] = np.cumsum(d[..., :, 0], axis=-1)
    ties = 0
    for i in range(1, d.shape[-2]):
        for j in range(1, d.shape[-1]):
            up, left = s[..., i - 1, j], s[..., i, j - 1]
            ties += int(np.sum(up == left))
            s[..., i, j] = np.minimum(up, left) + d[..., i, j]
    return ties


def numpy_stripe_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d [M, N, m, n] = tanh(|x_i - y_j| / 2) in float64 (exact for integer features)."""
    e = np.sqrt(np.sum((x[:, None, :, None] - y[None, :, None, :]) ** 2, axis=-1,
                       dtype=np.float64))
    return np.tanh(np.maximum(e, 1e-6) / 2)


# ------------------------------------------------------------------------------ model ----

def _convert(torch, reference, model, tmp_path) -> dict:
    path = tmp_path / "aligned.pth"
    torch.save(reference.state_dict(), path)
    target = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), IMAGE_SIZE))
    return torch_weights.load_torch_weights(path, target)


def test_forward_matches_torch(torch, ta, tmp_path):
    """A random torch model -> .pth -> torch_weights -> Flax. Eval and train mode: global and
    local features and logits <= 1e-4; train mode also every BN's updated running statistics
    <= 1e-5."""
    tr = ta.torch_reference
    reference = tr.randomize_(ta.Model(128, NUM_CLASSES, depth=18, last_stride=2), seed=3,
                              image_size=IMAGE_SIZE)
    model = AlignedReID(NUM_CLASSES, depth=18, last_stride=2)
    variables = _convert(torch, reference, model, tmp_path)
    images = tr.random_images(4, IMAGE_SIZE, seed=4)

    expected = {}
    for train in (False, True):
        reference.train(train)
        with torch.no_grad():
            expected[train] = dict(zip(("global", "local", "logits"), reference(images),
                                       strict=True))
    updated = {k: v.numpy() for k, v in reference.state_dict().items()}
    want_stats = jax.tree.leaves(torch_weights.torch_to_flax(updated, variables)["batch_stats"])

    @jax.jit
    def forward(variables, images):
        return {train: model.apply(variables, images, train=train, mutable=["batch_stats"])
                for train in (False, True)}

    with jax.default_matmul_precision("highest"):
        got = forward(variables, tr.to_nhwc(images))
    for train in (False, True):
        outputs = got[train][0]
        assert {k: v.shape for k, v in outputs.items()} == {
            "global": (4, 512), "local": (4, 4, 128), "logits": (4, NUM_CLASSES)}
        assert np.mean(np.asarray(outputs["local"]) > 0) > 0.2  # The ReLU leaves real stripes.
        for key, value in expected[train].items():
            np.testing.assert_allclose(outputs[key], value.numpy(), atol=1e-4, rtol=0,
                                       err_msg=f"{key} train={train}")

    got_stats = jax.tree_util.tree_flatten_with_path(got[True][1]["batch_stats"])[0]
    assert len(got_stats) == len(want_stats) == 2 * 21  # ResNet-18's 20 BNs and local_bn.
    for (path, value), want in zip(got_stats, want_stats, strict=True):
        np.testing.assert_allclose(value, want, atol=1e-5, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    before = jax.tree.leaves(variables["batch_stats"])
    assert max(np.abs(b - w).max() for b, w in zip(before, want_stats, strict=True)) > 1e-2


@pytest.mark.parametrize("use_classifier", [True, False])
def test_create_aligned_model_reads_the_config(use_classifier):
    config = ml_collections.ConfigDict(dict(depth=18, last_stride=2, stem_relu=True,
                                            local_dim=32, dtype="float32",
                                            use_classifier=use_classifier))
    model = create_aligned_model(config, NUM_CLASSES)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), IMAGE_SIZE))
    outputs = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *IMAGE_SIZE, 3)),
                                                   train=False), variables)
    expected = {"global": (2, 512), "local": (2, 4, 32)}
    if use_classifier:
        expected["logits"] = (2, NUM_CLASSES)
    assert {k: v.shape for k, v in outputs.items()} == expected
    assert all(v.dtype == jnp.float32 for v in outputs.values())
    assert ("fc" in variables["params"]) == use_classifier
    assert variables["params"]["local_conv"]["kernel"].shape == (1, 1, 512, 32)


def test_head_init_is_pytorch_default():
    """local_conv: Conv2d's default kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias the
    same bound; fc: weight N(0, 0.001^2), bias 0. The head alone, on a ResNet-18 map."""
    model = AlignedReID(NUM_CLASSES, depth=18, last_stride=2)
    params = jax.jit(lambda key: model.init(key, jnp.zeros((1, 4, 3, 512)), train=True,
                                            method=AlignedReID.head))(jax.random.key(1))["params"]
    assert set(params) == {"local_conv", "local_bn", "fc"}
    bound = 1 / np.sqrt(512)
    for leaf in ("kernel", "bias"):
        value = np.asarray(params["local_conv"][leaf])
        assert np.abs(value).max() <= bound
        assert np.std(value) == pytest.approx(bound / np.sqrt(3), rel=0.1)
    assert np.std(np.asarray(params["fc"]["kernel"])) == pytest.approx(0.001, rel=0.05)
    assert np.all(np.asarray(params["fc"]["bias"]) == 0)


# --------------------------------------------------------------------- local distance ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_distances_match_torch(torch, ta, dtype):
    """Random stripes, m != n, scaled so stripe distances are O(1) (at unit scale 32-d stripes
    are ~8 apart: tanh saturates and the gradients vanish)."""
    rng = np.random.default_rng(0)
    x = (0.15 * rng.standard_normal((5, 6, 32))).astype(dtype)
    y = (0.15 * rng.standard_normal((7, 4, 32))).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    (expected,), expected_grads = torch_value_and_grads(
        torch, lambda a, b: (ta.local_dist(a, b) * torch.tensor(w)).sum(), x, y)
    exp_dist = ta.local_dist(torch.tensor(x), torch.tensor(y)).numpy()

    xb = (0.15 * rng.standard_normal((7, 6, 32))).astype(dtype)
    wb = rng.standard_normal(7).astype(dtype)
    (_,), (exp_batch_grad_x, exp_batch_grad_y) = torch_value_and_grads(
        torch, lambda a, b: (ta.batch_local_dist(a, b) * torch.tensor(wb)).sum(), xb, y)
    exp_batch = ta.batch_local_dist(torch.tensor(xb), torch.tensor(y)).numpy()

    def weighted(a, b, ab):
        dist, batch = losses.local_distance(a, b), losses.batch_local_distance(ab, b)
        return jnp.sum(dist * w) + jnp.sum(batch * wb), (dist, batch)

    with x64(dtype):
        (_, (dist, batch)), grads = jax.jit(jax.value_and_grad(
            weighted, argnums=(0, 1, 2), has_aux=True))(x, y, xb)
    assert dist.shape == (5, 7) and dist.dtype == dtype and batch.shape == (7,)
    assert 0.5 < exp_dist.mean() < 6  # Neither saturated (9) nor vanishing.
    assert_close(dist, exp_dist)
    assert_close(batch, exp_batch)
    expected_grads = (expected_grads[0], expected_grads[1] + exp_batch_grad_y, exp_batch_grad_x)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 8, 8), (4, 5, 7)])
def test_shortest_path_splits_tie_gradients_as_torch_min(torch, ta, shape, dtype):
    """Small-integer stripe distances tie up and left all over the recursion; torch.min(a, b)
    sends half the gradient each way, and so must we (exactly: the weights are dyadic)."""
    rng = np.random.default_rng(1)
    d = rng.integers(0, 3, size=shape).astype(dtype)
    assert path_ties(d) >= 10
    (expected,), (expected_grad,) = torch_value_and_grads(
        torch, lambda t: ta.shortest_dist(t.permute(1, 2, 0)).sum(), d)
    assert not np.all(np.isin(expected_grad, (0.0, 1.0)))  # Split, not given to one side.
    with x64(dtype):
        value, grad = jax.jit(jax.value_and_grad(lambda t: losses.shortest_path(t).sum()))(d)
    np.testing.assert_array_equal(value, expected)
    np.testing.assert_array_equal(grad, expected_grad)


def tied_features(case: str, rng: np.random.Generator, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued stripes (exact distances in both frameworks, so ties are real):
    "self": (x, x), one array as both arguments; "identical": (x, a copy of x); "duplicated":
    every image's stripes equal (constant stripe distances: ties on every diagonal)."""
    x = rng.integers(-1, 2, size=(6, 5, 4)).astype(dtype)
    if case == "duplicated":
        x = np.repeat(x[:, :1], 5, axis=1)
        return x, rng.permutation(x)
    return x, x if case == "self" else x.copy()


@jax.jit
@functools.partial(jax.value_and_grad, argnums=(0, 1))
def _weighted_local_distances(x, y, w, wb):
    """sum(w * local_distance(x, y)) + sum(wb * batch_local_distance(x, y)), gradients w.r.t.
    x and y (one compiled function shared by the tie cases)."""
    return (jnp.sum(losses.local_distance(x, y) * w)
            + jnp.sum(losses.batch_local_distance(x, y) * wb))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["self", "identical", "duplicated"])
def test_local_distance_ties_match_torch(torch, ta, case, dtype):
    rng = np.random.default_rng(2)
    x, y = tied_features(case, rng, dtype)
    w = rng.standard_normal((6, 6)).astype(dtype)
    wb = rng.standard_normal(6).astype(dtype)
    assert path_ties(numpy_stripe_distances(x, y)) > 20

    def torch_sums(a, b):
        b = a if case == "self" else b
        return ((ta.local_dist(a, b) * torch.tensor(w)).sum()
                + (ta.batch_local_dist(a, b) * torch.tensor(wb)).sum())

    (expected,), expected_grads = torch_value_and_grads(torch, torch_sums, x, y)
    with x64(dtype):
        value, grads = jax.tree.map(np.asarray, _weighted_local_distances(x, y, w, wb))
    if case == "self":  # f(x, x): the two arguments' gradients add up.
        grads = (grads[0] + grads[1], np.zeros_like(y))
    assert_close(value, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close(got, want)


def test_local_distance_stays_finite_where_the_exp_quotient_overflows(torch, ta):
    """Stripes 200 apart: the original's (exp(e) - 1) / (exp(e) + 1) is inf / inf = NaN in
    float32 (e > 88); tanh(e / 2) gives the limit 1, so the path is m + n - 1 cells of 1."""
    x = np.full((2, 3, 4), 100.0, np.float32)
    y = np.full((2, 4, 4), -100.0, np.float32)
    assert np.isnan(ta.local_dist(torch.tensor(x), torch.tensor(y)).numpy()).all()
    value, grad = jax.jit(jax.value_and_grad(lambda a: jnp.sum(losses.local_distance(a, y))))(x)
    np.testing.assert_array_equal(value, 4 * 6.0)
    assert np.isfinite(grad).all()


def test_full_batch_local_distance_matches_torch_and_is_fast(torch, ta):
    """The training size: 128 x 128 images of 8 stripes x 128-d, value and gradient."""
    rng = np.random.default_rng(3)
    x = np.abs(0.1 * rng.standard_normal((128, 8, 128))).astype(np.float32)
    y = np.abs(0.1 * rng.standard_normal((128, 8, 128))).astype(np.float32)
    (expected,), expected_grads = torch_value_and_grads(
        torch, lambda a, b: ta.local_dist(a, b).sum(), x, y)
    fn = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(losses.local_distance(a, b)),
                                    argnums=(0, 1)))
    jax.block_until_ready(fn(x, y))
    start = time.perf_counter()
    value, grads = jax.block_until_ready(fn(x, y))
    assert time.perf_counter() - start < 2.0  # ~0.1 s on 2 CPU cores.
    assert_close(value, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close(got, want)


# ---------------------------------------------------------------------------- losses ----

@pytest.mark.parametrize("normalize,margin", [(False, 0.3), (True, 0.3), (True, None)])
def test_global_triplet_matches_torch(torch, ta, normalize, margin):
    rng = np.random.default_rng(4)
    labels = pk_batch(rng, 4, 4)
    # Identity centres plus noise, so that some triplets satisfy the margin and some do not;
    # the offset on 4 dims spreads the norms for the normalisation.
    feats = (0.4 * rng.standard_normal((4, 32))[labels] + 0.2 * rng.standard_normal((16, 32))
             + rng.uniform(0, 3, (16, 1)) * (np.arange(32) < 4)).astype(np.float32)
    t_labels = torch.tensor(labels)
    (expected, p_inds, n_inds, exp_ap, exp_an, exp_dist), (expected_grad,) = (
        torch_value_and_grads(torch, lambda f: ta.global_loss(
            ta.TripletLoss(margin), f, t_labels, normalize), feats))

    def fn(f):
        result = losses.global_triplet_loss(f, jnp.asarray(labels, jnp.int32), margin, normalize)
        return result.loss, result
    (value, result), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(feats)
    assert_close(value, expected)
    np.testing.assert_array_equal(result.p_inds, p_inds)
    np.testing.assert_array_equal(result.n_inds, n_inds)
    assert_close(result.dist_ap, exp_ap)
    assert_close(result.dist_an, exp_an)
    off_diagonal = ~np.eye(16, dtype=bool)  # Self-distances: sqrt(rounding noise).
    assert_close(np.asarray(result.dist_mat)[off_diagonal], exp_dist[off_diagonal])
    assert_close(grad, expected_grad)
    if margin is not None:
        assert 0 < np.mean(exp_ap - exp_an + margin > 0) < 1


def test_hard_example_indices_are_the_first_on_ties_as_torch(torch, ta):
    """Integer features (exact distances): every anchor's hardest positive and negative tie."""
    feats, labels = tied_batch(np.random.default_rng(5), 6, 16, np.float32)
    t_feats = torch.tensor(feats)
    t_dist = ta.euclidean_dist(t_feats, t_feats)
    pos_ties, neg_ties = mined_ties(t_dist.numpy(), labels)
    assert np.all(pos_ties.sum(1) >= 2) and np.all(neg_ties.sum(1) >= 2)
    expected = ta.hard_example_mining(t_dist, torch.tensor(labels), return_inds=True)
    got = jax.jit(lambda f, y: losses.hard_example_mining_with_indices(
        losses.pairwise_distance(f, f), y))(feats, jnp.asarray(labels, jnp.int32))
    for value, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("own_mining,normalize", [(False, False), (False, True), (True, True)])
def test_local_triplet_matches_torch(torch, ta, own_mining, normalize):
    """Same hard pairs as the global mining (gradient through both arguments of
    batch_local_distance(local, local[p_inds])) or own mining on the N x N local distances."""
    rng = np.random.default_rng(6)
    labels = pk_batch(rng, 4, 4)
    local = np.abs(0.3 * rng.standard_normal((16, 6, 16))).astype(np.float32)
    t_labels = torch.tensor(labels)
    global_feat = torch.tensor(rng.standard_normal((16, 32)).astype(np.float32))
    _, p_inds, n_inds, *_ = ta.global_loss(ta.TripletLoss(0.3), global_feat, t_labels, False)
    pairs = None if own_mining else (p_inds, n_inds)
    (expected, *exp_rest), (expected_grad,) = torch_value_and_grads(
        torch, lambda f: ta.local_loss(ta.TripletLoss(0.3), f, *(pairs or (None, None)),
                                       t_labels, normalize), local)

    jax_pairs = None if own_mining else (jnp.asarray(p_inds.numpy()), jnp.asarray(n_inds.numpy()))

    def fn(f):
        result = losses.local_triplet_loss(f, jnp.asarray(labels, jnp.int32), 0.3, normalize,
                                           jax_pairs)
        return result.loss, result
    (value, result), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(local)
    assert_close(value, expected)
    assert_close(result.dist_ap, exp_rest[0])
    assert_close(result.dist_an, exp_rest[1])
    if own_mining:
        off_diagonal = ~np.eye(16, dtype=bool)
        assert_close(np.asarray(result.dist_mat)[off_diagonal], exp_rest[2][off_diagonal])
    else:
        assert result.dist_mat is None
    assert_close(grad, expected_grad)


def test_normalize_feature_matches_torch_including_a_zero_vector(torch, ta):
    """x / (|x| + 1e-12); at an all-zero stripe (a ReLU can give one) the norm passes no
    gradient, as torch.norm's, so the gradient there is finite: upstream / 1e-12."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 8)).astype(np.float32)
    x[1, 2] = 0.0
    w = rng.standard_normal(x.shape).astype(np.float32)
    (expected,), (expected_grad,) = torch_value_and_grads(
        torch, lambda t: (ta.normalize(t) * torch.tensor(w)).sum(), x)
    value, grad = jax.jit(jax.value_and_grad(
        lambda t: jnp.sum(losses.normalize_feature(t) * w)))(x)
    assert_close(value, expected)
    zero = np.zeros(x.shape[:2], bool)
    zero[1, 2] = True
    np.testing.assert_allclose(grad[zero], expected_grad[zero], rtol=1e-6)
    assert np.abs(expected_grad[zero]).max() > 1e10
    assert_close(np.asarray(grad)[~zero], expected_grad[~zero])


def loss_config(**overrides) -> ml_collections.ConfigDict:
    """`config.loss` for aligned_loss: the re-production's defaults, then `overrides`."""
    return ml_collections.ConfigDict(dict(
        normalize_feature=True, global_margin=0.3, local_margin=0.3, local_own_hard_mining=False,
        global_weight=1.0, local_weight=0.0, id_weight=0.0, pm_weight=1.0, gdm_weight=1.0,
        ldm_weight=0.0) | overrides)


def random_outputs(rng: np.random.Generator, num_models: int, dtype) -> dict[str, np.ndarray]:
    """Stacked outputs of M models on a 16-image batch: global [M, 16, 32], ReLU-like local
    [M, 16, 6, 16], logits [M, 16, 10] (each model a perturbation of a common one)."""
    base = {"global": rng.standard_normal((16, 32)),
            "local": np.abs(0.3 * rng.standard_normal((16, 6, 16))),
            "logits": 2.0 * rng.standard_normal((16, 10))}
    return {k: (v + 0.3 * np.abs(v).mean() * rng.standard_normal((num_models, *v.shape))
                ).astype(dtype) for k, v in base.items()}


LOSS_CASES = {
    # name: (num_models, dtype, overrides)
    # Each term's gradient is compared on its own, so a case may turn on several.
    "single-same-pairs": (1, np.float32, dict(local_weight=1.0, id_weight=1.0)),
    "pm-gdm-2": (2, np.float32, dict(normalize_feature=False, id_weight=1.0)),
    "ldm-2": (2, np.float64, dict(normalize_feature=False, local_weight=1.0,
                                  local_own_hard_mining=True, ldm_weight=1.0, pm_weight=0.0,
                                  gdm_weight=0.0)),
    "all-3": (3, np.float64, dict(local_weight=0.5, id_weight=0.5, local_own_hard_mining=True,
                                  ldm_weight=2.0, pm_weight=0.5, gdm_weight=2.0)),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_aligned_loss_matches_train_ml_and_keeps_partners_constant(torch, ta, case):
    """Every per-model metric, and the gradient of every term summed over the models w.r.t.
    the stacked outputs, against train_ml.py's per-thread losses (partners detached). And no
    leak: d term_i / d outputs_k == 0 for k != i (so one gradient of the sum over models trains
    each model on its own loss), != 0 for k == i."""
    num_models, dtype, overrides = LOSS_CASES[case]
    config = loss_config(**overrides)
    rng = np.random.default_rng(7)
    labels = pk_batch(rng, 4, 4)
    outputs = random_outputs(rng, num_models, dtype)
    keys = ("global", "local", "logits")

    tensors = {k: torch.tensor(outputs[k], requires_grad=True) for k in keys}
    results = ta.model_losses(ta.config_names(config), *(list(tensors[k]) for k in keys),
                              torch.tensor(labels))
    expected, expected_grads = {}, {}
    for term in (*TERMS, "dist_ap", "dist_an"):
        expected[term] = np.array([float(torch.as_tensor(r[term]).detach())  # 0 where off
                                   for r in results])
    for term in TERMS:
        total = sum(r[term] for r in results)
        grads = (torch.autograd.grad(total, [tensors[k] for k in keys], retain_graph=True,
                                     allow_unused=True) if torch.is_tensor(total) else [None] * 3)
        expected_grads[term] = [np.zeros_like(outputs[k]) if g is None else g.numpy()
                                for k, g in zip(keys, grads, strict=True)]

    def terms(outs):
        total, metrics = losses.aligned_loss(outs, jnp.asarray(labels, jnp.int32), config)
        return jnp.stack([metrics[t] for t in TERMS]), (total, metrics)

    with x64(dtype):
        jax_outputs = {k: jnp.asarray(v) for k, v in outputs.items()}
        # [term, model i, model k, ...]: d term_i / d outputs_k.
        jacobian, (total, metrics) = jax.tree.map(np.asarray, jax.jit(
            jax.jacrev(terms, has_aux=True))(jax_outputs))
    assert total.dtype == dtype
    assert_close(total, expected["loss"].sum())
    for term, want in expected.items():
        assert metrics[term].shape == (num_models,)
        assert_close(metrics[term], want)
    accuracy = np.mean(outputs["logits"].argmax(-1) == labels, axis=1)
    np.testing.assert_allclose(metrics["id_accuracy"], accuracy, rtol=1e-6)
    for index, term in enumerate(TERMS):
        for key, want in zip(keys, expected_grads[term], strict=True):
            assert_close(jacobian[key][index].sum(axis=0), want)
    active = [t for t in TERMS[1:] if np.any(expected[t] != 0)]
    assert len(active) >= 2  # The case exercises what it names.

    partner = ~np.eye(num_models, dtype=bool)
    for key, jac in jacobian.items():
        assert np.all(jac[:, partner] == 0), key
    own_grads = np.abs(jacobian["global"][0]).reshape(num_models, num_models, -1)
    assert np.all(own_grads.max(axis=-1)[~partner] > 0)


@pytest.mark.parametrize("key,value", [
    ("global_weight", -1.0), ("pm_weight", float("nan")), ("ldm_weight", -0.5),
    ("global_margin", -0.3), ("local_margin", -1.0), ("normalize_feature", "yes"),
    ("local_own_hard_mining", 1)])
def test_aligned_loss_rejects_out_of_range_config(key, value):
    outputs = {"global": jnp.ones((1, 4, 8)), "local": jnp.ones((1, 4, 2, 8))}
    labels = jnp.asarray([0, 0, 1, 1], jnp.int32)
    with pytest.raises(ValueError, match=f"config.loss.{key}="):
        losses.aligned_loss(outputs, labels, loss_config(**{key: value}))


def test_aligned_loss_rejects_ldm_without_own_mining_and_missing_logits():
    outputs = {"global": jnp.ones((2, 4, 8)), "local": jnp.ones((2, 4, 2, 8))}
    labels = jnp.asarray([0, 0, 1, 1], jnp.int32)
    with pytest.raises(ValueError, match="config.loss.ldm_weight=.*local_own_hard_mining"):
        losses.aligned_loss(outputs, labels, loss_config(ldm_weight=1.0))
    with pytest.raises(ValueError, match=r"lack \['logits'\]"):
        losses.aligned_loss(outputs, labels, loss_config())  # pm_weight 1 with M = 2
    with pytest.raises(ValueError, match="global \\[M, N, D\\]"):
        losses.aligned_loss({"global": jnp.ones((4, 8))}, labels,
                            loss_config(pm_weight=0.0, gdm_weight=0.0))
