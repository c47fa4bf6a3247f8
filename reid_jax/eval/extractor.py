"""Features of any images, as `--mode=extract` computes them, from a trained model:

    from reid_jax import FeatureExtractor
    extractor = FeatureExtractor("runs/market", config)          # the latest run checkpoint
    features = extractor(["a.jpg", "b.png"])                    # float32 [2, D]
    features = extractor(pixels)                                # uint8 [N, H, W, 3], any size
    local = extractor.embed(images)["local_features"]           # AlignedReID: [N, S, d]

The preprocessing is the evaluation stream's (data_pipelines.pipeline.EvalStream): decoded and
resized as `data_pipelines.images.decode_resize` does, i.e. `PIL.Image.open(f).convert("RGB")
.resize((W, H), BILINEAR)`, here with Pillow itself (no TensorFlow); then normalised with
`config.data.mean` / `std` by `data_pipelines.augment.normalize` compiled by XLA, as the stream
runs it (XLA rewrites the divisions: numpy's (x / 255 - mean) / std is 1 ulp off for ~75% of
the (value, channel) pairs, XLA on the CPU equal for all of them). The forward is the
evaluation's (`eval.features.DeviceForward`): flip averaging and L2 normalisation per
`config.eval.flip` / `feat_norm`, every local device. Pillow is imported only for files, PIL
images and arrays that need resizing.
"""

import functools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines.augment import AugmentConfig, normalize
from reid_jax.eval.features import DeviceForward, embed_features
from reid_jax.validate import check_config

Image = Any  # a PIL.Image.Image (PIL is imported lazily)
ImageInput = str | os.PathLike | np.ndarray | Image
Images = ImageInput | Iterable[ImageInput]


class FeatureExtractor:
    """One model's evaluation features of images given as files, arrays or PIL images.

    Args:
      checkpoint: a variables checkpoint folder (`reid_jax.convert`, `--mode=export`), a run
        workdir (its run checkpoints, see `select`), or a PyTorch `.pth` of the config's method
        (BoT or AlignedReID layout) — whatever `--checkpoint=` takes, loaded by
        `reid_jax.run.load_model`.
      config: the model's config (`config.method`, `config.model`, `config.data.image_size`,
        `mean`, `std`, `config.eval.flip`, `feat_norm`).
      select: for a run workdir, its "latest" checkpoint or the "best" by mAP.
      batch_size: images per forward (default `config.data.eval_batch_size`), rounded up to a
        multiple of the local device count; the last batch is padded. The forward compiles once
        per extractor.

    Attributes: `method`, `origin` (where the variables came from), `image_size` (H, W),
    `augment_config` (the normalisation), `forward` (the on-device forward, variables placed).
    """

    def __init__(self, checkpoint: str | os.PathLike, config: ml_collections.ConfigDict, *,
                 select: str = "latest", batch_size: int | None = None):
        from reid_jax import run

        check_config(config)
        path = Path(checkpoint)
        if select not in run.RUN_SELECTORS:
            raise ValueError(f"select={select!r}: expected one of {run.RUN_SELECTORS}")
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path}: no such file or folder")
        is_run = (path / "checkpoints").is_dir()
        if select != "latest" and not is_run:
            raise ValueError(f"select={select!r} picks among a run workdir's checkpoints; "
                             f"{path} is not a run workdir (no checkpoints/ folder)")
        self.method, variables, self.origin = run.load_model(
            config, path, select if is_run else str(path))
        self.image_size = tuple(int(s) for s in config.data.image_size)
        self.augment_config = AugmentConfig.from_config(config.data)
        self._normalize = jax.jit(functools.partial(normalize, cfg=self.augment_config, xp=jnp))
        self.forward = DeviceForward(self.method.embed, variables, config.eval.flip,
                                     config.eval.feat_norm)
        devices = self.forward.device_count
        batch_size = batch_size or config.data.eval_batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.batch_size = math.ceil(batch_size / devices) * devices

    def __call__(self, images: Images) -> np.ndarray:
        """The global features of `images` (see `embed`): float32 [N, D]."""
        return self.embed(images)["features"]

    def embed(self, images: Images) -> dict[str, np.ndarray]:
        """{"features": float32 [N, D]} (+ "local_features" float32 [N, S, d] for AlignedReID)
        of `images`, in order: a uint8 array [N, H, W, 3], or an iterable whose items are image
        files (str / os.PathLike: JPEG, PNG, BMP, ...), PIL images or uint8 arrays [H, W, 3];
        a single file or PIL image is a batch of one. Images of another size than the model's
        are resized (PIL bilinear, from uint8)."""
        outputs, counts = [], []
        for pixels in self._batches(_as_items(images)):
            count = len(pixels)
            batch = np.zeros((self.batch_size, *self.image_size, 3), np.uint8)
            batch[:count] = pixels
            # Dispatched: the next batch decodes meanwhile. Padding rows are dropped below.
            outputs.append(self.forward(self._normalize(self.forward.shard(batch))))
            counts.append(count)
        if not outputs:
            raise ValueError("images: no image given")
        return {key: np.concatenate([np.asarray(out[key])[:count]
                                     for out, count in zip(outputs, counts, strict=True)])
                for key in outputs[0]}

    def features_fn(self, images: jax.Array) -> dict[str, jax.Array]:
        """The extractor's features as a pure JAX function (for jit / export), the variables as
        constants: float32 [B, H, W, 3] normalised -> {"features": [B, D], ...} float32."""
        variables = jax.device_get(self.forward.variables)
        return embed_features(self.method.embed, variables, images, self.forward.flip,
                              self.forward.feat_norm)

    def _batches(self, items: Sequence[ImageInput]) -> Iterator[np.ndarray]:
        """uint8 [<= batch_size, H, W, 3] at the model's size, in order."""
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            yield np.stack([self._pixels(item, f"images[{index}]")
                            for index, item in enumerate(chunk, start)])

    def _pixels(self, item: ImageInput, name: str) -> np.ndarray:
        """One image as uint8 [H, W, 3] at the model's size, as `decode_resize` makes it."""
        height, width = self.image_size
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[-1] != 3:
                raise ValueError(f"{name}: expected a uint8 array [H, W, 3] (RGB), got "
                                 f"{item.dtype} {list(item.shape)}")
            if item.shape[:2] == (height, width):
                return item
        from PIL import Image as PILImage  # only where decoding or resizing is needed

        if isinstance(item, np.ndarray):
            image = PILImage.fromarray(item)
        elif isinstance(item, (str, os.PathLike)):
            try:
                with PILImage.open(item) as opened:
                    image = opened.convert("RGB")
            except OSError as error:  # missing, unreadable or not an image
                raise ValueError(f"{name}: cannot read image {item}: {error}") from error
        elif isinstance(item, PILImage.Image):
            image = item.convert("RGB")
        else:
            raise TypeError(f"{name}: expected an image file path, a PIL image or a uint8 "
                            f"array [H, W, 3], got {type(item).__name__}")
        return np.asarray(image.resize((width, height), PILImage.BILINEAR))


def _as_items(images: Images) -> Sequence[ImageInput]:
    """`images` as a sequence of single images (see `FeatureExtractor.embed`)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected a uint8 array [N, H, W, 3] (RGB), got "
                             f"{images.dtype} {list(images.shape)}")
        return images
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Iterable):
        return [images]  # one file or PIL image; anything else is named by `_pixels`
    return images if isinstance(images, Sequence) else list(images)
