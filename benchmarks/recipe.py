"""A short real BoT recipe on the shared CUHK03 pairs (train/ + val/): reid_jax vs PyTorch.

  python benchmarks/recipe.py --impl=jax --root=../shared/data/cuhk03-labeled --epochs=12
  python benchmarks/recipe.py --impl=torch --root=... --epochs=12 --amp=bfloat16
  python benchmarks/recipe.py --impl=jax --depth=18 --image_size=128,64 --max_train_ids=100 \\
      --ids_per_batch=8 --epochs=2 --dtype=float32           # a CPU-sized run

Both implementations see the same images and the same augmentation: the JPEGs are decoded once
with Pillow into a uint8 cache at (H, W) (`Image.open(p).convert("RGB").resize((W, H),
Image.BILINEAR)`, bit-exact with data_pipelines.images), batches come from the project's PK
sampler (data_pipelines.sampler.PKSampler, seed 0) and the augmentation parameters of batch
(epoch, step) from `sample_params` seeded as data_pipelines.pipeline does. reid_jax augments on
the device inside its jitted train step (reid_jax.train.make_train_step, jitted by
parallel.jit_sharded_step); PyTorch gets the same parameters applied by the numpy
`augment_batch` in forked worker processes (the analogue of the original's DataLoader workers),
with the parity tests' model, BoT's losses, Adam + SGD centers (benchmarks/train_step.TorchBoT).
Both start from random weights (no ImageNet weights are reachable) with the lr schedule of
configs/market.py scaled to the epochs (`recipe_config`). Evaluation: val camera-A images as
queries, camera-B images as gallery, as the `cuhk03_pairs` reader defines; metrics by
reid_jax.eval for both (the Evaluator with `method.embed` for reid_jax; `evaluate_features` of
the PyTorch features).

With --emit, the result is one `@@RESULT {json}` line, logs go to stderr (benchmarks/gpu_suite.py
reads them).
Units: seconds are wall-clock; img/s counts training images per wall second; metrics in percent.
Nothing here imports TensorFlow.
"""

import argparse
import dataclasses
import json
import mmap
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import train_step

from data_pipelines.augment import AugmentConfig, augment_batch, normalize
from data_pipelines.datasets import get_dataset
from data_pipelines.sampler import PKSampler

SEED = 0


# --- data --------------------------------------------------------------------------------------

def recipe_config(depth: int, dtype: str, image_size, ids_per_batch: int, epochs: int,
                  base_lr: float | None = None):
    """configs/market.py (BoT) for `epochs`: warmup and milestones scaled from 120 epochs
    (warmup 10, milestones 40 and 70) to `epochs`, milestones after the warmup only."""
    config = train_step.step_config(depth, dtype, image_size, ids_per_batch, 4)
    config.train.epochs = epochs
    warmup = max(1, round(epochs * 10 / 120))
    config.optim.warmup_epochs = warmup
    config.optim.milestones = tuple(sorted({m for m in (round(epochs * 40 / 120),
                                                        round(epochs * 70 / 120))
                                            if warmup < m <= epochs}))
    if base_lr is not None:
        config.optim.base_lr = base_lr
    return config


def train_subset(dataset, max_train_ids: int | None):
    """(train paths, labels 0..C-1 int32, C): the first `max_train_ids` train ids (all: None)."""
    labels = dataset.train.pids
    keep = np.ones(len(labels), bool) if not max_train_ids else labels < max_train_ids
    num_classes = int(labels[keep].max()) + 1
    paths = [p for p, k in zip(dataset.train.paths, keep, strict=True) if k]
    return paths, labels[keep].astype(np.int32), num_classes


def recipe_num_classes(root: str, max_train_ids: int | None) -> int:
    """C of the recipe's training set (reads file names only)."""
    return train_subset(get_dataset("cuhk03_pairs", root), max_train_ids)[2]


def decode(paths, image_size, workers: int) -> np.ndarray:
    """uint8 [N, H, W, 3]: each JPEG decoded with Pillow, RGB, bilinear resize to (H, W)."""
    from PIL import Image

    height, width = image_size
    out = np.empty((len(paths), height, width, 3), np.uint8)

    def one(i: int) -> None:
        with Image.open(paths[i]) as image:
            out[i] = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(paths))))
    return out


def load_cache(root: str, image_size, max_train_ids: int | None,
               max_val_ids: int | None = None) -> dict:
    """The decoded train subset and val query / gallery with their ids (the first
    `max_val_ids` val ids; None: all), and the decode speed."""
    dataset = get_dataset("cuhk03_pairs", root)
    if max_val_ids:
        keep = set(np.unique(dataset.query.pids)[:max_val_ids].tolist())
        dataset = dataclasses.replace(
            dataset, **{split: getattr(dataset, split).select(
                np.isin(getattr(dataset, split).pids, list(keep)))
                for split in ("query", "gallery")})
    paths, labels, num_classes = train_subset(dataset, max_train_ids)
    workers = min(16, os.cpu_count() or 1)
    start = time.perf_counter()
    cache = {"train": decode(paths, image_size, workers), "train_labels": labels,
             "num_classes": num_classes}
    for split in ("query", "gallery"):
        records = getattr(dataset, split)
        cache[split] = {"images": decode(list(records.paths), image_size, workers),
                        "pids": records.pids, "camids": records.camids,
                        "paths": list(records.paths)}
    count = len(paths) + len(dataset.query) + len(dataset.gallery)
    cache["decode_s"] = time.perf_counter() - start
    cache["decode_img_s"] = count / cache["decode_s"]
    return cache


def batches_of(sampler: PKSampler, epochs: int):
    """The sampler's SamplerSteps of epochs 1..`epochs`."""
    for item in sampler:
        if item.epoch > epochs:
            return
        yield item


def images_per_epoch(labels: np.ndarray, config) -> int:
    """Training images in epoch 1 of the PK sampler (P*K x batches)."""
    sampler = PKSampler(labels, config.data.ids_per_batch, config.data.instances_per_id, SEED)
    return int(sampler.epoch_batches(1).size)


def eval_batches(split: dict, cfg: AugmentConfig, batch_size: int) -> list[dict]:
    """The eval stream `reid_jax.eval.extract_features` takes, from the uint8 cache normalised
    with `data_pipelines.augment.normalize`; the last batch padded (mask False)."""
    out = []
    images = split["images"]
    for start in range(0, len(images), batch_size):
        index = np.arange(start, min(start + batch_size, len(images)))
        pad = batch_size - len(index)
        image = normalize(images[index], cfg)
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), np.float32)])
        mask = np.arange(batch_size) < len(index)
        out.append({"image": image,
                    "pid": np.pad(split["pids"][index], (0, pad), constant_values=-1),
                    "camid": np.pad(split["camids"][index], (0, pad), constant_values=-1),
                    "path": np.asarray([split["paths"][i] for i in index] + [""] * pad, object),
                    "mask": mask})
    return out


def summary_of(results: dict) -> dict:
    """rank-1 / mAP / mINP (percent), original and re-ranked."""
    from reid_jax.eval import flat_summary

    return flat_summary(results)


# --- reid_jax ----------------------------------------------------------------------------------

class Timer:
    """Training-throughput bookkeeping: steady img/s from the third step on (the first two hold
    compilation / autotuning), and the time box."""

    def __init__(self, train_seconds: float, batch_size: int):
        self.start = time.perf_counter()
        self.train_seconds = train_seconds
        self.batch_size = batch_size
        self.steps = 0
        self.steady_start = None
        self.steady_images = 0
        self.first_step_s = None

    def over(self) -> bool:
        return time.perf_counter() - self.start > self.train_seconds

    def step_done(self, synchronize: Callable[[], object]) -> None:
        """Counts a dispatched step; `synchronize` (wait for it) runs after the first two only,
        which end the first-step time and start the steady window."""
        self.steps += 1
        if self.steps > 2:
            self.steady_images += self.batch_size
            return
        synchronize()
        if self.steps == 1:
            self.first_step_s = time.perf_counter() - self.start
        else:
            self.steady_start = time.perf_counter()

    def result(self) -> dict:
        elapsed = time.perf_counter() - self.start
        steady_s = time.perf_counter() - self.steady_start if self.steady_start else None
        return {"train_s": elapsed, "first_step_s": self.first_step_s, "steps": self.steps,
                "img_s": self.steady_images / steady_s if steady_s else None,
                "img_s_incl_first": self.steps * self.batch_size / elapsed}


def run_jax(cache: dict, config, train_seconds: float, log=print) -> dict:
    """Trains reid_jax for config.train.epochs (or until `train_seconds`), then evaluates."""
    import jax
    import jax.numpy as jnp

    from reid_jax import eval as reid_eval
    from reid_jax import optim, parallel
    from reid_jax.methods import get_method
    from reid_jax.train import create_train_state, make_train_step

    epochs, labels = config.train.epochs, cache["train_labels"]
    method = get_method(config, cache["num_classes"])
    rng = jax.random.PRNGKey(SEED)
    lr_table = optim.learning_rates(config.optim, epochs)
    tx = method.optimizer(lr_table)
    mesh = parallel.make_mesh()
    state = parallel.replicate(create_train_state(*method.init(rng), tx, rng), mesh)
    step_fn = parallel.jit_sharded_step(
        make_train_step(method, tx, lr_table, train_step.device_augment(config)), mesh)
    cfg = AugmentConfig.from_config(config.data)
    sampler = PKSampler(labels, config.data.ids_per_batch, config.data.instances_per_id, SEED)
    batch_size = sampler.batch_size

    def host_batches():
        for item in batches_of(sampler, epochs):
            yield item, {"image": cache["train"][item.indices], "label": labels[item.indices],
                         "augment": train_step.augment_params(SEED, item.epoch, item.step,
                                                              batch_size, cfg)}

    def to_device(pair):
        return parallel.global_batch(pair[1], mesh)

    timer, epochs_done, loss = Timer(train_seconds, batch_size), 0.0, float("nan")
    for (item, _), batch in parallel.prefetch_to_device(host_batches(), to_device):
        if timer.over():
            log(f"reid_jax: time box reached in epoch {item.epoch}, step {item.step}")
            break
        if item.step == 0:
            state = state.replace(epoch=parallel.replicate(jnp.asarray(item.epoch, jnp.int32),
                                                           mesh))
        state, metrics = step_fn(state, batch)
        timer.step_done(lambda: jax.block_until_ready(metrics["loss"]))  # noqa: B023 - runs now
        epochs_done = item.epoch - 1 + (item.step + 1) / item.steps_in_epoch
        if item.step + 1 == item.steps_in_epoch:
            loss = float(metrics["loss"])  # blocks: the epoch's steps are done
            log(f"reid_jax epoch {item.epoch}/{epochs}: loss {loss:.3f} "
                f"lr {lr_table[item.epoch]:.2e} ({time.perf_counter() - timer.start:.1f} s)")
    jax.block_until_ready(state.params)
    result = timer.result()
    result.update(epochs_done=epochs_done, final_loss=loss)

    start = time.perf_counter()
    evaluator = reid_eval.Evaluator(
        method.embed, eval_batches(cache["query"], cfg, config.data.eval_batch_size),
        eval_batches(cache["gallery"], cfg, config.data.eval_batch_size), config.eval)
    variables = method.model_variables(state.params, state.batch_stats)[0]
    result.update(summary_of(evaluator(variables, rerank=True)))
    result["eval_s"] = time.perf_counter() - start
    return result


# --- PyTorch -----------------------------------------------------------------------------------

_WORKER: dict = {}  # what forked augmentation workers read: the cache, the slots, the config


def _augment_into(slot: int, indices: np.ndarray, params: dict) -> int:
    """Worker: augments cache[indices] with the numpy augment_batch into shared slot `slot`."""
    work = _WORKER
    work["slots"][slot] = augment_batch(work["images"][indices], params, work["cfg"], np)
    return slot


class HostAugmenter:
    """Forked worker processes applying the numpy augmentation into a ring of shared-memory
    slots (an anonymous shared mmap, inherited by fork: no /dev/shm needed), `depth` batches
    ahead. Create it before CUDA is initialised."""

    def __init__(self, images: np.ndarray, cfg: AugmentConfig, batch_size: int, workers: int,
                 depth: int):
        shape = (depth, batch_size, *images.shape[1:])
        self.buffer = mmap.mmap(-1, int(np.prod(shape)) * 4)
        self.slots = np.frombuffer(self.buffer, np.float32).reshape(shape)
        _WORKER.update(images=images, slots=self.slots, cfg=cfg)
        self.pool = multiprocessing.get_context("fork").Pool(workers)
        self.depth = depth

    def iterate(self, items):
        """`items`: (SamplerStep, augmentation params). Yields (SamplerStep, float32
        [B, H, W, 3] view of its slot); the slot is reused once the consumer asks for the next
        batch, so copy it (to the device) before that."""
        pending, free, items = deque(), list(range(self.depth)), iter(items)

        def submit() -> bool:
            item, params = next(items, (None, None))
            if item is None:
                return False
            pending.append((item, self.pool.apply_async(
                _augment_into, (free.pop(), item.indices, params))))
            return True

        while free and submit():
            pass
        while pending:
            item, result = pending.popleft()
            slot = result.get()
            yield item, self.slots[slot]
            free.append(slot)
            submit()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def run_torch(cache: dict, config, amp: str | None, train_seconds: float, log=print) -> dict:
    """Trains the PyTorch reference for config.train.epochs (or until `train_seconds`) on the
    same batches and augmentation, then evaluates with reid_jax.eval."""
    from reid_jax import eval as reid_eval
    from reid_jax import optim

    epochs, labels = config.train.epochs, cache["train_labels"]
    cfg = AugmentConfig.from_config(config.data)
    sampler = PKSampler(labels, config.data.ids_per_batch, config.data.instances_per_id, SEED)
    batch_size = sampler.batch_size
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    augmenter = HostAugmenter(cache["train"], cfg, batch_size, workers, depth=workers + 2)
    lr_table = optim.learning_rates(config.optim, epochs)
    bot = train_step.TorchBoT(config, cache["num_classes"], amp, seed=SEED)
    on_cpu = bot.device == "cpu"

    def host_items():
        for item in batches_of(sampler, epochs):
            yield item, train_step.augment_params(SEED, item.epoch, item.step, batch_size,
                                                     cfg)

    timer, epochs_done, loss = Timer(train_seconds, batch_size), 0.0, float("nan")
    try:
        for item, images in augmenter.iterate(host_items()):
            if timer.over():
                log(f"pytorch: time box reached in epoch {item.epoch}, step {item.step}")
                break
            if item.step == 0:
                bot.set_lr(float(lr_table[item.epoch]))
            device_images = bot.to_input(images.copy() if on_cpu else images)
            out = bot.step(device_images, bot.labels(labels[item.indices]))
            timer.step_done(bot.synchronize)
            epochs_done = item.epoch - 1 + (item.step + 1) / item.steps_in_epoch
            if item.step + 1 == item.steps_in_epoch:
                loss = float(out.detach())
                log(f"pytorch epoch {item.epoch}/{epochs}: loss {loss:.3f} "
                    f"lr {lr_table[item.epoch]:.2e} ({time.perf_counter() - timer.start:.1f} s)")
        bot.synchronize()
    finally:
        augmenter.close()
    result = timer.result()
    result.update(epochs_done=epochs_done, final_loss=loss, workers=workers)

    start = time.perf_counter()
    streams = []
    for split in ("query", "gallery"):
        feats = [bot.embed(bot.to_input(b["image"])).cpu().numpy()[b["mask"]]
                 for b in eval_batches(cache[split], cfg, config.data.eval_batch_size)]
        streams.append({"features": np.concatenate(feats), "pids": cache[split]["pids"],
                        "camids": cache[split]["camids"], "feat_norm": False})
    eval_config = config.eval.copy_and_resolve_references()
    eval_config.rerank = True
    result.update(summary_of(reid_eval.evaluate_features(*streams, eval_config)))
    result["eval_s"] = time.perf_counter() - start
    return result


# --- command line --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=("jax", "torch"), required=True)
    parser.add_argument("--root", required=True, help="the cuhk03-labeled folder")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--image_size", default="256,128", help="H,W in pixels")
    parser.add_argument("--ids_per_batch", type=int, default=16, help="P (K is 4)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--base_lr", type=float, default=None, help="default: BoT's 3.5e-4")
    parser.add_argument("--max_train_ids", type=int, default=0, help="0: all train ids")
    parser.add_argument("--max_val_ids", type=int, default=0, help="0: all val ids")
    parser.add_argument("--dtype", default="bfloat16", help="reid_jax compute dtype")
    parser.add_argument("--amp", default="bfloat16", help="PyTorch autocast dtype or 'none'")
    parser.add_argument("--train_seconds", type=float, default=1e9,
                        help="time box of the training loop (wall seconds, compilation in)")
    parser.add_argument("--emit", action="store_true", help="print @@ROW lines (gpu_suite)")
    args = parser.parse_args()
    size = tuple(int(n) for n in args.image_size.split(","))
    amp = None if args.amp == "none" else args.amp
    config = recipe_config(args.depth, args.dtype if args.impl == "jax" else "float32", size,
                           args.ids_per_batch, args.epochs, args.base_lr)

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.emit else sys.stdout, flush=True)

    cache = load_cache(args.root, size, args.max_train_ids or None, args.max_val_ids or None)
    per_epoch = images_per_epoch(cache["train_labels"], config)
    log(f"decoded {len(cache['train'])} train + {len(cache['query']['images'])} query + "
        f"{len(cache['gallery']['images'])} gallery images at {size[0]}x{size[1]} in "
        f"{cache['decode_s']:.1f} s ({cache['decode_img_s']:.0f} img/s); "
        f"{cache['num_classes']} train ids, {per_epoch} images per epoch; lr schedule: warmup "
        f"{config.optim.warmup_epochs}, milestones {config.optim.milestones}")
    if args.impl == "jax":
        result = run_jax(cache, config, args.train_seconds, log)
    else:
        result = run_torch(cache, config, amp, args.train_seconds, log)
    result.update(impl=args.impl, decode_s=cache["decode_s"], decode_img_s=cache["decode_img_s"],
                  images_per_epoch=per_epoch, epochs=args.epochs,
                  num_train_images=len(cache["train"]), num_classes=cache["num_classes"],
                  precision=args.dtype if args.impl == "jax" else (amp or "float32"))
    if "tensorflow" in sys.modules:
        result["tensorflow_imported"] = True
    print(("@@RESULT " if args.emit else "") + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
