"""Three mutual-learning steps of two small AlignedReID models, reid_jax against the
re-production's `train_ml.py` loop transcribed to PyTorch, from identical weights.

reid_jax runs its real path: `get_method` -> `method.optimizer(lr_table)` ->
`create_train_state` -> `jax.jit(make_train_step(...))`: the two models' params and BN
statistics stacked on a leading axis, trained by ONE gradient of the sum of their losses
(partners held constant by stop_gradient); each model's variables read back with
`method.model_variables`. The PyTorch side is the original: two tests/torch_aligned.py `Model`s,
each with its own torch.optim.Adam(lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 5e-4)
whose lr `adjust_lr_exp` sets at the start of each step's epoch; per step all models forward
first (train mode: BN running statistics update), then each model's loss against the partner's
DETACHED outputs (`model_losses`), zero_grad, backward, step, model by model as the threads of
`train_ml.py` do. The epoch, so the exp-decay lr, changes between the steps (`EPOCHS`, with
configs/aligned.py's schedule: decay from 151 of 300).

Every term is on, at distinct weights: global triplet, local triplet, ID, probability mutual,
global-distance mutual and local-distance mutual, on L2-normalised features (the
re-production's flag default). The local triplet uses its OWN hard mining, the more demanding
mode: it builds the N x N local distance matrix (the shortest path over every pair of images,
ties on its symmetric diagonal) that both the mining and the ldm term differentiate, and ldm
exists only in that mode. The other mode (global hard pairs, gradient through the gather
`local[p_inds]`) differs only inside the loss, whose values and gradients test_aligned.py
compares for both modes; a second trajectory would double this test's cost (XLA:CPU runs the
two models' vmapped convolutions as grouped convolutions, ~7x slower than two plain ones in
float64: a step takes about a minute on 2 shared CPU cores).

Size: ResNet-18, last stride 1, 64x48 images: a 4 x 3 final map (4 stripes; XLA:CPU is
pathologically slow on maps under 3 wide), and a P 2 x K 4 batch over 8 ids (hard positives and
negatives both mined among several candidates). Weights: tests/torch_reference.randomize_
(BN running statistics away from 0 / 1, logits O(1) so the probability terms matter), in
float32, converted to Flax by reid_jax.torch_weights.

Precision: both sides run in float64 from the same float32-representable weights. Adam's first
steps are sign-like (g / (|g| + eps)), so in float32 a gradient element at rounding level
(near-cancelling BN shifts; local_conv's bias feeds a train-mode BN, its true gradient is 0)
moves by up to 2 lr on noise, and a self-distance is sqrt of rounding noise (test_aligned.py);
in float64 that noise is ~1e-16, under eps and the distances' 1e-12 clamp, and agreement is
limited by the summation orders of two float64 implementations through three steps: every loss
term of both models after every step, and every parameter and BN running statistic of both
models at the end, within REL = 1e-6 relative (Frobenius norm of the difference over that of
the tensor; measured <= 4e-14 on the losses, <= 9e-14 on the tensors), the error also <= 1e-3
of how far each tensor moved (measured <= 7e-12 of it; every tensor moved >= 2e-4).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from relative_errors import relative_error, state_dict_errors

from configs import aligned
from reid_jax import optim, torch_weights
from reid_jax.methods import get_method
from reid_jax.models import init_variables
from reid_jax.train import create_train_state, make_train_step

NUM_IDS, P, K = 8, 2, 4
IMAGE_SIZE = (64, 48)  # last stride 1: a 4 x 3 map
LAST_STRIDE = 1
EPOCHS = (1, 160, 200)  # lr 2e-4 (before the decay), then 1.26e-4 and 2e-5
NUM_MODELS = 2
REL = 1e-6
TERMS = ("loss", "global_loss", "local_loss", "id_loss", "pm_loss", "gdm_loss", "ldm_loss")
# Distinct weights, so a term given another's weight shows in the total.
LOSS = dict(global_weight=1.0, local_weight=0.5, id_weight=0.7, pm_weight=1.5, gdm_weight=0.2,
            ldm_weight=1.2, local_own_hard_mining=True, normalize_feature=True)


def small_config() -> ml_collections.ConfigDict:
    """configs/aligned.py (its schedule and optimiser) with 2 ResNet-18 models (last stride 1)
    at 64x48, a 2 x 4 PK batch and the loss terms of LOSS."""
    config = aligned.get_config()
    config.model.depth = 18
    config.model.last_stride = LAST_STRIDE
    config.model.num_models = NUM_MODELS
    config.data.image_size = IMAGE_SIZE
    config.data.ids_per_batch, config.data.instances_per_id = P, K
    config.loss.update(LOSS)
    return config


def make_batches(rng: np.random.Generator, steps: int) -> list[dict[str, np.ndarray]]:
    """`steps` PK batches over NUM_IDS ids: "image" [P*K, H, W, 3] float32, "label" [P*K] int32
    (shuffled). Each identity has a coarse 8 x 6 appearance; an image is it plus its own coarse
    noise, upsampled 8x, plus pixel noise: images of one identity look alike, so features (and
    the triplets' satisfied / violated split) are not all alike."""
    templates = rng.normal(size=(NUM_IDS, 8, 6, 3))
    batches = []
    for _ in range(steps):
        labels = rng.permutation(np.repeat(rng.choice(NUM_IDS, P, replace=False), K))
        coarse = templates[labels] + 0.5 * rng.normal(size=(P * K, 8, 6, 3))
        image = (np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
                 + 0.3 * rng.normal(size=(P * K, *IMAGE_SIZE, 3)))
        batches.append({"image": image.astype(np.float32), "label": labels.astype(np.int32)})
    return batches


def run_reid_jax(config: ml_collections.ConfigDict, initial: list[dict],
                 batches: list[dict[str, np.ndarray]]) -> tuple[list[dict], list[list[dict]]]:
    """The float64 trajectory through reid_jax's train step from `initial` (each model's
    {"params", "batch_stats"}, numpy float64): (each model's final variables (numpy), and per
    step each model's loss terms {name: float}, [step][model])."""
    with jax.enable_x64(True):
        method = get_method(config, NUM_IDS)
        assert method.num_models == NUM_MODELS
        method.model = method.model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *initial)
        params, batch_stats = {"model": stacked["params"]}, stacked["batch_stats"]
        lr_table = optim.learning_rates(config.optim, config.train.epochs)
        tx = method.optimizer(lr_table)
        state = create_train_state(params, batch_stats, tx, jax.random.PRNGKey(1))
        step = jax.jit(make_train_step(method, tx, lr_table))
        metrics = []
        for batch, epoch in zip(batches, EPOCHS, strict=True):
            state = state.replace(epoch=jnp.asarray(epoch, jnp.int32))
            state, step_metrics = step(state, {"image": batch["image"].astype(np.float64),
                                               "label": batch["label"]})
            assert float(step_metrics["lr"]) == pytest.approx(lr_table[epoch], rel=1e-7)
            metrics.append([{term: float(step_metrics[prefix + term]) for term in TERMS}
                            for prefix in ("", *(f"model{i}/" for i in range(1, NUM_MODELS)))])
        assert int(state.step) == len(batches)
        final = method.model_variables(state.params, state.batch_stats)
        return jax.tree.map(np.asarray, final), metrics


@pytest.mark.slow
def test_three_mutual_learning_steps_match_train_ml(torch):
    import torch_aligned as ta

    config = small_config()
    batches = make_batches(np.random.default_rng(0), len(EPOCHS))

    def torch_model(seed: int | None = None):
        """A float32 torch Model, randomised (torch_reference.randomize_) when `seed` is given,
        in train mode."""
        net = ta.Model(config.model.local_dim, NUM_IDS, depth=18, last_stride=LAST_STRIDE)
        if seed is not None:
            ta.torch_reference.randomize_(net, seed=seed, image_size=IMAGE_SIZE)
        return net.train()

    start_nets = [torch_model(seed) for seed in range(NUM_MODELS)]
    with jax.enable_x64(True):
        flax_model = get_method(config, NUM_IDS).model.clone(dtype=jnp.float64,
                                                             param_dtype=jnp.float64)
        target = jax.eval_shape(lambda: init_variables(flax_model, jax.random.PRNGKey(0),
                                                       IMAGE_SIZE))
    initial = [torch_weights.torch_to_flax({k: v.numpy() for k, v in net.state_dict().items()},
                                           target) for net in start_nets]
    final, jax_metrics = run_reid_jax(config, initial, batches)

    nets = [net.double() for net in start_nets]
    base_lr = config.optim.base_lr
    adams = [torch.optim.Adam(net.parameters(), lr=base_lr, betas=(0.9, 0.999), eps=1e-8,
                              weight_decay=5e-4) for net in nets]
    lr_table = optim.learning_rates(config.optim, config.train.epochs)
    learning_rates = []
    torch_cfg = ta.config_names(config.loss)
    for batch, epoch, expected in zip(batches, EPOCHS, jax_metrics, strict=True):
        for adam in adams:  # at the start of the epoch, as the train loop does
            ta.adjust_lr_exp(adam, base_lr, epoch, config.train.epochs,
                             config.optim.decay_start_epoch)
        lr = adams[0].param_groups[0]["lr"]
        assert lr == lr_table[epoch]  # exactly the value reid_jax's optimiser reads
        learning_rates.append(lr)
        images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).astype(np.float64))
        outputs = [net(images) for net in nets]  # phase 1: every model's forward
        results = ta.model_losses(torch_cfg, *(list(o) for o in zip(*outputs, strict=True)),
                                  torch.tensor(batch["label"], dtype=torch.long))
        for adam, result in zip(adams, results, strict=True):  # phase 2, model by model
            adam.zero_grad()
            result["loss"].backward()
            adam.step()
        for index, result in enumerate(results):
            for term in TERMS:
                want = float(result[term].detach())
                error = relative_error(expected[index][term], want)
                assert error <= REL, (epoch, index, term, expected[index][term], want)
                assert want > 0, (epoch, index, term)  # every term is exercised
    assert learning_rates[0] > learning_rates[1] > learning_rates[2]

    for index, net in enumerate(nets):
        expected_state = net.state_dict()
        actual_state = ta.load_flax_variables(torch_model().double(), final[index]).state_dict()
        initial_state = ta.load_flax_variables(torch_model().double(),
                                               initial[index]).state_dict()
        errors, moved = state_dict_errors(expected_state, actual_state, initial_state)
        assert len(errors) == 100 + 8  # ResNet-18: 20 convs, 20 BNs x 4; head: 2 + 4 + 2
        worst = max(errors, key=errors.get)
        assert errors[worst] <= REL, (index, worst, errors[worst])
        # Meaningful: every tensor moved by far more than the implementations disagree.
        for key, error in errors.items():
            assert error <= 1e-3 * moved[key], (index, key, error, moved[key])
