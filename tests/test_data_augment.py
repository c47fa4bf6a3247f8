"""Train augmentation against BoT's transforms written in PyTorch (flip, pad, crop, ToTensor,
Normalize, and RandomErasing's code) driven by the same fixed draws, for the numpy, jax.numpy and
tf.experimental.numpy backends; plus statistics over many draws against the reference loop."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.augment import (
    AugmentConfig,
    augment_batch,
    draw_uniforms,
    normalize,
    params_from_uniforms,
    sample_params,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def config(size=(256, 128), pad=10, erase_fill="mean", erase_prob=0.5) -> AugmentConfig:
    return AugmentConfig(image_size=size, flip_prob=0.5, pad=pad, erase_prob=erase_prob,
                         erase_fill=erase_fill, mean=MEAN, std=STD)


class Replay:
    """Stands in for python's `random` in the reference: each kind of call returns the next of
    its own fixed U[0, 1) draws (the erase decision, areas, aspects, positions of image i)."""

    def __init__(self, u: dict, i: int):
        self.streams = {(0, 1): iter([u["erase"][i]]), (0.02, 0.4): iter(u["area"][i]),
                        (0.3, 1 / 0.3): iter(u["aspect"][i])}
        self.positions = iter(u["position"][i])

    def uniform(self, a, b):
        return a + (b - a) * next(self.streams[(a, b)])

    def randint(self, a, b):
        return a + math.floor(next(self.positions) * (b - a + 1))


class RandomErasing:
    """BoT's data/transforms/transforms.py RandomErasing, verbatim but for `rand`."""

    def __init__(self, rand, probability=0.5, sl=0.02, sh=0.4, r1=0.3, mean=MEAN):
        self.rand, self.probability, self.mean = rand, probability, mean
        self.sl, self.sh, self.r1 = sl, sh, r1

    def __call__(self, img):
        if self.rand.uniform(0, 1) >= self.probability:
            return img
        for _attempt in range(100):
            area = img.size()[1] * img.size()[2]
            target_area = self.rand.uniform(self.sl, self.sh) * area
            aspect_ratio = self.rand.uniform(self.r1, 1 / self.r1)
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < img.size()[2] and h < img.size()[1]:
                x1 = self.rand.randint(0, img.size()[1] - h)
                y1 = self.rand.randint(0, img.size()[2] - w)
                img[0, x1:x1 + h, y1:y1 + w] = self.mean[0]
                img[1, x1:x1 + h, y1:y1 + w] = self.mean[1]
                img[2, x1:x1 + h, y1:y1 + w] = self.mean[2]
                return img
        return img


def reference_train_transform(torch, image: np.ndarray, u: dict, i: int, cfg: AugmentConfig):
    """uint8 [H, W, 3] already at (H, W) -> float32 [H, W, 3], torchvision semantics:
    RandomHorizontalFlip -> Pad(pad, 0) -> RandomCrop((H, W)) -> ToTensor -> Normalize ->
    RandomErasing (fill `mean`, or 0 for erase_fill "zero")."""
    height, width = cfg.image_size
    img = torch.from_numpy(image).permute(2, 0, 1)  # CHW uint8, like PIL -> tensor
    if u["flip"][i] < cfg.flip_prob:  # torchvision: torch.rand(1) < p
        img = img.flip(-1)
    img = torch.nn.functional.pad(img, (cfg.pad,) * 4)  # zeros on every side
    top = math.floor(u["crop"][i, 0] * (img.shape[1] - height + 1))  # randint(0, h - th)
    left = math.floor(u["crop"][i, 1] * (img.shape[2] - width + 1))
    img = img[:, top:top + height, left:left + width]
    tensor = img.float().div(255)
    tensor = tensor.sub(torch.tensor(MEAN)[:, None, None]).div(torch.tensor(STD)[:, None, None])
    fill = MEAN if cfg.erase_fill == "mean" else (0.0, 0.0, 0.0)
    tensor = RandomErasing(Replay(u, i), cfg.erase_prob, mean=fill)(tensor)
    return tensor.permute(1, 2, 0).numpy()


def fixed_draws(n: int, seed: int) -> dict:
    """Random draws with a few forced cases: rejected first attempts, no erasing, edges."""
    u = draw_uniforms(np.random.default_rng(seed), n)
    u["erase"][:4] = (0.1, 0.1, 0.9, 0.4999)
    u["area"][0, :3], u["aspect"][0, :3] = 0.999, 0.0  # too wide: two attempts rejected
    u["area"][1, 0], u["aspect"][1, 0] = 0.0, 0.5
    u["crop"][2] = (0.0, 0.99999)
    u["position"][3] = (0.99999, 0.0)
    u["flip"][:4] = (0.2, 0.7, 0.2, 0.7)
    return u


def run_backend(backend: str, images: np.ndarray, params: dict, cfg: AugmentConfig):
    """augment_batch under numpy, jax.jit, or tf.function(jit_compile=True) with tnp."""
    if backend == "numpy":
        return augment_batch(images, params, cfg, np)
    if backend == "jax":
        return np.asarray(jax.jit(lambda x, p: augment_batch(x, p, cfg, jnp))(images, params))
    tf = pytest.importorskip("tensorflow")
    tnp = tf.experimental.numpy
    fn = tf.function(lambda x, p: augment_batch(x, p, cfg, tnp), jit_compile=True)
    return fn(images, params).numpy()


@pytest.mark.parametrize("backend", ["numpy", "jax", "tf"])
@pytest.mark.parametrize("size,pad,fill", [((256, 128), 10, "mean"), ((40, 24), 3, "zero")])
def test_fixed_draws_match_the_pytorch_reference(torch, backend, size, pad, fill):
    cfg = config(size, pad, fill)
    n = 12
    images = np.random.default_rng(0).integers(0, 256, (n, *size, 3), dtype=np.uint8)
    u = fixed_draws(n, seed=1)
    ours = run_backend(backend, images, params_from_uniforms(u, cfg), cfg)
    expected = np.stack([reference_train_transform(torch, images[i], u, i, cfg)
                         for i in range(n)])
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    if backend == "numpy":  # same float32 operations in the same order: bit-identical
        np.testing.assert_array_equal(ours, expected)
    else:  # XLA may multiply by reciprocals: within float32 rounding
        np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
    # The forced cases happened: rejected attempts then an erase; no erase; flips.
    erased = np.isclose(expected, np.asarray(cfg.fill)).all(-1).any((1, 2))
    assert erased[0] and erased[1] and not erased[2]


def test_normalize_matches_to_tensor_and_normalize(torch):
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    tensor = tensor.sub(torch.tensor(MEAN)[:, None, None]).div(torch.tensor(STD)[:, None, None])
    np.testing.assert_array_equal(normalize(image, config()), tensor.permute(1, 2, 0).numpy())


def reference_erase_box(rand: random.Random, height: int, width: int):
    """The reference's loop with python's own `random`: (h, w, top, left) or None."""
    if rand.uniform(0, 1) >= 0.5:
        return None
    for _ in range(100):
        target_area = rand.uniform(0.02, 0.4) * height * width
        aspect_ratio = rand.uniform(0.3, 1 / 0.3)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < width and h < height:
            return h, w, rand.randint(0, height - h), rand.randint(0, width - w)
    return None


def test_statistics_over_many_draws():
    n, (height, width) = 20000, (256, 128)
    params = sample_params(np.random.default_rng(0), n, config())
    flip_rate = params["flip"].mean()
    assert abs(flip_rate - 0.5) < 4 * math.sqrt(0.25 / n)
    crops = np.concatenate([params["crop_y"], params["crop_x"]])
    assert set(crops.tolist()) == set(range(21))
    assert abs(crops.mean() - 10) < 4 * math.sqrt(np.var(np.arange(21)) / (2 * n))

    erased = params["erase_h"] > 0
    h, w = params["erase_h"][erased], params["erase_w"][erased]
    top, left = params["erase_y"][erased], params["erase_x"][erased]
    assert (h < height).all() and (w < width).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    assert area.min() >= 0.02 * 0.9 and area.max() <= 0.4 * 1.1
    assert (h / w).min() >= 0.3 * 0.9 and (h / w).max() <= (1 / 0.3) * 1.1
    assert ((params["erase_w"] == 0) == ~erased).all()

    rand = random.Random(0)
    boxes = [b for b in (reference_erase_box(rand, height, width) for _ in range(n)) if b]
    ref = np.array(boxes, dtype=float)
    assert abs(erased.mean() - len(boxes) / n) < 4 * math.sqrt(2 * 0.25 / n)
    for ours, theirs in ((h, ref[:, 0]), (w, ref[:, 1]), (top / (height - h),
                         ref[:, 2] / (height - ref[:, 0])), (area, ref[:, 0] * ref[:, 1]
                                                            / (height * width))):
        spread = math.sqrt(ours.var() / len(ours) + theirs.var() / len(theirs))
        assert abs(ours.mean() - theirs.mean()) < 5 * spread


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="config.data.erase_fill='grey'.*'mean', 'zero'"):
        config(erase_fill="grey")
    with pytest.raises(ValueError, match="config.data.erase_prob"):
        config(erase_prob=1.5)
