"""Throughput of the jitted BoT train step (default ResNet-50, 256x128) on the available device.

  python benchmarks/train_step.py                  # float32 and bfloat16, batch 64
  python benchmarks/train_step.py --torch          # also PyTorch eager (+AMP), same model
  python benchmarks/train_step.py --steps=20 --batch=64 --depth=50
  python benchmarks/train_step.py --depth=18 --batch=32 --image_size=96,48 --dtypes=float32
  python benchmarks/train_step.py --augment        # uint8 batch + on-device augmentation

Prints a table of img/s (median over timed steps, after compilation / warm-up). The PyTorch
reference model is the one the parity tests use (tests/torch_reference.py), trained with BoT's
losses (tests/torch_losses.py: label-smoothed CE + batch-hard triplet + center loss), Adam on
the model and SGD on the centers, as the original.

The builders here (`step_config`, `synthetic_batch`, `build_jax_step`, `jax_throughput`,
`TorchBoT`, `torch_throughput`) are shared with benchmarks/gpu_suite.py and
benchmarks/recipe.py. Nothing here imports TensorFlow.
"""

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.market import get_config
from data_pipelines.augment import AugmentConfig, augment_batch, sample_params
from reid_jax import optim, parallel
from reid_jax.methods import get_method
from reid_jax.train import create_train_state, make_train_step

NUM_CLASSES = 751  # Market-1501 train ids
AUGMENT_STREAM = 1  # SeedSequence word of the augmentation draws, as data_pipelines.pipeline
ROOT = Path(__file__).resolve().parents[1]


# --- JAX ---------------------------------------------------------------------------------------

def step_config(depth: int = 50, dtype: str = "float32", image_size=(256, 128),
                ids_per_batch: int = 16, instances_per_id: int = 4) -> ml_collections.ConfigDict:
    """configs/market.py (BoT) with the model depth, compute dtype, (H, W) in pixels and P x K."""
    config = get_config()
    config.model.depth = depth
    config.model.dtype = dtype
    config.data.image_size = tuple(int(s) for s in image_size)
    config.data.ids_per_batch = ids_per_batch
    config.data.instances_per_id = instances_per_id
    config.data.augment_on = "device"
    return config


def device_augment(config: ml_collections.ConfigDict) -> Callable[[dict], jax.Array]:
    """The on-device train augmentation (as reid_jax.run.device_augmentation for "device"):
    {"image": uint8 [B, H, W, 3], "augment": [B] parameters} -> float32 normalised images."""
    cfg = AugmentConfig.from_config(config.data)

    def augment(batch: dict) -> jax.Array:
        return augment_batch(batch["image"], batch["augment"], cfg, jnp)

    return augment


def augment_params(seed: int, epoch: int, step: int, batch_size: int,
                   cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """The augmentation parameters of batch (epoch, step), drawn as data_pipelines.pipeline
    does (that module imports TensorFlow, so the two lines are repeated here)."""
    return sample_params(np.random.default_rng([seed, AUGMENT_STREAM, epoch, step]), batch_size,
                         cfg)


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """One PK batch of random uint8 images: {"image": uint8 [B, H, W, 3], "label": int32 [B] (P
    ids x K adjacent), "augment": its augmentation parameters ([B] arrays)}."""
    p, k = config.data.ids_per_batch, config.data.instances_per_id
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (p * k, *config.data.image_size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(p, dtype=np.int32), k)
    cfg = AugmentConfig.from_config(config.data)
    return {"image": images, "label": labels, "augment": augment_params(seed, 1, 0, p * k, cfg)}


def host_augmented(batch: dict, config: ml_collections.ConfigDict) -> np.ndarray:
    """The batch's images augmented on the host with the numpy `augment_batch` (the same
    parameters, so the same pixels as on the device): float32 [B, H, W, 3]."""
    return augment_batch(batch["image"], batch["augment"], AugmentConfig.from_config(config.data),
                         np)


def cost_flops(cost) -> float | None:
    """FLOPs of an XLA cost analysis (a dict, or a list of one dict in older JAX)."""
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


@dataclasses.dataclass
class JaxStep:
    """A compiled train step with its state and a device batch.

    compiled(state, batch) -> (state, metrics), the state donated. compile_s: wall seconds of
    lower + compile. flops / hlo_flops: FLOPs per step from XLA's cost analysis of the compiled
    (optimised) module and of the lowered HLO (None when XLA gives none).
    """

    compiled: Callable
    state: object
    batch: dict
    batch_size: int
    compile_s: float
    flops: float | None
    hlo_flops: float | None


def build_jax_step(config: ml_collections.ConfigDict, num_classes: int, batch: dict,
                   augment: bool = True, seed: int = 0) -> JaxStep:
    """The trainer's step for `config` (as reid_jax.train.train_and_evaluate builds it): the
    method's loss and optimiser, the lr table of `config.train.epochs`, on-device augmentation
    of a uint8 batch when `augment` (else `batch["image"]` is the float32 normalised image),
    jitted over the device mesh with the state replicated and donated."""
    method = get_method(config, num_classes)
    rng = jax.random.PRNGKey(seed)
    lr_table = optim.learning_rates(config.optim, config.train.epochs)
    tx = method.optimizer(lr_table)
    mesh = parallel.make_mesh()
    state = parallel.replicate(create_train_state(*method.init(rng), tx, rng), mesh)
    step = parallel.jit_sharded_step(
        make_train_step(method, tx, lr_table, device_augment(config) if augment else None), mesh)
    if not augment:
        batch = {"image": batch["image"], "label": batch["label"]}
    device_batch = parallel.global_batch(batch, mesh)
    start = time.perf_counter()
    lowered = step.lower(state, device_batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    try:
        hlo_flops = cost_flops(lowered.cost_analysis())
    except Exception:  # noqa: BLE001 - cost analysis is best effort
        hlo_flops = None
    try:
        flops = cost_flops(compiled.cost_analysis())
    except Exception:  # noqa: BLE001
        flops = None
    return JaxStep(compiled, state, device_batch, len(batch["label"]), compile_s, flops,
                   hlo_flops)


def time_windows(run: Callable[[int], None], windows: int, steps: int) -> list[float]:
    """Wall seconds of `windows` calls of run(steps) (which must block until done)."""
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        run(steps)
        times.append(time.perf_counter() - start)
    return times


def jax_throughput(step: JaxStep, warmup: int, windows: int, steps: int) -> dict:
    """Runs `warmup` steps, then `windows` windows of `steps` steps dispatched back to back
    (blocking at each window's end, as a train loop that reads metrics at log steps).
    Returns {"img_s": median over windows (images per second), "window_s": [...] seconds}."""
    holder = {"state": step.state}

    def run(n: int) -> None:
        metrics = None
        for _ in range(n):
            holder["state"], metrics = step.compiled(holder["state"], step.batch)
        jax.block_until_ready(metrics["loss"])

    if warmup:
        run(warmup)
    window_s = time_windows(run, windows, steps)
    step.state = holder["state"]
    return {"img_s": step.batch_size * steps / statistics.median(window_s), "window_s": window_s}


def bench_jax(dtype: str, batch_size: int, depth: int, steps: int,
              image_size: tuple[int, int], augment: bool = False) -> float:
    """img/s of the reid_jax step (median of `steps` single-step windows after a warm-up)."""
    config = step_config(depth, dtype, image_size, batch_size // 4, 4)
    step = build_jax_step(config, NUM_CLASSES, synthetic_batch(config), augment)
    return jax_throughput(step, 1, steps, 1)["img_s"]


# --- PyTorch -----------------------------------------------------------------------------------

def import_torch_reference():
    """tests/torch_reference.py and tests/torch_losses.py (the parity tests' PyTorch model and
    BoT's losses) as modules."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import torch_losses
    import torch_reference

    return torch_reference, torch_losses


class TorchBoT:
    """BoT in PyTorch eager: the parity tests' Baseline (channels_last), BoT's losses, Adam on
    the model (coupled weight decay, as torch.optim.Adam), SGD on the centers with their
    gradient divided by center_weight after backward (as the original train loop).

    amp: None (float32), "bfloat16" or "float16" autocast (float16 with a GradScaler). The
    losses run in float32 on the float32-cast outputs.
    """

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, amp: str | None,
                 device: str | None = None, seed: int = 0):
        import torch

        torch_reference, self.losses = import_torch_reference()
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True  # as BoT's train.py
        torch.manual_seed(seed)
        model_config, loss = config.model, config.loss
        self.config, self.num_classes = config, num_classes
        self.model = torch_reference.Baseline(
            num_classes, depth=model_config.depth, last_stride=model_config.last_stride,
            stem_relu=model_config.stem_relu).to(self.device)
        self.model = self.model.to(memory_format=torch.channels_last).train()
        self.centers = torch.nn.Parameter(
            torch.randn(num_classes, self.model.in_planes, device=self.device))
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.optim.base_lr,
            betas=(config.optim.beta1, config.optim.beta2), eps=config.optim.eps,
            weight_decay=config.optim.weight_decay)
        self.center_optimizer = torch.optim.SGD([self.centers], lr=loss.center_lr)
        self.amp_dtype = {None: None, "bfloat16": torch.bfloat16,
                          "float16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device, enabled=amp == "float16")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def to_input(self, images_nhwc):
        """float32 [B, H, W, 3] numpy (or a torch tensor) -> [B, 3, H, W] channels_last on the
        device (an NHWC buffer is already channels_last memory)."""
        torch = self.torch
        x = torch.as_tensor(images_nhwc).permute(0, 3, 1, 2)
        return x.to(self.device, memory_format=torch.channels_last)

    def labels(self, labels):
        return self.torch.as_tensor(np.asarray(labels, np.int64), device=self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device, dtype=self.amp_dtype)

    def step(self, images, labels):
        """One optimiser step on device tensors; returns the loss (a device scalar)."""
        torch, loss_config = self.torch, self.config.loss
        self.optimizer.zero_grad(set_to_none=True)
        self.center_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            cls_score, global_feat = self.model(images)
        # torch_losses creates its one-hot targets and class range without a device argument
        # (the original moves them with .cuda()): the device context puts them on ours.
        with torch.device(self.device):
            loss, _ = self.losses.bot_loss(
                cls_score.float(), global_feat.float(), labels, self.centers, self.num_classes,
                epsilon=loss_config.label_smoothing, margin=loss_config.triplet_margin,
                center_weight=loss_config.center_weight)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.unscale_(self.center_optimizer)
        self.centers.grad.mul_(1.0 / loss_config.center_weight)
        self.scaler.step(self.center_optimizer)
        self.scaler.update()
        return loss

    def embed(self, images):
        """Inference features [B, D] float32 (after the BNNeck) of device images."""
        torch = self.torch
        self.model.eval()
        with torch.no_grad(), self._autocast():
            feats = self.model(images).float()
        self.model.train()
        return feats

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def torch_throughput(bot: TorchBoT, images, labels, warmup: int, windows: int,
                     steps: int) -> dict:
    """As `jax_throughput` for PyTorch eager on one device batch (synchronising at each
    window's end)."""
    def run(n: int) -> None:
        for _ in range(n):
            bot.step(images, labels)
        bot.synchronize()

    if warmup:
        run(warmup)
    window_s = time_windows(run, windows, steps)
    return {"img_s": len(labels) * steps / statistics.median(window_s), "window_s": window_s}


def bench_torch(amp: bool, batch_size: int, depth: int, steps: int,
                image_size: tuple[int, int], amp_dtype: str = "bfloat16") -> float:
    """img/s of PyTorch eager on the same batch (host-augmented), `amp` autocast."""
    config = step_config(depth, "float32", image_size, batch_size // 4, 4)
    batch = synthetic_batch(config)
    bot = TorchBoT(config, NUM_CLASSES, amp_dtype if amp else None)
    images, labels = bot.to_input(host_augmented(batch, config)), bot.labels(batch["label"])
    return torch_throughput(bot, images, labels, 2, steps, 1)["img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch eager")
    parser.add_argument("--amp_dtype", default="bfloat16", choices=("bfloat16", "float16"),
                        help="PyTorch AMP autocast dtype (the AMP row runs on a GPU only)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--image_size", default="256,128", help="H,W in pixels")
    parser.add_argument("--augment", action="store_true",
                        help="reid_jax: uint8 batch + on-device augmentation inside the step")
    args = parser.parse_args()
    size = tuple(int(n) for n in args.image_size.split(","))

    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} | jax {jax.__version__} | "
          f"ResNet-{args.depth} batch {args.batch} {size[0]}x{size[1]} | "
          f"median of {args.steps} steps")
    rows = [(f"reid_jax {d}", bench_jax(d, args.batch, args.depth, args.steps, size,
                                        args.augment))
            for d in args.dtypes.split(",")]
    if args.torch:
        rows.append(("pytorch eager fp32", bench_torch(False, args.batch, args.depth, args.steps,
                                                               size)))
        import torch

        if torch.cuda.is_available():
            rows.append((f"pytorch eager AMP {args.amp_dtype}",
                         bench_torch(True, args.batch, args.depth, args.steps, size,
                                     args.amp_dtype)))
    print(f"| {'implementation':<26} | {'img/s':>9} |")
    print(f"|{'-' * 28}|{'-' * 11}|")
    for name, ips in rows:
        print(f"| {name:<26} | {ips:>9.1f} |")


if __name__ == "__main__":
    main()
