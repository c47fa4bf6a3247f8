"""Sustained throughput of the train input pipeline (decode once, PK sampling, flip, pad + crop,
normalise, random erasing, batching) on real JPEGs, and where the augmentation runs best.

  python benchmarks/input_pipeline.py                 # ../shared/data/cuhk03-labeled/train
  python benchmarks/input_pipeline.py --root=/data/cuhk03-labeled --batches=200

Reads the shared cuhk03-labeled folder (64x128 JPEGs) with the BoT data config (resize to 256x128,
P=16 x K=4, every augmentation on) and prints a table of images per second:
  - filling the decoded-image cache (once per run),
  - the train iterator as the trainer uses it (tf.data, augmentation XLA-compiled in the map),
  - the same with cache=False (JPEG decode + resize in every batch),
  - uint8 batches from tf.data with the augmentation under jax.jit on the CPU in the consumer loop
    (the "on device" option), and
  - the augmentation alone on one batch, per backend.
"""

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.market import get_config  # noqa: E402
from data_pipelines.augment import AugmentConfig, augment_batch, sample_params  # noqa: E402
from data_pipelines.datasets import get_dataset  # noqa: E402
from data_pipelines.images import ImageStore  # noqa: E402
from data_pipelines.pipeline import augment_params, make_train_iterator  # noqa: E402
from data_pipelines.sampler import PKSampler  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuhk03-labeled"


def images_per_second(batches, count: int, warmup: int) -> float:
    """Images per second over `count` batches of the iterator `batches`, after `warmup`."""
    for _ in range(warmup):
        next(batches)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(batches))
    return images / (time.perf_counter() - start)


def train_images(iterator):
    while True:
        yield next(iterator).batch["image"]


def jax_augmented(store: ImageStore, pids: np.ndarray, data_config, seed: int):
    """uint8 batches gathered by tf.data, augmented by jax.jit in the consuming loop."""
    cfg = AugmentConfig.from_config(data_config)
    sampler = PKSampler(pids, data_config.ids_per_batch, data_config.instances_per_id, seed)
    size = sampler.batch_size

    def plans():
        for item in sampler:
            yield item.indices, augment_params(seed, item.epoch, item.step, size, cfg)

    signature = (tf.TensorSpec((size,), tf.int64),
                 {k: tf.TensorSpec((size,), tf.bool if k == "flip" else tf.int32)
                  for k in sample_params(np.random.default_rng(0), 1, cfg)})
    uint8 = (tf.data.Dataset.from_generator(plans, output_signature=signature)
             .map(lambda idx, p: (store.fetch(idx), p), num_parallel_calls=tf.data.AUTOTUNE)
             .prefetch(tf.data.AUTOTUNE).as_numpy_iterator())
    augment = jax.jit(functools.partial(augment_batch, cfg=cfg, xp=jnp))
    for images, params in uint8:
        yield np.asarray(augment(images, params))


def augmentation_alone(data_config, repeats: int) -> dict[str, float]:
    """Images per second of augment_batch on one fixed uint8 batch, per backend."""
    cfg = AugmentConfig.from_config(data_config)
    size = data_config.ids_per_batch * data_config.instances_per_id
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (size, *cfg.image_size, 3), dtype=np.uint8)
    params = sample_params(rng, size, cfg)
    tf_images, tf_params = tf.constant(images), {k: tf.constant(v) for k, v in params.items()}
    tf_fn = functools.partial(augment_batch, cfg=cfg, xp=tnp)
    tf_xla, tf_plain = tf.function(tf_fn, jit_compile=True), tf.function(tf_fn)
    jax_fn = jax.jit(functools.partial(augment_batch, cfg=cfg, xp=jnp))
    runs = {
        "tf.experimental.numpy, XLA (tf.function jit_compile)":
            lambda: tf_xla(tf_images, tf_params).numpy(),
        "tf.experimental.numpy, no XLA (tf.function)":
            lambda: tf_plain(tf_images, tf_params).numpy(),
        "jax.numpy, jax.jit (CPU)": lambda: np.asarray(jax_fn(images, params)),
        "numpy": lambda: augment_batch(images, params, cfg, np),
    }
    result = {}
    for name, run in runs.items():
        run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        result[name] = size * repeats / (time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the cuhk03-labeled folder")
    parser.add_argument("--batches", type=int, default=150, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    data_config = get_config().data
    records = get_dataset("cuhk03_pairs", args.root).train
    print(f"{len(records)} train images from {args.root}; image_size {data_config.image_size}, "
          f"P={data_config.ids_per_batch} K={data_config.instances_per_id}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; jax on "
          f"{jax.devices()[0].platform}")
    rows = []
    start = time.perf_counter()
    iterator = make_train_iterator(records, data_config, seed=0)
    rows.append(("decode + resize into the cache (once)",
                 len(records) / (time.perf_counter() - start)))
    rows.append(("train iterator: tf.data, augmentation XLA-compiled in the map (default)",
                 images_per_second(train_images(iterator), args.batches, args.warmup)))
    rows.append(("uint8 batches from tf.data + augmentation under jax.jit (CPU) in the loop",
                 images_per_second(jax_augmented(iterator.store, records.pids, data_config, 0),
                                   args.batches, args.warmup)))
    del iterator  # frees the decoded cache
    uncached_config = get_config().data
    uncached_config.cache = False
    uncached = make_train_iterator(records, uncached_config, seed=0)
    rows.append(("train iterator, cache=False (decode + resize every batch)",
                 images_per_second(train_images(uncached), args.batches // 3, args.warmup)))
    for name, rate in augmentation_alone(data_config, repeats=20).items():
        rows.append((f"augmentation alone, one batch: {name}", rate))

    width = max(len(name) for name, _ in rows)
    print(f"\n| {'variant':<{width}} | img/s |\n|{'-' * (width + 2)}|------:|")
    for name, rate in rows:
        print(f"| {name:<{width}} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
