"""AlignedReID costs: the Market-scale local distance, and mutual learning's train step.

  python benchmarks/aligned_scale.py --phase=local        # 3,368 x 15,913, 8 stripes x 128
  python benchmarks/aligned_scale.py --phase=mutual       # 2 models vs 1, same batch
  python benchmarks/aligned_scale.py --phase=mutual --depth=50 --image_size=256,128 --batch=128

local: synthetic stripe features with structure (per id, per stripe centres + noise, a third
of the images shifted by one stripe), the query x gallery local distance on device in query
chunks and gallery blocks (reid_jax.eval), reduced to CMC / mAP as an evaluation does; wall
seconds (CPU seconds) of two calls, the first including compilation, and the peak RSS.
mutual: the jitted AlignedReID train step (global + local triplet, ID, and with 2 models the
probability and global-distance mutual terms), median seconds per step after warm-up, for
M = 1 and M = 2 models on the same batch (goal: M = 2 <= 2.0x M = 1).
"""

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARKET = (3368, 15913, 751)  # queries, gallery, test ids


def local_phase(chunk_size: int) -> None:
    from configs.aligned import get_config
    from reid_jax.eval import evaluate_features

    num_query, num_gallery, num_ids = MARKET
    rng = np.random.default_rng(0)
    stripes, dim = 8, 128
    centres = rng.normal(size=(num_ids + 1, stripes, dim)).astype(np.float32)

    def features(pids):
        local = centres[pids] + 0.7 * rng.normal(size=(len(pids), stripes, dim))
        shifted = rng.random(len(pids)) < 1 / 3
        local[shifted] = np.roll(local[shifted], 1, axis=1)
        return {"features": local.mean(axis=1).astype(np.float32),
                "local_features": np.maximum(local, 0).astype(np.float32),
                "pids": pids, "camids": rng.integers(0, 6, len(pids)), "feat_norm": False}

    query = features(rng.integers(1, num_ids + 1, num_query))
    gallery = features(rng.integers(0, num_ids + 1, num_gallery))
    config = get_config().eval
    config.distance, config.chunk_size = "local", chunk_size
    rows = []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = evaluate_features(query, gallery, config)["original"]
        rows.append(f"{time.perf_counter() - wall:.1f} ({time.process_time() - cpu:.1f})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"| local distance + CMC / mAP, {num_query} x {num_gallery}, {stripes} x {dim}, "
          f"chunk {chunk_size} | {', '.join(rows)} | {rss:.2f} | {100 * metrics['cmc'][0]:.2f} "
          f"| {100 * metrics['mAP']:.2f} |")


def mutual_phase(depth: int, image_size: tuple[int, int], batch: int, steps: int) -> None:
    from configs.aligned import get_config
    from reid_jax import optim
    from reid_jax.methods import get_method
    from reid_jax.train import create_train_state, make_train_step

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, *image_size, 3)), jnp.float32)
    labels = jnp.repeat(jnp.arange(batch // 4, dtype=jnp.int32), 4)
    seconds = {}
    for models in (1, 2):
        config = get_config("mutual")
        config.model.depth, config.model.num_models = depth, models
        config.data.image_size = image_size
        config.loss.local_weight = config.loss.id_weight = config.loss.pm_weight = 1.0
        method = get_method(config, batch // 4)
        lr_table = optim.learning_rates(config.optim, config.train.epochs)
        tx = method.optimizer(lr_table)
        key = jax.random.PRNGKey(0)
        state = create_train_state(*method.init(key), tx, key)
        step = jax.jit(make_train_step(method, tx, lr_table), donate_argnums=0)
        times = []
        for index in range(steps + 2):  # compile, warm up, then time
            start = time.perf_counter()
            state, metrics = step(state, {"image": images, "label": labels})
            jax.block_until_ready(metrics["loss"])
            if index >= 2:
                times.append(time.perf_counter() - start)
        seconds[models] = statistics.median(times)
    print(f"| ResNet-{depth} {image_size[0]}x{image_size[1]}, batch {batch} | "
          f"{seconds[1]:.3f} | {seconds[2]:.3f} | {seconds[2] / seconds[1]:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("local", "mutual"), required=True)
    parser.add_argument("--chunk_size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--image_size", default="128,96", help="H,W in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} | jax {jax.__version__}")
    if args.phase == "local":
        print("| phase | seconds: wall (CPU), 2 calls | peak RSS GB | rank-1 | mAP |")
        print("|---|---:|---:|---:|---:|")
        local_phase(args.chunk_size)
    else:
        print("| model | s/step, 1 model | s/step, 2 models | ratio |")
        print("|---|---:|---:|---:|")
        mutual_phase(args.depth, tuple(int(n) for n in args.image_size.split(",")),
                     args.batch, args.steps)


if __name__ == "__main__":
    main()
