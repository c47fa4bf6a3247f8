"""Throughput of the jitted BoT train step (default ResNet-50, 256x128) on the available device.

  python benchmarks/train_step.py                  # float32 and bfloat16, batch 64
  python benchmarks/train_step.py --torch          # also PyTorch eager (+AMP on GPU), same model
  python benchmarks/train_step.py --steps=20 --batch=64 --depth=50
  python benchmarks/train_step.py --depth=18 --batch=32 --image_size=96,48 --dtypes=float32

Prints a table of img/s (median over timed steps, after compilation / warm-up). The PyTorch
reference model is the one the parity tests use (tests/torch_reference.py).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from configs.market import get_config
from reid_jax import optim
from reid_jax.models import create_model, feature_dim, init_variables
from reid_jax.train import create_train_state, init_centers, make_train_step

NUM_CLASSES = 751


def time_steps(step_fn, steps: int) -> list[float]:
    """Seconds per call of `step_fn()` (which must block until done), one per step."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - start)
    return times


def bench_jax(dtype: str, batch_size: int, depth: int, steps: int,
              image_size: tuple[int, int]) -> float:
    config = get_config()
    config.model.depth = depth
    config.model.dtype = dtype
    config.data.image_size = image_size
    model = create_model(config.model, NUM_CLASSES)
    rng = jax.random.PRNGKey(0)
    variables = init_variables(model, rng, config.data.image_size)
    tx = optim.make_optimizer(config)
    state = create_train_state(variables, init_centers(rng, NUM_CLASSES, feature_dim(depth)), tx)
    step = jax.jit(make_train_step(model, tx, config), donate_argnums=0)
    images = jax.random.normal(rng, (batch_size, *config.data.image_size, 3), jnp.float32)
    labels = jnp.repeat(jnp.arange(batch_size // 4, dtype=jnp.int32), 4)
    batch = {"image": images, "label": labels}
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch, rng)
        jax.block_until_ready(metrics["loss"])

    run()  # compile
    run()  # warm-up
    return batch_size / statistics.median(time_steps(run, steps))


def bench_torch(amp: bool, batch_size: int, depth: int, steps: int,
                image_size: tuple[int, int]) -> float:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch_reference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_reference.Baseline(NUM_CLASSES, depth=depth, last_stride=1,
                                     stem_relu=False).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=3.5e-4, weight_decay=5e-4)
    images = torch.randn(batch_size, 3, *image_size, device=device)
    labels = torch.arange(batch_size // 4, device=device).repeat_interleave(4)
    scaler = torch.amp.GradScaler(enabled=amp and device == "cuda")

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, enabled=amp and device == "cuda"):
            logits, _ = model(images)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()

    run()
    run()
    return batch_size / statistics.median(time_steps(run, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch eager")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--image_size", default="256,128", help="H,W in pixels")
    args = parser.parse_args()
    size = tuple(int(n) for n in args.image_size.split(","))

    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} | jax {jax.__version__} | "
          f"ResNet-{args.depth} batch {args.batch} {size[0]}x{size[1]} | "
          f"median of {args.steps} steps")
    rows = [(f"reid_jax {d}", bench_jax(d, args.batch, args.depth, args.steps, size))
            for d in args.dtypes.split(",")]
    if args.torch:
        rows.append(("pytorch eager fp32", bench_torch(False, args.batch, args.depth, args.steps,
                                                               size)))
        import torch

        if torch.cuda.is_available():
            rows.append(("pytorch eager AMP", bench_torch(True, args.batch, args.depth,
                                                          args.steps, size)))
    print(f"| {'implementation':<22} | {'img/s':>9} |")
    print(f"|{'-' * 24}|{'-' * 11}|")
    for name, ips in rows:
        print(f"| {name:<22} | {ips:>9.1f} |")


if __name__ == "__main__":
    main()
