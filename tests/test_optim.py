"""The lr schedule against BoT's own scheduler driven as ignite drives it, and the optax chain
against torch.optim."""

import bisect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import aligned, demo, market
from reid_jax import optim


def bot_epoch_learning_rates(optim_config, epochs: int, torch) -> list[float]:
    """The lr BoT trains each epoch 1..epochs with: its WarmupMultiStepLR (transcribed below, a
    real torch LRScheduler) built with last_epoch=-1, then `scheduler.step()` on ignite's
    EPOCH_STARTED, before the epoch's iterations; the lr read from the optimizer."""

    class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
        """reid-strong-baseline solver/lr_scheduler.py, transcribed."""

        def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 3,
                     warmup_iters=500, warmup_method="linear", last_epoch=-1):
            if list(milestones) != sorted(milestones):
                raise ValueError("Milestones should be a list of increasing integers")
            self.milestones = milestones
            self.gamma = gamma
            self.warmup_factor = warmup_factor
            self.warmup_iters = warmup_iters
            self.warmup_method = warmup_method
            super().__init__(optimizer, last_epoch)

        def get_lr(self):
            warmup_factor = 1
            if self.last_epoch < self.warmup_iters:
                if self.warmup_method == "constant":
                    warmup_factor = self.warmup_factor
                elif self.warmup_method == "linear":
                    alpha = self.last_epoch / self.warmup_iters
                    warmup_factor = self.warmup_factor * (1 - alpha) + alpha
            return [base_lr * warmup_factor
                    * self.gamma ** bisect.bisect_right(self.milestones, self.last_epoch)
                    for base_lr in self.base_lrs]

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=optim_config.base_lr, weight_decay=5e-4)
    scheduler = WarmupMultiStepLR(optimizer, list(optim_config.milestones), optim_config.gamma,
                                  optim_config.warmup_factor, optim_config.warmup_epochs,
                                  "linear")
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(epochs):
            scheduler.step()  # Events.EPOCH_STARTED
            rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("config", [
    market.get_config(), market.get_config("baseline"), market.get_config("warmup"),
    demo.get_config()], ids=["bot", "baseline (no warmup)", "warmup", "demo"])
def test_lr_of_every_epoch_equals_bot_scheduler(config, torch):
    expected = bot_epoch_learning_rates(config.optim, config.train.epochs, torch)
    got = [optim.learning_rate(epoch, config.optim) for epoch in range(1, config.train.epochs + 1)]
    assert got == expected


def test_lr_schedule_published_values():
    """REFERENCE section 3's list, a check of the transcription's reading of the schedule."""
    config = market.get_config().optim
    for epoch, lr in [(1, 3.815e-5), (2, 7.28e-5), (9, 3.1535e-4), (10, 3.5e-4), (39, 3.5e-4),
                      (40, 3.5e-5), (69, 3.5e-5), (70, 3.5e-6), (120, 3.5e-6)]:
        assert optim.learning_rate(epoch, config) == pytest.approx(lr, rel=1e-12), epoch


def test_lr_schedule_rejects_epoch_zero():
    with pytest.raises(ValueError, match="epoch=0"):
        optim.learning_rate(0, market.get_config().optim)


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
    """Three steps in epochs with different lrs: Adam(weight_decay) on the model, SGD(0.5) on
    centers whose gradient BoT rescales by 1 / center_weight, the BNNeck shift frozen."""
    config = market.get_config()
    rng = np.random.default_rng(0)
    params = _toy_params(rng)
    grads = [jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
             for _ in range(3)]
    epochs = (1, 5, 41)
    lr_table = optim.learning_rates(config.optim, config.train.epochs)
    lrs = [optim.learning_rate(e, config.optim) for e in epochs]

    tx = optim.bot_optimizer(config, lr_table)
    jparams = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = tx.init(jparams)
    update = jax.jit(tx.update)
    for grad, epoch in zip(grads, epochs, strict=True):
        updates, opt_state = update(grad, opt_state, jparams, epoch=jnp.int32(epoch))
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


def test_centers_frozen_when_center_loss_off():
    config = market.get_config("bnneck")  # the ablation row before center loss
    assert config.loss.center_weight == 0
    params = jax.tree_util.tree_map(jnp.asarray, _toy_params(np.random.default_rng(1)))
    tx = optim.bot_optimizer(config, optim.learning_rates(config.optim, config.train.epochs))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params, epoch=jnp.int32(3))
    np.testing.assert_array_equal(updates["centers"], 0.0)
    np.testing.assert_array_equal(updates["model"]["neck"]["bottleneck"]["bias"], 0.0)
    assert np.all(np.asarray(updates["model"]["conv"]["kernel"]) != 0)


def aligned_epoch_learning_rates(optim_config, epochs: int, torch) -> list[float]:
    """The lr AlignedReID trains each epoch 1..epochs with, as the re-production's train loop
    sets it: torch.optim.Adam(lr=base_lr, weight_decay) built once, then at the start of every
    epoch `adjust_lr_exp(optimizer, base_lr, ep + 1, total_epochs, exp_decay_at_epoch)` (a no-op
    before the decay starts: the optimizer keeps its initial lr); the lr read from the
    optimizer's param group."""
    import torch_aligned

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=optim_config.base_lr,
                                 weight_decay=optim_config.weight_decay)
    rates = []
    for ep in range(epochs):
        torch_aligned.adjust_lr_exp(optimizer, optim_config.base_lr, ep + 1,
                                    optim_config.decay_total_epochs,
                                    optim_config.decay_start_epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def _short_aligned_config():
    """configs/aligned.py trained 5 epochs with the decay from epoch 2 (its total follows
    config.train.epochs)."""
    config = aligned.get_config()
    config.train.epochs = 5
    config.optim.decay_start_epoch = 2
    return config


@pytest.mark.parametrize("make_config,start,total", [
    (aligned.get_config, 151, 300), (lambda: aligned.get_config("mutual"), 151, 300),
    (_short_aligned_config, 2, 5)], ids=["default", "mutual", "short"])
def test_exp_decay_lr_of_every_epoch_equals_adjust_lr_exp(make_config, start, total, torch):
    """Exact equality, epoch by epoch, with the re-production's schedule on a real optimizer;
    the lr table the train step reads (`learning_rates`) holds the same values."""
    config = make_config()
    assert config.optim.schedule == "exp_decay"
    assert (config.optim.decay_start_epoch, config.optim.decay_total_epochs,
            config.train.epochs) == (start, total, total)
    expected = aligned_epoch_learning_rates(config.optim, total, torch)
    got = [optim.learning_rate(epoch, config.optim) for epoch in range(1, total + 1)]
    assert got == expected
    assert list(optim.learning_rates(config.optim, total)[1:]) == expected
    # Not vacuous: constant up to the decay start, then strictly decreasing to base * 0.001.
    base = config.optim.base_lr
    assert expected[:start - 1] == [base] * (start - 1)
    assert np.all(np.diff(expected[start - 2:]) < 0)
    assert expected[-1] == pytest.approx(base * 0.001, rel=1e-12)
