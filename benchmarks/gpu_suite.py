"""One benchmark suite for a GPU lease (<= 8 min on one H100/H200), with a CPU-sized smoke mode.

  bash benchmarks/gpu_suite.sh            # GPU sizes (ResNet-50, 256x128, batch 64, ...)
  bash benchmarks/gpu_suite.sh --cpu      # the same code at CPU sizes (ResNet-18, 96x48, ...)
  python benchmarks/gpu_suite.py --sections=a,c --budget_s=300     # a subset, e.g. a rerun

Sections (each prints its rows as it finishes; the table at the end holds them all):
  a  train step img/s: reid_jax float32 and bfloat16 (on-device augmentation, jitted with the
     state donated, benchmarks/train_step.py) vs PyTorch eager float32 and AMP (parity tests'
     model, BoT losses, Adam + SGD centers, channels_last), the same batch; their ratios.
  b  MFU: FLOPs per step from XLA's cost analysis / step time / the device's datasheet peak
     (dense bf16; TF32 for the float32 step), and a bf16 matmul as the measured ceiling.
  c  evaluation at Market-1501 (3,368 x 15,913) and MSMT17 (11,659 x 82,161) scale, reid_jax
     phases of benchmarks/eval_scale.py; MSMT17 re-ranking only when its estimate (from the
     Market figure) fits the section's time left.
  d  a short real recipe on cuhk03-labeled, reid_jax vs PyTorch (benchmarks/recipe.py):
     end-to-end train img/s, rank-1 / mAP / mINP, their ratio and gap.

Every section runs in its own process (a crash, an out-of-memory or a timeout loses that
section's remaining rows only; device memory is released between sections) under a time box;
a global budget (--budget_s) caps the whole suite. Rows come back as `@@ROW {json}` lines; the
table goes to stdout and to --out (default: $OUT/gpu_suite.md when $OUT is set, else
runs/gpu_suite.md), with the full log beside it (gpu_suite.log) and the rows as JSON
(gpu_suite.json). Units: img/s = training images per wall second; seconds are wall-clock;
FLOP counts are XLA's (2 per multiply-add). Nothing here imports TensorFlow; the shell driver's
--no-tf puts a failing `tensorflow` package first on the path to prove it.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ROW_PREFIX, INFO_PREFIX, RESULT_PREFIX = "@@ROW ", "@@INFO ", "@@RESULT "
DATA_NAME = "cuhk03-labeled"

# Datasheet peaks, dense (no sparsity), TFLOP/s: (bf16 tensor, tf32 tensor, fp32 non-tensor).
# Matched in order against jax.devices()[0].device_kind (e.g. "NVIDIA H100 80GB HBM3").
PEAKS = (
    (("H200", "NVL"), "H200 NVL", (835.5, 417.5, 60.0)),
    (("H200",), "H200 SXM", (989.4, 494.7, 66.9)),
    (("H100", "PCIE"), "H100 PCIe", (756.5, 378.0, 51.2)),
    (("H100", "NVL"), "H100 NVL", (835.5, 417.5, 60.0)),
    (("H100",), "H100 SXM", (989.4, 494.7, 66.9)),
    (("A100",), "A100", (312.0, 156.0, 19.5)),
)


def device_peak(device_kind: str) -> tuple[str, tuple[float, float, float]] | None:
    """(name, (bf16, tf32, fp32) TFLOP/s) of a device kind; None when unknown (-> MFU n/a)."""
    kind = device_kind.upper()
    for needles, name, peaks in PEAKS:
        if all(n in kind for n in needles):
            return name, peaks
    return None


@dataclasses.dataclass(frozen=True)
class Mode:
    """Sizes and time boxes (seconds) of one suite mode."""

    name: str
    depth: int
    image_size: tuple[int, int]  # (H, W) pixels
    ids_per_batch: int  # P; K = 4
    warmup: int  # untimed steps after compilation
    windows: int  # timed windows ...
    steps: int  # ... of this many steps each (img/s = median over windows)
    matmul_size: int  # bf16 matmul ceiling check (0: skip)
    msmt17: bool  # section c at MSMT17 scale too
    eval_repeats: int  # calls per Market-scale phase (the first includes compilation)
    epochs: int  # recipe epochs (same for both implementations)
    max_train_ids: int  # recipe train subset (0: all 743 ids)
    max_val_ids: int  # recipe val subset (0: all 100 ids)
    recipe_dtype: str  # reid_jax compute dtype of the recipe
    recipe_amp: str  # PyTorch autocast dtype of the recipe ("none": float32)
    amp: str  # PyTorch autocast dtype of section a
    boxes: dict  # section -> time box
    recipe_reserve: float  # seconds of a recipe box kept for start-up, decoding and evaluation
    budget: float  # whole suite


MODES = {
    "gpu": Mode("gpu", 50, (256, 128), 16, warmup=5, windows=5, steps=10, matmul_size=8192,
                msmt17=True, eval_repeats=2, epochs=10, max_train_ids=0, max_val_ids=0,
                recipe_dtype="bfloat16", recipe_amp="bfloat16", amp="bfloat16",
                boxes={"train_jax": 160, "train_torch": 60, "eval": 75, "recipe_jax": 110,
                       "recipe_torch": 110},
                recipe_reserve=35, budget=470),
    "cpu": Mode("cpu", 18, (96, 48), 4, warmup=1, windows=2, steps=1, matmul_size=0,
                msmt17=False, eval_repeats=1, epochs=2, max_train_ids=24, max_val_ids=30,
                recipe_dtype="float32", recipe_amp="none", amp="none",
                boxes={"train_jax": 480, "train_torch": 360, "eval": 480, "recipe_jax": 420,
                       "recipe_torch": 420},
                recipe_reserve=150, budget=1800),
}
SECTIONS = {"a": ("train_jax", "train_torch"), "b": ("train_jax",), "c": ("eval",),
            "d": ("recipe_jax", "recipe_torch")}
ORDER = ("train_jax", "train_torch", "eval", "recipe_jax", "recipe_torch")


# --- rows --------------------------------------------------------------------------------------

def emit(section: str, name: str, value, unit: str = "", notes: str = "", key: str = "") -> None:
    """A table row, from a section's process (value: number or text)."""
    print(ROW_PREFIX + json.dumps({"section": section, "name": name, "value": value,
                                   "unit": unit, "notes": notes, "key": key}), flush=True)


def emit_info(**info) -> None:
    print(INFO_PREFIX + json.dumps(info), flush=True)


def fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        magnitude = abs(value)
        digits = 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
        return f"{value:,.{digits}f}"
    return str(value)


def seconds_list(values) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


# --- section a + b: reid_jax train step and MFU ------------------------------------------------

def recipe_and_classes(mode: Mode, data_root: str | None):
    """The recipe's config maker and C, so that section a compiles the very programs section d
    runs (the persistent compilation cache can then serve section d)."""
    import recipe

    classes = 751
    if data_root:
        try:
            classes = recipe.recipe_num_classes(data_root, mode.max_train_ids or None)
        except Exception as error:  # noqa: BLE001 - fall back to Market's C
            print(f"cannot read {data_root}: {error}; using C = 751", file=sys.stderr)
    return recipe.recipe_config, classes


def child_train_jax(mode: Mode, data_root: str | None) -> None:
    import jax
    import jax.numpy as jnp
    import train_step

    device = jax.devices()[0]
    emit_info(jax=jax.__version__, platform=device.platform, device_kind=device.device_kind,
              device_count=jax.device_count())
    make_config, classes = recipe_and_classes(mode, data_root)
    peak = device_peak(device.device_kind) if device.platform == "gpu" else None
    h, w = mode.image_size
    batch_size = mode.ids_per_batch * 4
    what = (f"ResNet-{mode.depth} {h}x{w} batch {batch_size} (P{mode.ids_per_batch} x K4), "
            f"C={classes}, uint8 batch + on-device augmentation; median of {mode.windows} "
            f"windows x {mode.steps} steps after {mode.warmup} warm-up")
    for dtype in ("bfloat16", "float32"):  # the headline first, in case the time box cuts
        config = make_config(mode.depth, dtype, mode.image_size, mode.ids_per_batch, mode.epochs)
        try:
            step = train_step.build_jax_step(config, classes, train_step.synthetic_batch(config))
            timing = train_step.jax_throughput(step, mode.warmup, mode.windows, mode.steps)
        except Exception as error:  # noqa: BLE001 - report and go on with the next dtype
            traceback.print_exc()
            emit("a", f"reid_jax {dtype} train step", "failed", "", repr(error)[:200])
            continue
        emit("a", f"reid_jax {dtype} train step", timing["img_s"], "img/s",
             f"{what}; windows {seconds_list(timing['window_s'])} s; compile "
             f"{step.compile_s:.1f} s", key=f"jax_{dtype}")
        flops, hlo = step.flops, step.hlo_flops
        source = "compiled module"
        if not flops or (hlo and flops < 0.5 * hlo):  # e.g. library calls left uncounted
            compiled = f"{flops / 1e9:.0f} GFLOP" if flops else "missing"
            flops, source = hlo, f"lowered HLO (the compiled module's count: {compiled})"
        if not flops:
            emit("b", f"MFU reid_jax {dtype}", "n/a", "", "XLA gave no FLOP count")
            continue
        step_s = batch_size / timing["img_s"]
        achieved = flops / step_s / 1e12
        if dtype == "bfloat16":
            emit("b", "FLOPs per train step (XLA cost analysis)", flops / 1e9, "GFLOP",
                 f"from the {source}; lowered HLO {0 if not hlo else hlo / 1e9:.1f} GFLOP; "
                 f"{flops / batch_size / 1e9:.2f} GFLOP per image")
        if peak is None:
            emit("b", f"MFU reid_jax {dtype}", "n/a", "%",
                 f"achieved {achieved:.3g} TFLOP/s; device kind {device.device_kind!r} has no "
                 "peak in the table")
        else:
            name, (bf16, tf32, _) = peak
            ceiling = bf16 if dtype == "bfloat16" else tf32
            label = "dense bf16" if dtype == "bfloat16" else \
                "dense TF32 (XLA's default precision lets f32 convolutions use TF32)"
            emit("b", f"MFU reid_jax {dtype}", 100 * achieved / ceiling, "%",
                 f"{achieved:.1f} TFLOP/s of {ceiling:.0f} ({name}, {label})",
                 key=f"mfu_{dtype}")
        del step
    if mode.matmul_size:
        n = mode.matmul_size
        a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.bfloat16) for i in (1, 2))
        product = jax.jit(lambda x, y: x @ y)
        jax.block_until_ready(product(a, b))
        for _ in range(3):
            jax.block_until_ready(product(a, b))
        start = time.perf_counter()
        for _ in range(10):
            out = product(a, b)
        jax.block_until_ready(out)
        tflops = 10 * 2 * n ** 3 / (time.perf_counter() - start) / 1e12
        share = f"; {100 * tflops / peak[1][0]:.0f}% of the datasheet's {peak[1][0]:.0f}" \
            if peak else ""
        emit("b", f"bf16 matmul {n}^3 (measured ceiling)", tflops, "TFLOP/s",
             f"jnp random bf16, mean of 10 after 3 warm-ups{share}")


def child_train_torch(mode: Mode, data_root: str | None) -> None:
    import torch
    import train_step

    cuda = torch.cuda.is_available()
    emit_info(torch=torch.__version__, torch_device=torch.cuda.get_device_name() if cuda
              else "cpu", torch_threads=torch.get_num_threads())
    make_config, classes = recipe_and_classes(mode, data_root)
    config = make_config(mode.depth, "float32", mode.image_size, mode.ids_per_batch, mode.epochs)
    batch = train_step.synthetic_batch(config)
    images = train_step.host_augmented(batch, config)
    flags = (f"cudnn TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
             f"{torch.backends.cuda.matmul.allow_tf32}" if cuda else "CPU")
    if mode.amp == "none":
        emit("a", "PyTorch eager AMP", "skipped", "",
             "this mode runs no AMP (CPU: no bf16 hardware here; emulated autocast measured "
             "~7x slower than float32)")
    for amp in (None,) + (() if mode.amp == "none" else (mode.amp,)):
        name = "PyTorch eager " + (f"AMP {amp}" if amp else "float32")
        if amp and not cuda:
            name += " (CPU autocast)"
        try:
            bot = train_step.TorchBoT(config, classes, amp)
            timing = train_step.torch_throughput(bot, bot.to_input(images),
                                                 bot.labels(batch["label"]), mode.warmup,
                                                 mode.windows, mode.steps)
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            emit("a", name, "failed", "", repr(error)[:200])
            continue
        emit("a", name, timing["img_s"], "img/s",
             f"same batch (augmented on the host, excluded from the timing), channels_last, "
             f"BoT losses + Adam + SGD centers; {flags}; windows "
             f"{seconds_list(timing['window_s'])} s", key=f"torch_{amp or 'float32'}")
        del bot
        if cuda:
            torch.cuda.empty_cache()


# --- section c: evaluation at dataset scale ----------------------------------------------------

EVAL_PHASES = (("jax_metrics", "distances + CMC / mAP / mINP"),
               ("jax_rankings", "CMC / mAP / mINP from a distance matrix"),
               ("jax_rerank", "k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)"))


def run_eval(mode: Mode, deadline: float, rows: list, log, info: dict) -> None:
    """Section c in this process, each phase a subprocess of eval_scale.py with a timeout."""
    import eval_scale

    def phase(scale: str, name: str, label: str, repeats: int) -> dict | None:
        left = deadline - time.perf_counter()
        q, g, d, _, _ = eval_scale.SCALES[scale]
        title = f"{scale} ({q:,} x {g + d:,}): {label}"
        if left < 10:
            rows.append(row("c", title, "skipped", "", "suite budget spent"))
            return None
        log(f"[eval] {scale} {name} (timeout {left:.0f} s)")
        r = eval_scale.run_phase_subprocess(name, scale, repeats=repeats, timeout=left)
        if "tensorflow_imported" in r:
            key = "tensorflow_imported_eval"
            info[key] = info.get(key, False) or r["tensorflow_imported"]
        if "error" in r:
            rows.append(row("c", title, "failed", "", r["error"]))
            return r
        first = "first call incl. compilation; " if repeats > 1 else "one call incl. compilation; "
        rows.append(row("c", title, r["seconds"][-1], "s",
                        f"calls {seconds_list(r['seconds'])} s ({first}process "
                        f"{r['wall_s']:.1f} s with data synthesis); rank-1 {r['rank1']:.2f} "
                        f"mAP {r['mAP']:.2f} mINP {r['mINP']:.2f}; peak RSS "
                        f"{r['peak_gb']:.2f} GB"))
        log(format_row(rows[-1]))
        return r

    market = {name: phase("market1501", name, label, mode.eval_repeats)
              for name, label in EVAL_PHASES}
    if not mode.msmt17:
        rows.append(row("c", "msmt17 scale", "skipped", "", "--cpu: Market-1501 scale only"))
        return
    metrics = phase("msmt17", "jax_metrics", EVAL_PHASES[0][1], 1)
    rerank = market.get("jax_rerank")
    label = EVAL_PHASES[2][1]
    if not rerank or "error" in rerank:
        rows.append(row("c", f"msmt17: {label}", "skipped", "", "no Market-1501 figure"))
        return
    q_m, g_m, d_m, _, _ = eval_scale.SCALES["market1501"]
    q_s, g_s, d_s, _, _ = eval_scale.SCALES["msmt17"]
    scale = ((q_s + g_s + d_s) / (q_m + g_m + d_m)) ** 2
    steady, first = rerank["seconds"][-1], rerank["seconds"][0]
    overhead = (metrics["wall_s"] - sum(metrics["seconds"])) if metrics and "error" not in \
        metrics else 30.0
    estimate = overhead + (first - steady) + scale * steady
    left = deadline - time.perf_counter()
    basis = (f"estimate {estimate:.0f} s = {scale:.1f} x Market's {steady:.2f} s (N^2) + "
             f"compile {first - steady:.1f} s + start-up/synthesis {overhead:.0f} s")
    if estimate > left:
        rows.append(row("c", f"msmt17: {label}", "skipped", "",
                        f"{basis} > {left:.0f} s left in the section"))
        return
    log(f"[eval] msmt17 re-ranking: {basis}")
    phase("msmt17", "jax_rerank", label + f" ({basis})", 1)


# --- section d: the recipe ---------------------------------------------------------------------

def recipe_command(mode: Mode, impl: str, data_root: str, train_seconds: float) -> list[str]:
    h, w = mode.image_size
    return [sys.executable, str(BENCH / "recipe.py"), f"--impl={impl}", f"--root={data_root}",
            f"--depth={mode.depth}", f"--image_size={h},{w}",
            f"--ids_per_batch={mode.ids_per_batch}", f"--epochs={mode.epochs}",
            f"--max_train_ids={mode.max_train_ids}", f"--max_val_ids={mode.max_val_ids}",
            f"--dtype={mode.recipe_dtype}", f"--amp={mode.recipe_amp}",
            f"--train_seconds={train_seconds:.0f}", "--emit"]


def recipe_rows(impl: str, r: dict) -> list[dict]:
    """The rows of one recipe result (recipe.py's @@RESULT dict)."""
    name = "reid_jax" if impl == "jax" else "PyTorch"

    def num(key: str, spec: str = ".1f") -> str:
        value = r.get(key)
        return "n/a" if value is None else format(value, spec)

    out = []
    if impl == "jax":
        out.append(row("d", "decode + resize JPEGs into the uint8 cache (Pillow, threads)",
                       r["decode_img_s"], "img/s",
                       f"{r['num_train_images']} train + val images in {r['decode_s']:.1f} s"))
    stopped = "" if r["epochs_done"] >= r["epochs"] - 1e-9 else \
        f"; STOPPED by its time box at epoch {r['epochs_done']:.2f} of {r['epochs']}"
    extra = f"; {r['workers']} numpy augmentation workers" if "workers" in r else \
        "; augmentation on the device"
    out.append(row("d", f"{name} recipe: train img/s ({r['precision']})",
                   r["img_s"] if r.get("img_s") else "n/a", "img/s",
                   f"steady, after the first 2 steps; {r['epochs_done']:.2f} epochs x "
                   f"{r['images_per_epoch']} images in {num('train_s')} s (first step "
                   f"{num('first_step_s')} s, incl. compilation); "
                   f"{num('img_s_incl_first')} img/s overall{extra}{stopped}",
                   key=f"recipe_{impl}_img_s"))
    out.append(row("d", f"{name} recipe: rank-1 / mAP / mINP",
                   f"{num('rank1')} / {num('mAP')} / {num('mINP')}", "%",
                   f"re-ranked {num('rerank_rank1')} / {num('rerank_mAP')} / "
                   f"{num('rerank_mINP')}; C={r['num_classes']}, final loss "
                   f"{num('final_loss', '.3f')}; evaluation {num('eval_s')} s",
                   key=f"recipe_{impl}_map"))
    out[-1]["mAP"] = r.get("mAP")
    return out


# --- the driver --------------------------------------------------------------------------------

def row(section, name, value, unit="", notes="", key="") -> dict:
    return {"section": section, "name": name, "value": value, "unit": unit, "notes": notes,
            "key": key}


def find_data(explicit: str | None) -> str | None:
    """The cuhk03-labeled folder: --data (the folder or its parent), $REID_DATA, then
    shared/data (the device machine's copy of the checkout), runs/data (a carried copy),
    ../shared/data (beside the checkout, this machine)."""
    candidates = [explicit, os.environ.get("REID_DATA"), ROOT / "shared" / "data",
                  ROOT / "runs" / "data", ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        for folder in (path, path / DATA_NAME):
            if (folder / "train").is_dir() and (folder / "val").is_dir():
                return str(folder.resolve())
    return None


def stream_process(command: list[str], env: dict, timeout: float, tag: str, log,
                   on_line) -> tuple[int | None, list[str]]:
    """Runs `command` in its own process group, passing each output line to `on_line` as it
    arrives; kills the group after `timeout` s. Returns (exit code or None on timeout, the
    last output lines)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def reader() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    deadline, tail = time.perf_counter() + timeout, []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            log(f"[{tag}] time box of {timeout:.0f} s reached: stopping process group {proc.pid}")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, tail
        if line is None:
            return proc.wait(), tail
        tail = (tail + [line])[-8:]
        if not on_line(line):
            log(f"[{tag}] {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU sizes (a smoke run)")
    parser.add_argument("--sections", default="a,b,c,d", help="subset of a,b,c,d")
    parser.add_argument("--data", default=None, help="cuhk03-labeled folder (or its parent)")
    parser.add_argument("--out", default=None, help="the table's markdown file")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="whole-suite wall budget (default: the mode's)")
    parser.add_argument("--epochs", type=int, default=None, help="recipe epochs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode_json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode_dict = json.loads(args.mode_json)
        mode = Mode(**dict(mode_dict, image_size=tuple(mode_dict["image_size"])))
        {"train_jax": child_train_jax, "train_torch": child_train_torch}[args.child](
            mode, args.data)
        print(INFO_PREFIX + json.dumps({"tensorflow_imported_" + args.child:
                                        "tensorflow" in sys.modules}), flush=True)
        return

    mode = MODES["cpu" if args.cpu else "gpu"]
    if args.epochs:
        mode = dataclasses.replace(mode, epochs=args.epochs)
    if args.budget_s:
        mode = dataclasses.replace(mode, budget=args.budget_s)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "runs"
    out = Path(args.out) if args.out else out_dir / "gpu_suite.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - open for the whole run

    def log(message: str) -> None:
        print(message, flush=True)
        log_file.write(message + "\n")
        log_file.flush()

    start = time.perf_counter()
    deadline = start + mode.budget
    wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
    children = [c for c in ORDER if any(c in SECTIONS[s] for s in wanted if s in SECTIONS)]
    data_root = find_data(args.data)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]
                                          + ([os.environ["PYTHONPATH"]]
                                             if os.environ.get("PYTHONPATH") else [])))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / "runs" / "jax_cache"))
    torch_env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # JAX there: metrics only
    rows: list[dict] = []
    info = {"mode": mode.name, "data": data_root or "not found",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": f"{platform.node()}, {os.cpu_count()} CPUs, load average "
                    f"{os.getloadavg()[0]:.1f} at the start", "python": platform.python_version()}
    recipe_results = {}
    log(f"gpu_suite: mode {mode.name}, sections {sorted(wanted)}, budget {mode.budget:.0f} s, "
        f"data {data_root}")

    def on_line(line: str) -> bool:
        if line.startswith(ROW_PREFIX):
            rows.append(json.loads(line[len(ROW_PREFIX):]))
            log(format_row(rows[-1]))
            return True
        if line.startswith(INFO_PREFIX):
            info.update(json.loads(line[len(INFO_PREFIX):]))
            return True
        if line.startswith(RESULT_PREFIX):
            recipe_results["last"] = json.loads(line[len(RESULT_PREFIX):])
            return True
        return False

    mode_json = json.dumps(dataclasses.asdict(mode))
    for child in children:
        left = deadline - time.perf_counter()
        timeout = min(mode.boxes[child], left)
        section = "d" if child.startswith("recipe") else "c" if child == "eval" else "a"
        if timeout < 15:
            rows.append(row(section, child, "skipped", "", f"suite budget spent ({left:.0f} s "
                            "left)"))
            continue
        log(f"[{child}] start, time box {timeout:.0f} s ({time.perf_counter() - start:.0f} s "
            "into the suite)")
        t0 = time.perf_counter()
        if child == "eval":
            try:
                run_eval(mode, time.perf_counter() + timeout, rows, log, info)
            except Exception as error:  # noqa: BLE001 - keep the other sections
                traceback.print_exc()
                rows.append(row("c", "evaluation section", "failed", "", repr(error)[:200]))
            log(f"[{child}] done in {time.perf_counter() - t0:.0f} s")
            continue
        if child.startswith("recipe"):
            impl = child.split("_")[1]
            if not data_root:
                rows.append(row("d", f"{impl} recipe", "skipped", "",
                                f"no {DATA_NAME} folder (pass --data)"))
                continue
            command = recipe_command(mode, impl, data_root,
                                     max(10.0, timeout - mode.recipe_reserve))
            recipe_results.pop("last", None)
        else:
            command = [sys.executable, str(BENCH / "gpu_suite.py"), f"--child={child}",
                       f"--mode_json={mode_json}"] + ([f"--data={data_root}"] if data_root
                                                      else [])
        try:
            code, tail = stream_process(command, torch_env if "torch" in child else env,
                                        timeout, child, log, on_line)
        except Exception as error:  # noqa: BLE001 - keep the other sections
            code, tail = -1, [repr(error)]
        if child.startswith("recipe") and "last" in recipe_results:
            result = recipe_results["last"]
            recipe_results[impl] = result
            try:
                rows.extend(recipe_rows(impl, result))
            except Exception as error:  # noqa: BLE001 - keep the other rows
                rows.append(row("d", f"{impl} recipe rows", "failed", "", repr(error)[:200]))
            info[f"tensorflow_imported_{child}"] = result.get("tensorflow_imported", False)
        if code != 0:
            why = f"timed out after {timeout:.0f} s" if code is None else f"exit {code}"
            rows.append(row(section, f"{child} process", "failed", "",
                            f"{why}; last output: {' / '.join(tail[-2:])[:300]}"))
        log(f"[{child}] done in {time.perf_counter() - t0:.0f} s")

    try:
        rows.extend(derived_rows(rows, recipe_results))
    except Exception as error:  # noqa: BLE001 - the measured rows matter more
        rows.append(row("-", "derived rows", "failed", "", repr(error)[:200]))
    tf_flags = {k: v for k, v in info.items() if k.startswith("tensorflow_imported")}
    rows.append(row("-", "TensorFlow imported by a section process",
                    "yes" if any(tf_flags.values()) else "no" if tf_flags else "not checked", "",
                    ", ".join(f"{k[len('tensorflow_imported_'):]}: {v}"
                              for k, v in tf_flags.items())))
    wall = time.perf_counter() - start
    rows.append(row("-", "suite wall time", wall, "s", f"budget {mode.budget:.0f} s"))
    table = render(rows, info, mode)
    log("\n" + table)
    out.write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
    log(f"wrote {out}, {out.with_suffix('.log')} and {out.with_suffix('.json')}")
    log_file.close()


def derived_rows(rows: list[dict], recipes: dict) -> list[dict]:
    """Ratios and goal checks from the measured rows."""
    values = {r["key"]: r["value"] for r in rows if r.get("key")}
    maps = {r["key"]: r.get("mAP") for r in rows if r.get("key", "").endswith("_map")}
    out = []

    def number(key):
        value = values.get(key)
        return value if isinstance(value, int | float) and value == value else None

    amp_key = next((k for k in values if k.startswith("torch_") and k != "torch_float32"), None)
    bf16, amp = number("jax_bfloat16"), number(amp_key) if amp_key else None
    if bf16 and amp:
        ratio = bf16 / amp
        out.append(row("a", f"ratio reid_jax bf16 / PyTorch AMP {amp_key[6:]}", ratio, "x",
                       f"goal >= 1.5: {'met' if ratio >= 1.5 else 'NOT met'}"))
    f32, torch32 = number("jax_float32"), number("torch_float32")
    if f32 and torch32:
        out.append(row("a", "ratio reid_jax float32 / PyTorch float32", f32 / torch32, "x"))
    if bf16:
        out.append(row("a", "goal: reid_jax bf16 >= 3,000 img/s", "met" if bf16 >= 3000
                       else "NOT met", "", f"{fmt(float(bf16))} img/s"))
    jax_ips, torch_ips = number("recipe_jax_img_s"), number("recipe_torch_img_s")
    if jax_ips and torch_ips:
        out.append(row("d", "ratio recipe train img/s reid_jax / PyTorch", jax_ips / torch_ips,
                       "x", "steady end-to-end training throughput"))
    jax_map, torch_map = maps.get("recipe_jax_map"), maps.get("recipe_torch_map")
    if jax_map is not None and torch_map is not None:
        same = recipes.get("jax", {}).get("epochs_done") == recipes.get("torch", {}).get(
            "epochs_done")
        out.append(row("d", "mAP gap reid_jax - PyTorch", jax_map - torch_map, "points",
                       "same epochs, images and augmentation; different random inits" if same
                       else "DIFFERENT epochs trained (a time box stopped one): not comparable"))
    return out


def render(rows: list[dict], info: dict, mode: Mode) -> str:
    """The one markdown table, with the context lines above it."""
    device = info.get("device_kind", "?")
    head = [f"# gpu_suite ({mode.name} mode), {info['date']}",
            "",
            f"- device: {info.get('platform', '?')} {device} x{info.get('device_count', '?')}; "
            f"jax {info.get('jax', '?')}; torch {info.get('torch', '?')} "
            f"({info.get('torch_device', '?')}, {info.get('torch_threads', '?')} threads); "
            f"python {info['python']}",
            f"- host: {info['host']}; data: {info['data']}",
            f"- sizes: ResNet-{mode.depth}, {mode.image_size[0]}x{mode.image_size[1]}, batch "
            f"{mode.ids_per_batch * 4} (P{mode.ids_per_batch} x K4); recipe {mode.epochs} "
            f"epochs, reid_jax {mode.recipe_dtype} / PyTorch {mode.recipe_amp}"]
    if mode.name == "cpu":
        head.append("- CPU smoke run: it checks that every section runs; its tiny sizes say "
                    "nothing about the GPU targets (the load average above tells whether the "
                    "cores were shared)")
    head += ["", "| section | measurement | value | unit | notes |", "|---|---|---:|---|---|"]
    order = {"a": 0, "b": 1, "c": 2, "d": 3, "-": 4}
    head += [format_row(r) for r in sorted(rows, key=lambda r: order.get(r["section"], 5))]
    return "\n".join(head)


def format_row(r: dict) -> str:
    notes = str(r["notes"]).replace("|", "/")
    return f"| {r['section']} | {r['name']} | {fmt(r['value'])} | {r['unit']} | {notes} |"


if __name__ == "__main__":
    main()
