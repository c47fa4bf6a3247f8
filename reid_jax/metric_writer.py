"""Run logging: a JSONL of every metric, TensorBoard event files, and a per-epoch progress line.

Only process 0 writes; other processes get no-op writers.
"""

import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np


class MetricWriter:
    """Appends `{"step": .., "epoch": .., <name>: value}` lines to `workdir/metrics.jsonl` and
    the same scalars to TensorBoard events under `workdir/tensorboard/`."""

    def __init__(self, workdir: str | os.PathLike):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # Optional at import time of reid_jax.

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self.jsonl.write(json.dumps({"step": int(step), "epoch": int(epoch), **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, int(step))

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


class ProgressLine:
    """One epoch's progress: `epoch 3/120 [=====     ] 45/183 123.4 img/s loss 2.31 ...`.

    Redraws in place on a terminal; elsewhere (logs, CI) prints a line every `every` steps and
    at the end of the epoch.
    """

    def __init__(self, epoch: int, epochs: int, total_steps: int, batch_size: int, every: int):
        self.epoch, self.epochs, self.total = epoch, epochs, total_steps
        self.batch_size, self.every = batch_size, max(every, 1)
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.enabled = jax.process_index() == 0

    def update(self, done: int, scalars: dict[str, float]) -> None:
        """`done` steps finished in this epoch; `scalars` the latest metrics."""
        last = done == self.total
        if not self.enabled or not (self.tty or last or done % self.every == 0):
            return
        elapsed = time.perf_counter() - self.start
        rate = done * self.batch_size / max(elapsed, 1e-9)
        filled = int(20 * done / max(self.total, 1))
        shown = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        line = (f"epoch {self.epoch}/{self.epochs} [{'=' * filled}{' ' * (20 - filled)}] "
                f"{done}/{self.total} {rate:.1f} img/s {shown}")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if last else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
