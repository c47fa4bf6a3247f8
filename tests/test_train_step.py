"""Three BoT optimiser steps of a small ResNet, reid_jax against PyTorch from identical weights.

Both sides run in float64: Adam's first steps are sign-like (g / |g|), so in float32 any
gradient element at rounding level (BN biases below a train-mode BN have near-cancelling sums)
flips on noise and moves by 2 lr, which swamps the comparison; in float64 the noise is ~1e-16.
Float32 parity of the forward pass is covered by tests/test_model_parity.py.

The PyTorch side is the original training loop transcribed: Baseline in train mode, loss =
xent_ls + triplet + 0.0005 * center, Adam(weight_decay) on every trainable parameter (the
BNNeck shift has requires_grad False), SGD(0.5) on the centers after rescaling their gradient by
1 / 0.0005. Parameters, BN running statistics, centers and the losses of every step are compared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from relative_errors import relative_error, state_dict_errors

from configs.market import get_config
from reid_jax import optim
from reid_jax.methods.bot import BoT
from reid_jax.models import init_variables
from reid_jax.train import create_train_state, make_train_step

NUM_IDS, P, K = 8, 4, 4
IMAGE_SIZE = (64, 48)  # maps stay >= 3 wide: XLA:CPU is slow on narrower ones
EPOCHS = (10, 1, 10)  # the epoch (so the lr) changes between steps, as at epoch boundaries
REL = 1e-4


def small_config():
    config = get_config()
    config.model.depth = 18
    config.data.image_size = IMAGE_SIZE
    return config


@pytest.mark.slow
def test_three_steps_match_pytorch(torch):
    import torch_losses
    import torch_reference

    config = small_config()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        ids = rng.choice(NUM_IDS, P, replace=False)
        batches.append({
            "image": rng.normal(size=(P * K, *IMAGE_SIZE, 3)).astype(np.float32),
            "label": np.repeat(ids, K).astype(np.int32),
        })
    centers0 = rng.normal(size=(NUM_IDS, 512))
    for batch in batches:  # torch_reference.to_nchw reads images as float32
        batch["image"] = batch["image"].astype(np.float64)

    lr_table = optim.learning_rates(config.optim, config.train.epochs)
    learning_rates = [lr_table[epoch] for epoch in EPOCHS]
    assert learning_rates == pytest.approx([3.5e-4, 3.815e-5, 3.5e-4], rel=1e-12)
    with jax.enable_x64(True):
        method = BoT(config, NUM_IDS)
        method.model = method.model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        # float32-representable start: torch_reference loads weights through float32.
        variables = jax.tree_util.tree_map(
            lambda a: np.asarray(a, np.float32).astype(np.float64),
            init_variables(method.model, jax.random.PRNGKey(0), IMAGE_SIZE))
        tx = method.optimizer(lr_table)
        state = create_train_state({"model": variables["params"],
                                    "centers": jnp.asarray(centers0)},
                                   variables["batch_stats"], tx, jax.random.PRNGKey(1))
        step = jax.jit(make_train_step(method, tx, lr_table))
        jax_losses = []
        for batch, epoch in zip(batches, EPOCHS, strict=True):
            state = state.replace(epoch=jnp.asarray(epoch, jnp.int32))
            state, metrics = step(state, batch)
            assert float(metrics["lr"]) == pytest.approx(lr_table[epoch], rel=1e-7)
            jax_losses.append({k: float(metrics[k])
                               for k in ("loss", "id_loss", "triplet_loss", "center_loss")})
        state = jax.tree_util.tree_map(np.asarray, state)

    net = torch_reference.Baseline(NUM_IDS, depth=18, last_stride=1, stem_relu=False).double()
    torch_reference.load_flax_variables(net, variables)
    centers = torch.nn.Parameter(torch.tensor(centers0))
    adam = torch.optim.Adam([p for p in net.parameters() if p.requires_grad],
                            lr=learning_rates[0],
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4)
    sgd = torch.optim.SGD([centers], lr=0.5)
    net.train()
    for batch, lr, expected in zip(batches, learning_rates, jax_losses, strict=True):
        for group in adam.param_groups:
            group["lr"] = lr
        score, feat = net(torch_reference.to_nchw(batch["image"]).double())
        labels = torch.tensor(batch["label"], dtype=torch.long)
        total, parts = torch_losses.bot_loss(score, feat, labels, centers, NUM_IDS)
        adam.zero_grad()
        sgd.zero_grad()
        total.backward()
        adam.step()
        centers.grad *= 1.0 / 0.0005
        sgd.step()
        assert expected["loss"] == pytest.approx(total.item(), rel=REL)
        for name, value in parts.items():
            assert expected[name] == pytest.approx(value.item(), rel=REL), name

    final = {"params": state.params["model"], "batch_stats": state.batch_stats}
    converted = torch_reference.load_flax_variables(
        torch_reference.Baseline(NUM_IDS, depth=18, last_stride=1, stem_relu=False).double(),
        final)
    expected_state, actual_state = net.state_dict(), converted.state_dict()
    initial_state = torch_reference.load_flax_variables(
        torch_reference.Baseline(NUM_IDS, depth=18, last_stride=1, stem_relu=False).double(),
        variables).state_dict()
    errors, moved = state_dict_errors(expected_state, actual_state, initial_state)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= REL, f"{worst}: relative error {errors[worst]:.2e}"
    # The comparison is meaningful: every tensor but the frozen shift moved, by far more than the
    # two implementations disagree.
    for key in moved:
        if key != "bottleneck.bias":
            assert errors[key] <= 1e-3 * moved[key], (key, errors[key], moved[key])
    np.testing.assert_array_equal(actual_state["bottleneck.bias"], 0.0)
    assert relative_error(np.asarray(state.params["centers"]), centers.detach().numpy()) <= REL
    assert int(state.step) == 3
