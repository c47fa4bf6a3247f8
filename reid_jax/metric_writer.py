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
    the same scalars to TensorBoard events under `workdir/tensorboard/`.

    resume_step: a resumed run continues after this global step; lines written past it by the
    interrupted run are dropped first, so the file holds each step once. (TensorBoard keeps its
    events: it shows the later value of a step written twice.)
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # Optional at import time of reid_jax.

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        if path.is_file():
            _truncate_after(path, resume_step)
        self.jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
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


def _truncate_after(path: Path, step: int) -> None:
    """Rewrites the JSONL at `path` without its lines whose "step" is past `step` (atomic)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


class ProgressLine:
    """One epoch's progress: `epoch 3/120 [=====     ] 45/183 123.4 img/s loss 2.31 ...`.

    Redraws in place on a terminal; elsewhere (logs, CI) prints a line every `every` steps and
    at the end of the epoch. `first_step`: steps of the epoch already done (a resumed run).
    """

    def __init__(self, epoch: int, epochs: int, total_steps: int, batch_size: int, every: int,
                 first_step: int = 0):
        self.epoch, self.epochs, self.total = epoch, epochs, total_steps
        self.first_step = first_step
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
        rate = (done - self.first_step) * self.batch_size / max(elapsed, 1e-9)
        filled = int(20 * done / max(self.total, 1))
        shown = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        line = (f"epoch {self.epoch}/{self.epochs} [{'=' * filled}{' ' * (20 - filled)}] "
                f"{done}/{self.total} {rate:.1f} img/s {shown}")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if last else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
