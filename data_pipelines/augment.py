"""BoT train augmentation and test transform (REFERENCE section 4), after the resize.

Train, in order: horizontal flip (p) -> zero-pad `pad` px -> random crop back to (H, W) -> scale
to [0, 1] -> normalise with mean / std -> random erasing. Test: normalise only. (The bilinear
resize to (H, W) happens once, when images are decoded: `images.decode_resize`.)

The randomness is split from the pixels, so either side can be checked on its own:
  draw_uniforms(rng, n)          float64 U[0, 1) draws (numpy, on the host)
  params_from_uniforms(u, cfg)   -> integer parameters per image, as the reference computes them
                                    with python floats (flip, crop offsets, erase box)
  augment_batch(images, params, cfg, xp)
                                 -> pixels; one array program for numpy (`xp=np`), jax.numpy and
                                    tf.experimental.numpy (jit-compiled inside tf.data)
Random erasing (BoT's RandomErasing): with probability erase_prob, up to 100 attempts of
area A = U(0.02, 0.4) * H * W, aspect r = U(0.3, 1/0.3), h = round(sqrt(A r)),
w = round(sqrt(A / r)), accepted when h < H and w < W; top-left uniform over valid positions.
The box is filled with `mean` AFTER normalisation (the reference quirk, erase_fill "mean") or
with 0 (erase_fill "zero").
"""

import dataclasses
from types import ModuleType

import ml_collections
import numpy as np

ERASE_ATTEMPTS = 100
ERASE_AREA = (0.02, 0.4)  # (sl, sh): erased share of the image area
ERASE_MIN_ASPECT = 0.3  # r1: aspect ratio h / w drawn from U(r1, 1 / r1)
ERASE_FILLS = ("mean", "zero")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The `config.data` keys the transforms read. image_size is (H, W) in pixels."""

    image_size: tuple[int, int]
    flip_prob: float
    pad: int
    erase_prob: float
    erase_fill: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        checks = {
            "image_size": len(self.image_size) == 2 and min(self.image_size) > 0,
            "flip_prob": 0 <= self.flip_prob <= 1,
            "pad": self.pad >= 0,
            "erase_prob": 0 <= self.erase_prob <= 1,
            "erase_fill": self.erase_fill in ERASE_FILLS,
            "mean": len(self.mean) == 3,
            "std": len(self.std) == 3 and min(self.std) > 0,
        }
        for key, ok in checks.items():
            if not ok:
                hint = f"; expected one of {ERASE_FILLS}" if key == "erase_fill" else ""
                raise ValueError(f"config.data.{key}={getattr(self, key)!r} is invalid{hint}")

    @classmethod
    def from_config(cls, data_config: ml_collections.ConfigDict) -> "AugmentConfig":
        return cls(image_size=tuple(int(s) for s in data_config.image_size),
                   flip_prob=float(data_config.flip_prob), pad=int(data_config.pad),
                   erase_prob=float(data_config.erase_prob),
                   erase_fill=str(data_config.erase_fill), mean=tuple(data_config.mean),
                   std=tuple(data_config.std))

    @property
    def fill(self) -> np.ndarray:
        """[3] float32 value written into erased pixels (normalised space)."""
        return np.asarray(self.mean if self.erase_fill == "mean" else (0, 0, 0), np.float32)


def draw_uniforms(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The float64 U[0, 1) draws of `n` images: flip [n], crop [n, 2] (row, col), erase [n],
    area and aspect [n, ERASE_ATTEMPTS], position [n, 2] (row, col)."""
    return {"flip": rng.random(n), "crop": rng.random((n, 2)), "erase": rng.random(n),
            "area": rng.random((n, ERASE_ATTEMPTS)), "aspect": rng.random((n, ERASE_ATTEMPTS)),
            "position": rng.random((n, 2))}


def uniform_int(u: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """randint(0, count - 1) from a U[0, 1) draw: floor(u * count)."""
    return np.floor(u * count).astype(np.int32)


def params_from_uniforms(u: dict[str, np.ndarray], cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Per-image parameters [n]: flip (bool), crop_y / crop_x (offsets in the padded image,
    int32 0..2*pad), erase_y / erase_x / erase_h / erase_w (int32 box; h = w = 0: no erasing).

    The erase box follows the reference in float64 (= python floats): area =
    uniform(sl, sh) * H * W, aspect = uniform(r1, 1 / r1), uniform(a, b) = a + (b - a) * u,
    round() half to even; the first accepted attempt wins."""
    height, width = cfg.image_size
    low, high = ERASE_AREA
    area = (low + (high - low) * u["area"]) * (height * width)
    aspect = ERASE_MIN_ASPECT + (1 / ERASE_MIN_ASPECT - ERASE_MIN_ASPECT) * u["aspect"]
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    accepted = (w < width) & (h < height)
    first = np.argmax(accepted, axis=1)[:, None]
    erase = (u["erase"] < cfg.erase_prob) & accepted.any(axis=1)
    h = np.where(erase, np.take_along_axis(h, first, 1)[:, 0], 0)
    w = np.where(erase, np.take_along_axis(w, first, 1)[:, 0], 0)
    return {
        "flip": u["flip"] < cfg.flip_prob,
        "crop_y": uniform_int(u["crop"][:, 0], 2 * cfg.pad + 1),
        "crop_x": uniform_int(u["crop"][:, 1], 2 * cfg.pad + 1),
        "erase_y": np.where(erase, uniform_int(u["position"][:, 0], height - h + 1), 0),
        "erase_x": np.where(erase, uniform_int(u["position"][:, 1], width - w + 1), 0),
        "erase_h": h.astype(np.int32),
        "erase_w": w.astype(np.int32),
    }


def sample_params(rng: np.random.Generator, n: int, cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Random parameters of `n` images (see `params_from_uniforms`)."""
    return params_from_uniforms(draw_uniforms(rng, n), cfg)


def normalize(images, cfg: AugmentConfig, xp: ModuleType = np):
    """uint8 [..., 3] -> float32 (x / 255 - mean) / std, the reference's ToTensor + Normalize."""
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    return (xp.asarray(images, dtype=xp.float32) / np.float32(255) - mean) / std


def augment_batch(images, params: dict, cfg: AugmentConfig, xp: ModuleType = np):
    """The train transform after the resize: uint8 [B, H, W, 3] (H, W = cfg.image_size) and
    per-image `params` ([B] arrays of `params_from_uniforms`) -> float32 [B, H, W, 3].

    Flip, pad and crop are one gather: output pixel (i, j) reads source row
    crop_y + i - pad and column crop_x + j - pad of the flipped image, or the zero padding."""
    height, width = cfg.image_size
    rows = params["crop_y"][:, None] + xp.arange(height, dtype=xp.int32)[None, :] - cfg.pad
    cols = params["crop_x"][:, None] + xp.arange(width, dtype=xp.int32)[None, :] - cfg.pad
    cols = xp.where(params["flip"][:, None], width - 1 - cols, cols)
    inside = (((rows >= 0) & (rows < height))[:, :, None]
              & ((cols >= 0) & (cols < width))[:, None, :])
    source = (xp.clip(rows, 0, height - 1)[:, :, None] * width
              + xp.clip(cols, 0, width - 1)[:, None, :])
    pixels = xp.take_along_axis(xp.reshape(images, (-1, height * width, 3)),
                                xp.reshape(source, (-1, height * width, 1)), axis=1)
    x = normalize(xp.reshape(pixels, (-1, height, width, 3)), cfg, xp)
    x = xp.where(inside[..., None], x, normalize(np.zeros(3, np.uint8), cfg))
    return xp.where(erase_mask(params, cfg, xp)[..., None], cfg.fill, x)


def erase_mask(params: dict, cfg: AugmentConfig, xp: ModuleType = np):
    """[B, H, W] bool, True inside each image's erase box."""
    height, width = cfg.image_size
    ys = xp.arange(height, dtype=xp.int32)[None, :]
    xs = xp.arange(width, dtype=xp.int32)[None, :]
    top, left = params["erase_y"][:, None], params["erase_x"][:, None]
    in_rows = (ys >= top) & (ys < top + params["erase_h"][:, None])
    in_cols = (xs >= left) & (xs < left + params["erase_w"][:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]
