"""The lr schedule against REFERENCE section 3, and the optax chain against torch.optim."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.market import get_config
from reid_jax import optim


def reference_lr(epoch: int) -> float:
    """REFERENCE section 3 transcribed: WarmupMultiStepLR(milestones (40, 70), gamma 0.1,
    warmup_factor 0.01, warmup_iters 10, linear), last_epoch = epoch - 1."""
    last_epoch = epoch - 1
    factor = 1.0
    if last_epoch < 10:
        alpha = last_epoch / 10
        factor = 0.01 * (1 - alpha) + alpha
    return 3.5e-4 * factor * 0.1 ** sum(m <= last_epoch for m in (40, 70))


def test_lr_schedule_matches_reference_for_all_epochs():
    config = get_config()
    assert config.train.epochs == 120
    for epoch in range(1, 121):
        assert optim.learning_rate(epoch, config.optim) == reference_lr(epoch), epoch


@pytest.mark.parametrize("epoch,expected", [
    (1, 3.5e-6), (2, 3.815e-5), (10, 3.1535e-4), (11, 3.5e-4), (40, 3.5e-4), (41, 3.5e-5),
    (70, 3.5e-5), (71, 3.5e-6), (120, 3.5e-6)])
def test_lr_schedule_published_values(epoch, expected):
    assert optim.learning_rate(epoch, get_config().optim) == pytest.approx(expected, rel=1e-12)


def test_lr_schedule_rejects_epoch_zero():
    with pytest.raises(ValueError, match="epoch=0"):
        optim.learning_rate(0, get_config().optim)


def _toy_params(rng: np.random.Generator) -> dict:
    return {
        "model": {
            "conv": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
            "neck": {"bottleneck": {"scale": np.ones(4, np.float32),
                                    "bias": np.zeros(4, np.float32)}},
        },
        "centers": rng.normal(size=(5, 4)).astype(np.float32),
    }


def test_optimizer_matches_torch_adam_l2_and_center_sgd(torch):
    """Three steps with changing lr: Adam(weight_decay) on the model, SGD(0.5) on centers whose
    gradient BoT rescales by 1 / center_weight, the BNNeck shift frozen."""
    config = get_config()
    rng = np.random.default_rng(0)
    params = _toy_params(rng)
    grads = [jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
             for _ in range(3)]
    lrs = [optim.learning_rate(e, config.optim) for e in (1, 5, 41)]

    tx = optim.make_optimizer(config)
    jparams = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = tx.init(jparams)
    for grad, lr in zip(grads, lrs, strict=True):
        opt_state = optim.set_learning_rate(opt_state, lr)
        updates, opt_state = tx.update(grad, opt_state, jparams)
        jparams = optax.apply_updates(jparams, updates)

    w = torch.nn.Parameter(torch.tensor(params["model"]["conv"]["kernel"]))
    scale = torch.nn.Parameter(torch.tensor(params["model"]["neck"]["bottleneck"]["scale"]))
    bias = torch.tensor(params["model"]["neck"]["bottleneck"]["bias"])  # requires_grad False
    centers = torch.nn.Parameter(torch.tensor(params["centers"]))
    adam = torch.optim.Adam([w, scale], lr=lrs[0], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=5e-4)
    sgd = torch.optim.SGD([centers], lr=0.5)
    for grad, lr in zip(grads, lrs, strict=True):
        for group in adam.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor(grad["model"]["conv"]["kernel"])
        scale.grad = torch.tensor(grad["model"]["neck"]["bottleneck"]["scale"])
        centers.grad = torch.tensor(grad["centers"]) * (1.0 / config.loss.center_weight)
        adam.step()
        sgd.step()

    np.testing.assert_allclose(jparams["model"]["conv"]["kernel"], w.detach().numpy(),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jparams["model"]["neck"]["bottleneck"]["scale"],
                               scale.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jparams["centers"], centers.detach().numpy(), rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(jparams["model"]["neck"]["bottleneck"]["bias"], bias.numpy())
    assert float(optim.current_learning_rate(opt_state)) == pytest.approx(lrs[-1], rel=1e-6)


def test_centers_frozen_when_center_loss_off():
    config = get_config("bnneck")  # the ablation row before center loss
    assert config.loss.center_weight == 0
    params = jax.tree_util.tree_map(jnp.asarray, _toy_params(np.random.default_rng(1)))
    tx = optim.make_optimizer(config)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["centers"], 0.0)
    np.testing.assert_array_equal(updates["model"]["neck"]["bottleneck"]["bias"], 0.0)
    assert np.all(np.asarray(updates["model"]["conv"]["kernel"]) != 0)
