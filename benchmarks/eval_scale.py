"""Evaluation at dataset scale: distances + CMC / mAP / mINP, and k-reciprocal re-ranking.

  python benchmarks/eval_scale.py                    # Market-1501 scale, reid_jax and reference
  python benchmarks/eval_scale.py --scale=msmt17     # MSMT17 scale, reid_jax only
  python benchmarks/eval_scale.py --phases=jax_metrics,jax_rerank --dim=2048

Synthetic 2048-d features with structure: one centroid per test id, a per-camera offset and
noise (about Market's rank-1 / mAP for a trained model), plus distractors (id 0) with their own
centroids. Each phase runs in its own subprocess, so its peak resident memory (ru_maxrss)
is its own. Phases:
  jax_metrics     reid_jax: features -> distances (device, query chunks) -> CMC / mAP / mINP
  jax_rankings    reid_jax: CMC / mAP / mINP from a given distance matrix (evaluate_rankings)
  numpy_metrics   reference: numpy distance matrix + BoT's eval_func (tests/numpy_eval.py)
  jax_rerank      reid_jax: features -> re-ranked distances -> CMC / mAP / mINP
  numpy_rerank    reference: numpy distance blocks + BoT's dense re_ranking (tests/test_rerank.py)
Times are wall-clock seconds per call, with the process's CPU seconds in brackets (the
machine may be shared); reid_jax phases run twice at Market scale, the first call including
XLA compilation. Re-ranking times cover the re-ranked distances only (their distances included);
the metrics reported for them are computed afterwards.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCALES = {  # queries, gallery images of test ids, distractors (id 0), test ids, cameras
    "market1501": (3368, 13115, 2798, 750, 6),
    "msmt17": (11659, 82161, 0, 3060, 15),
}
PHASES = ("jax_metrics", "jax_rankings", "numpy_metrics", "jax_rerank", "numpy_rerank")


def synthetic(scale: str, dim: int, seed: int = 0, noise: float = 3.0, camera_shift: float = 0.4):
    """Query / gallery features [N, dim] float32 (L2-normalised) with ids and cameras."""
    num_query, num_id_gallery, num_distractors, num_ids, num_cams = SCALES[scale]
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
    cam_offsets = camera_shift * rng.standard_normal((num_cams, dim), dtype=np.float32)

    def sample(pids, cams):
        base = np.where((pids == 0)[:, None],
                        rng.standard_normal((len(pids), dim), dtype=np.float32), centroids[pids])
        x = base + cam_offsets[cams] + noise * rng.standard_normal((len(pids), dim),
                                                                    dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q_pids = np.concatenate([np.arange(1, num_ids + 1),
                             rng.integers(1, num_ids + 1, num_query - num_ids)])
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, num_id_gallery),
                             np.zeros(num_distractors, np.int64)])
    q_cams = rng.integers(0, num_cams, num_query)
    g_cams = rng.integers(0, num_cams, len(g_pids))
    return sample(q_pids, q_cams), sample(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def numpy_distances(x, y):
    """BoT's distmat: |x|^2 + |y|^2 - 2 x.y (float32)."""
    return (np.sum(x * x, axis=1)[:, None] + np.sum(y * y, axis=1)[None, :]
            - 2.0 * x @ y.T).astype(np.float32)


def run_phase(phase: str, scale: str, dim: int, chunk_size: int, repeats: int) -> dict:
    """Runs one phase `repeats` times in this process; returns its numbers."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from configs.market import get_config
    from reid_jax import eval as reid_eval

    q, g, q_pids, g_pids, q_cams, g_cams = synthetic(scale, dim)
    ids = (q_pids, g_pids, q_cams, g_cams)
    config = get_config().eval
    config.chunk_size = chunk_size

    if phase == "jax_metrics":
        def timed():
            streams = [{"features": f, "pids": p, "camids": c, "feat_norm": True}
                       for f, p, c in ((q, q_pids, q_cams), (g, g_pids, g_cams))]
            return reid_eval.evaluate_features(*streams, config)["original"]
        finish = None
    elif phase == "jax_rankings":
        distmat = np.asarray(reid_eval.distance_matrix(q, g, "squared_euclidean", chunk_size))

        def timed():
            return reid_eval.evaluate_rankings(distmat, *ids, chunk_size=chunk_size)
        finish = None
    elif phase == "jax_rerank":
        def timed():
            return reid_eval.re_ranking_features(q, g, config.k1, config.k2, config.lambda_value,
                                                chunk_size)

        def finish(distmat):
            return reid_eval.evaluate_rankings(distmat, *ids, chunk_size=chunk_size)
    else:
        from numpy_eval import reference_eval_func
        from test_rerank import reference_re_ranking

        def timed():
            if phase == "numpy_metrics":
                return reference_eval_func(numpy_distances(q, g), *ids)
            return reference_re_ranking(numpy_distances(q, g), numpy_distances(q, q),
                                        numpy_distances(g, g))

        def finish(out):
            cmc, m_ap, m_inp, *_ = (out if phase == "numpy_metrics"
                                    else reference_eval_func(out, *ids))
            return {"cmc": cmc, "mAP": m_ap, "mINP": m_inp}

    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = timed()
        seconds.append(time.perf_counter() - wall)
        cpu_seconds.append(time.process_time() - cpu)
    metrics = finish(out) if finish else out
    return {"phase": phase, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rank1": 100 * float(metrics["cmc"][0]), "mAP": 100 * float(metrics["mAP"]),
            "mINP": 100 * float(metrics["mINP"]),
            "tensorflow_imported": "tensorflow" in sys.modules}


def run_phase_subprocess(phase: str, scale: str, dim: int = 2048, chunk_size: int = 1024,
                         repeats: int = 1, timeout: float | None = None) -> dict:
    """`run_phase` in its own Python process (so its peak RSS and device memory are its own),
    killed after `timeout` seconds. Returns run_phase's dict plus "wall_s" (the subprocess's
    wall seconds, start-up and synthetic data included), or {"phase", "error", "wall_s"}."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, f"--run_phase={phase}", f"--scale={scale}",
             f"--dim={dim}", f"--chunk_size={chunk_size}", f"--repeats={repeats}"],
            capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"phase": phase, "error": f"timed out after {timeout:.0f} s",
                "wall_s": time.perf_counter() - start}
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        return {"phase": phase, "wall_s": wall_s,
                "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), wall_s=wall_s)


def format_seconds(result: dict) -> str:
    """"wall (CPU), ..." seconds of each timed call."""
    return ", ".join(f"{w:.2f} ({c:.1f})" for w, c in zip(result["seconds"],
                                                          result["cpu_seconds"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=tuple(SCALES), default="market1501")
    parser.add_argument("--phases", default=None,
                        help="comma-separated subset of " + ",".join(PHASES))
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--chunk_size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per reid_jax phase (default 2 at Market scale: the "
                             "first includes compilation; 1 at MSMT17 scale)")
    parser.add_argument("--run_phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_phase:
        print(json.dumps(run_phase(args.run_phase, args.scale, args.dim, args.chunk_size,
                                   args.repeats)))
        return
    phases = args.phases.split(",") if args.phases else (
        PHASES if args.scale == "market1501" else ("jax_metrics", "jax_rerank"))
    num_query, num_id_gallery, num_distractors, _, _ = SCALES[args.scale]
    print(f"{args.scale} scale: {num_query} queries x {num_id_gallery + num_distractors} gallery,"
          f" {args.dim}-d features, chunk_size {args.chunk_size}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; seconds: "
          "wall (CPU) per call, reid_jax's first call includes compilation")
    print("| phase | seconds | peak RSS GB | rank-1 | mAP | mINP |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase in phases:
        repeats = 1 if phase.startswith("numpy") else (
            args.repeats or (2 if args.scale == "market1501" else 1))
        r = run_phase_subprocess(phase, args.scale, args.dim, args.chunk_size, repeats)
        if "error" in r:
            print(f"| {phase} | failed ({r['error']}) |||||")
            continue
        print(f"| {phase} | {format_seconds(r)} | {r['peak_gb']:.2f} | {r['rank1']:.2f} | "
              f"{r['mAP']:.2f} | {r['mINP']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
