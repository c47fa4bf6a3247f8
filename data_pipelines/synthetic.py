"""A synthetic re-ID dataset in the Market-1501 layout, for the demo config and the tests.

Every identity is a drawn figure whose look is fixed by the id: upper-body colour and texture
(plain, stripes, checks), lower-body colour and cut (trousers, shorts, skirt), hair and skin
tone, build, and a bag on one side or none. Every camera changes how it looks: background,
colour cast and brightness, blur and sensor noise; every shot adds crop jitter (shift, scale),
the facing direction (mirror) and a little lighting noise. So ids are learnable across cameras,
and not from one camera's colours. Seeded and deterministic (each image has its own generator,
so the order of writing does not matter).

Layout: bounding_box_train/ (train ids 1..num_train_ids), and for the test ids (the next
num_test_ids numbers, disjoint from train, like Market) query/ (the first image of each id in
each camera) and bounding_box_test/ (the others). Names `0003_c2s1_000025_00.jpg`.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from data_pipelines.datasets.market1501 import SPLIT_FOLDERS

SPEC_FILE = "synthetic.json"
DEMO_SPEC = {"num_train_ids": 100, "num_test_ids": 50, "num_cameras": 4,
             "images_per_id_per_camera": 4, "image_size": (128, 64), "seed": 0}
IDENTITY, CAMERA, SHOT = 0, 1, 2  # SeedSequence words


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a person looks like (colours are RGB in [0, 1]; sizes are shares of W or H)."""

    upper: np.ndarray
    upper_second: np.ndarray
    texture: int  # 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks
    period: float  # stripe period, share of H
    lower: np.ndarray
    cut: int  # 0 trousers, 1 shorts, 2 skirt
    skin: np.ndarray
    hair: np.ndarray
    half_width: float  # torso half-width, share of W
    waist: float  # torso / legs boundary, share of H
    bag: int  # 0 none, 1 left, 2 right
    bag_colour: np.ndarray


@dataclasses.dataclass(frozen=True)
class Camera:
    """How a camera renders: background colours, colour gain [3], blur sigma (px), noise std."""

    background_top: np.ndarray
    background_bottom: np.ndarray
    gain: np.ndarray
    blur: float
    noise: float


def draw_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        upper=rng.uniform(0.05, 0.95, 3), upper_second=rng.uniform(0.05, 0.95, 3),
        texture=int(rng.integers(4)), period=rng.uniform(0.04, 0.1),
        lower=rng.uniform(0.05, 0.8, 3), cut=int(rng.integers(3)),
        skin=np.array([0.85, 0.65, 0.5]) * rng.uniform(0.55, 1.1),
        hair=rng.uniform(0.0, 0.45, 3), half_width=rng.uniform(0.16, 0.26),
        waist=rng.uniform(0.45, 0.58), bag=int(rng.integers(3)),
        bag_colour=rng.uniform(0.05, 0.95, 3))


def draw_camera(rng: np.random.Generator) -> Camera:
    return Camera(background_top=rng.uniform(0.2, 0.9, 3),
                  background_bottom=rng.uniform(0.1, 0.7, 3),
                  gain=rng.uniform(0.75, 1.25, 3) * rng.uniform(0.7, 1.2),
                  blur=rng.uniform(0.0, 1.2), noise=rng.uniform(0.01, 0.05))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, 3] float (edges replicated)."""
    radius = int(np.ceil(2 * sigma))
    if radius == 0:
        return image
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in range(3)],
                        mode="edge")
        size = image.shape[axis]
        image = sum(t * np.take(padded, np.arange(k, k + size), axis=axis)
                    for k, t in enumerate(taps))
    return image


def render(person: Identity, camera: Camera, rng: np.random.Generator,
           size: tuple[int, int]) -> np.ndarray:
    """One shot of `person` by `camera`: uint8 [H, W, 3]."""
    height, width = size
    scale = rng.uniform(0.9, 1.1)
    y = (np.arange(height)[:, None] + 0.5) / height
    x = (np.arange(width)[None, :] + 0.5) / width
    y = (y - 0.5 - rng.uniform(-0.05, 0.05)) / scale + 0.5  # crop jitter: body coordinates
    x = (x - 0.5 - rng.uniform(-0.06, 0.06)) / scale + 0.5
    if rng.random() < 0.5:  # facing the other way
        x = 1 - x
    y, x = np.broadcast_arrays(y, x)
    dx = np.abs(x - 0.5)
    top, bottom = camera.background_top, camera.background_bottom
    image = top + (bottom - top) * y[..., None]

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        image[mask] = colour

    legs = (y >= person.waist) & (y < 0.95) & (dx > 0.015)
    legs &= dx < (person.half_width * (1.3 if person.cut == 2 else 0.85))
    paint(legs, person.lower)
    if person.cut == 1:  # shorts
        paint(legs & (y > person.waist + 0.6 * (0.95 - person.waist)), person.skin)
    paint((y >= 0.93) & (y < 0.97) & (dx < person.half_width * 0.85) & (dx > 0.015),
          np.array([0.1, 0.1, 0.1]))
    torso = (y >= 0.2) & (y < person.waist) & (dx < person.half_width)
    arms = (y >= 0.21) & (y < person.waist - 0.02) & (dx >= person.half_width) & (
        dx < person.half_width + 0.07)
    band_y, band_x = np.floor(y / person.period), np.floor(x * 0.5 / person.period)
    second = {0: np.zeros_like(y, bool), 1: band_y % 2 == 1, 2: band_x % 2 == 1,
              3: (band_y + band_x) % 2 == 1}[person.texture]
    paint(torso | arms, person.upper)
    paint((torso | arms) & second, person.upper_second)
    head = ((y - 0.12) / 0.085) ** 2 + ((x - 0.5) / 0.16) ** 2 < 1
    paint(head, person.skin)
    paint(head & (y < 0.1), person.hair)
    if person.bag:
        side = x - 0.5 if person.bag == 2 else 0.5 - x
        paint((y >= 0.3) & (y < 0.5) & (side > person.half_width + 0.05)
              & (side < person.half_width + 0.2), person.bag_colour)

    image = blur(image * camera.gain * rng.uniform(0.92, 1.08), camera.blur)
    image = image + rng.normal(0, camera.noise, image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def write_synthetic_market(root: str | Path, num_train_ids: int, num_test_ids: int,
                           num_cameras: int, images_per_id_per_camera: int,
                           image_size: tuple[int, int] = (128, 64), seed: int = 0) -> Path:
    """Writes the dataset under `root` (created); returns `root`. image_size is (H, W)."""
    if not 2 <= num_cameras <= 9:
        raise ValueError(f"num_cameras={num_cameras}: Market names hold cameras 1-9, and "
                         "queries need a second camera")
    if images_per_id_per_camera < 2:
        raise ValueError(f"images_per_id_per_camera={images_per_id_per_camera}: each test id "
                         "needs a query and a gallery image per camera")
    if num_train_ids < 1 or num_test_ids < 1 or num_train_ids + num_test_ids > 9999:
        raise ValueError(f"num_train_ids={num_train_ids}, num_test_ids={num_test_ids}: each "
                         "must be >= 1, together at most 9999")
    root = Path(root)
    for folder in SPLIT_FOLDERS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    cameras = [draw_camera(np.random.default_rng([seed, CAMERA, c])) for c in range(num_cameras)]
    for pid in range(1, num_train_ids + num_test_ids + 1):
        person = draw_identity(np.random.default_rng([seed, IDENTITY, pid]))
        for cam, camera in enumerate(cameras):
            for shot in range(images_per_id_per_camera):
                rng = np.random.default_rng([seed, SHOT, pid, cam, shot])
                image = render(person, camera, rng, tuple(image_size))
                split = ("train" if pid <= num_train_ids else "query" if shot == 0
                         else "gallery")
                name = f"{pid:04d}_c{cam + 1}s1_{25 * shot:06d}_00.jpg"
                path = root / SPLIT_FOLDERS[split] / name
                path.write_bytes(tf.io.encode_jpeg(image, quality=95).numpy())
    return root


def ensure_synthetic_market(root: str | Path, **spec) -> Path:
    """The synthetic dataset of `spec` (write_synthetic_market's arguments) under `root`: reused
    when `root/synthetic.json` records the same spec, else written (replacing an older synthetic
    dataset there). Refuses to write into a non-empty folder that is not a synthetic dataset.
    Written beside `root` and renamed into place, so processes that race (several hosts of one
    run) all end with one whole dataset."""
    root = Path(root)
    spec = dict(spec, image_size=list(spec.get("image_size", (128, 64))))
    marker = root / SPEC_FILE
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return root
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and holds no {SPEC_FILE}: not writing a "
                              "synthetic dataset there")
    root.parent.mkdir(parents=True, exist_ok=True)
    fresh = root.parent / f".{root.name}.tmp-{os.getpid()}"
    write_synthetic_market(fresh, **spec)
    (fresh / SPEC_FILE).write_text(json.dumps(spec))
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    try:
        os.rename(fresh, root)
    except OSError:  # another process renamed its copy first
        if not marker.is_file():
            raise
        shutil.rmtree(fresh)
    return root
