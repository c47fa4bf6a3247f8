"""Which part of a 3x3 convolution is slow on XLA:CPU on small feature maps (4x2: ~100x slower)?

  python benchmarks/narrow_conv.py                  # 4x2,4x3,8x2,8x4,2x4; batch 32; 512 ch
  python benchmarks/narrow_conv.py --torch          # also PyTorch CPU (channels_last)
  python benchmarks/narrow_conv.py --sizes=2x1,4x2,4x3 --reps=5 --budget=2
  python benchmarks/narrow_conv.py --formulations=ref,im2col --ops=fwd,dw

One 3x3, stride 1, SAME-padded ((1,1),(1,1)) float32 convolution, C -> C channels, batch B, on
HxW maps (ResNet-18's last stage with last stride 1 has 512 channels on 4x2 maps for a 64x32
input). Every formulation computes the same values (checked with allclose, rtol 1e-4, against
`jax.lax.conv_general_dilated` NHWC/HWIO, which is what flax.linen.Conv emits) and is timed, each
op in its own `jax.jit`, as the median of up to --reps calls after a warm-up:

  fwd      y = conv(x, w)
  dx       input gradient, vjp w.r.t. x only (XLA: a conv of dy with the flipped kernel)
  dw       kernel gradient, vjp w.r.t. w only (XLA: a conv of x with dy as the "window")
  fwd+bwd  value_and_grad of sum(y * dy) w.r.t. (x, w), as in a train step

Formulations:

  ref        lax.conv_general_dilated, NHWC/HWIO, padding ((1,1),(1,1))
  nchw       same conv with NCHW/OIHW dimension numbers (arrays stored NCHW)
  pad_valid  explicit jnp.pad by 1, then a VALID conv
  pad_wide   jnp.pad so that the computed output is at least --min-width wide (zeros), VALID
             conv, then slice the output back to W columns
  swap_hw    transpose H and W (input and kernel) so that the narrow dimension is H
  im2col     jnp.pad + 9 shifted slices concatenated on channels, one matmul
             [B*H*W, 9*C] x [9*C, C]
  taps       sum over the 9 taps of a shifted slice times a [C, C] matmul

GFLOP/s are nominal: 2*B*H*W*C*C*9 per conv (3x that for fwd+bwd), whatever the formulation
computes. Bails out of a measurement after --budget seconds (fewer repetitions when one call is
slow). Prints a markdown table and a short conclusion computed from the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ConvFn = Callable[[jax.Array, jax.Array], jax.Array]
OPS = ("fwd", "dx", "dw", "fwd+bwd")
PAD = ((1, 1), (1, 1))


# --- formulations (all take and return NHWC/HWIO semantics unless `layout` says NCHW) ---------

def conv_ref(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), PAD,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_nchw(x: jax.Array, w: jax.Array) -> jax.Array:
    """x: [B, C, H, W], w: [O, I, 3, 3]."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), PAD,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))


def conv_pad_valid(x: jax.Array, w: jax.Array) -> jax.Array:
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jax.lax.conv_general_dilated(xp, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def make_pad_wide(min_width: int) -> ConvFn:
    def conv_pad_wide(x: jax.Array, w: jax.Array) -> jax.Array:
        width = x.shape[2]
        extra = max(0, min_width - width)
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1 + extra), (0, 0)))
        y = jax.lax.conv_general_dilated(xp, w, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y[:, :, :width, :]
    return conv_pad_wide


def conv_swap_hw(x: jax.Array, w: jax.Array) -> jax.Array:
    y = conv_ref(jnp.swapaxes(x, 1, 2), jnp.swapaxes(w, 0, 1))
    return jnp.swapaxes(y, 1, 2)


def conv_im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    b, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, dy:dy + h, dx:dx + wd, :]
                            for dy in range(3) for dx in range(3)], axis=-1)
    y = cols.reshape(b * h * wd, 9 * c) @ w.reshape(9 * c, w.shape[-1])
    return y.reshape(b, h, wd, w.shape[-1])


def conv_taps(x: jax.Array, w: jax.Array) -> jax.Array:
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = None
    for dy in range(3):
        for dx in range(3):
            term = jnp.einsum("bhwc,co->bhwo", xp[:, dy:dy + h, dx:dx + wd, :], w[dy, dx])
            y = term if y is None else y + term
    return y


@dataclasses.dataclass(frozen=True)
class Formulation:
    name: str
    fn: ConvFn
    layout: str = "NHWC"  # "NCHW": x, dy, y stored NCHW and w OIHW


def formulations(min_width: int) -> dict[str, Formulation]:
    forms = [Formulation("ref", conv_ref), Formulation("nchw", conv_nchw, "NCHW"),
             Formulation("pad_valid", conv_pad_valid),
             Formulation("pad_wide", make_pad_wide(min_width)),
             Formulation("swap_hw", conv_swap_hw), Formulation("im2col", conv_im2col),
             Formulation("taps", conv_taps)]
    return {f.name: f for f in forms}


def to_layout(form: Formulation, x: np.ndarray, w: np.ndarray, g: np.ndarray):
    if form.layout == "NCHW":
        return x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2)
    return x, w, g


def from_layout(form: Formulation, kind: str, a: np.ndarray) -> np.ndarray:
    """Back to NHWC ("x") / HWIO ("w")."""
    if form.layout == "NCHW":
        return a.transpose(0, 2, 3, 1) if kind == "x" else a.transpose(2, 3, 1, 0)
    return a


def jitted_ops(fn: ConvFn) -> dict[str, Callable]:
    def fwd(x, w, g):
        return fn(x, w)

    def dx(x, w, g):
        return jax.vjp(lambda x_: fn(x_, w), x)[1](g)[0]

    def dw(x, w, g):
        return jax.vjp(lambda w_: fn(x, w_), w)[1](g)[0]

    def both(x, w, g):
        return jax.value_and_grad(lambda x_, w_: jnp.sum(fn(x_, w_) * g), argnums=(0, 1))(x, w)

    return {"fwd": jax.jit(fwd), "dx": jax.jit(dx), "dw": jax.jit(dw), "fwd+bwd": jax.jit(both)}


# --- timing -----------------------------------------------------------------------------------

def time_call(call: Callable[[], object], reps: int, budget: float) -> float:
    """Median seconds of up to `reps` calls after one warm-up call (compile beforehand), using
    fewer calls when they would take more than ~`budget` seconds (the warm-up time if just one)."""
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    n = min(reps, int(budget / max(first, 1e-9)))
    times = [first]
    if n >= 1:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check(name: str, got: np.ndarray, want: np.ndarray) -> None:
    atol = 1e-4 * float(np.max(np.abs(want)))
    if not np.allclose(got, want, rtol=1e-4, atol=atol):
        err = float(np.max(np.abs(got - want)))
        raise AssertionError(f"{name}: max |diff| {err:.3g} (max |ref| {np.max(np.abs(want)):.3g})")


def bench_jax(size: tuple[int, int], args: argparse.Namespace, forms: list[Formulation],
              ops: list[str]) -> list[dict]:
    h, wd = size
    rng = np.random.default_rng(0)
    c = args.channels
    x = rng.standard_normal((args.batch, h, wd, c), dtype=np.float32)
    w = (rng.standard_normal((3, 3, c, c), dtype=np.float32) / np.sqrt(9 * c)).astype(np.float32)
    g = rng.standard_normal((args.batch, h, wd, c), dtype=np.float32)
    ref_ops = jitted_ops(conv_ref)
    want = {op: jax.device_get(ref_ops[op](x, w, g)) for op in ops}
    rows = []
    for form in forms:
        xa, wa, ga = (jnp.asarray(a) for a in to_layout(form, x, w, g))
        jops = ref_ops if form.name == "ref" else jitted_ops(form.fn)
        for op in ops:
            out = jax.device_get(jops[op](xa, wa, ga))
            tag = f"{h}x{wd} {form.name} {op}"
            if op == "fwd":
                check(tag, from_layout(form, "x", out), want[op])
            elif op == "dx":
                check(tag, from_layout(form, "x", out), want[op])
            elif op == "dw":
                check(tag, from_layout(form, "w", out), want[op])
            else:
                check(tag + " loss", np.asarray(out[0]), np.asarray(want[op][0]))
                check(tag + " dx", from_layout(form, "x", out[1][0]), want[op][1][0])
                check(tag + " dw", from_layout(form, "w", out[1][1]), want[op][1][1])
            call = functools.partial(jops[op], xa, wa, ga)
            sec = time_call(call, args.reps, args.budget)
            rows.append(dict(size=size, form=form.name, op=op, sec=sec))
    return rows


def bench_torch(size: tuple[int, int], args: argparse.Namespace, ops: list[str]) -> list[dict]:
    import torch
    import torch.nn.functional as F

    h, wd = size
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.channels, h, wd, generator=gen).contiguous(memory_format=cl)
    w = (torch.randn(args.channels, args.channels, 3, 3, generator=gen)
         / (9 * args.channels) ** 0.5).contiguous(memory_format=cl)
    g = torch.randn(args.batch, args.channels, h, wd, generator=gen).contiguous(memory_format=cl)
    conv_bwd = torch.ops.aten.convolution_backward

    def backward(mask: list[bool]):
        return conv_bwd(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    def both():
        xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = F.conv2d(xr, wr, padding=1)
        return torch.autograd.grad(y, (xr, wr), g)

    calls = {"fwd": lambda: F.conv2d(x, w, padding=1),
             "dx": lambda: backward([True, False, False])[0],
             "dw": lambda: backward([False, True, False])[1],
             "fwd+bwd": both}
    rows = []
    for op in ops:  # first call: one-time setup (oneDNN primitives)
        with torch.set_grad_enabled(op == "fwd+bwd"):
            calls[op]()
    with torch.no_grad():
        for op in ops:
            if op == "fwd+bwd":
                continue
            rows.append(dict(size=size, form="torch", op=op,
                             sec=time_call(calls[op], args.reps, args.budget)))
    if "fwd+bwd" in ops:
        rows.append(dict(size=size, form="torch", op="fwd+bwd",
                         sec=time_call(calls["fwd+bwd"], args.reps, args.budget)))
    return rows


# --- report -----------------------------------------------------------------------------------

def gflop(size: tuple[int, int], op: str, batch: int, channels: int) -> float:
    one = 2 * batch * size[0] * size[1] * channels * channels * 9 / 1e9
    return 3 * one if op == "fwd+bwd" else one


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print("| map | formulation | op | ms | GFLOP/s |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        gf = gflop(r["size"], r["op"], args.batch, args.channels) / r["sec"]
        print(f"| {r['size'][0]}x{r['size'][1]} | {r['form']} | {r['op']} "
              f"| {r['sec'] * 1e3:.2f} | {gf:.1f} |")


def conclusion(rows: list[dict], args: argparse.Namespace, slow_factor: float = 3.0) -> list[str]:
    """Computed from the table: an op of the reference formulation is "slow" on a map when its
    GFLOP/s are `slow_factor` x below its best map's; then the narrow/wide ratio, whether the
    slow maps are told apart by W < 3 or by H*W, and the formulation that is fastest there."""
    rate = {(r["size"], r["form"], r["op"]): gflop(r["size"], r["op"], args.batch, args.channels)
            / r["sec"] for r in rows}
    sizes = sorted({r["size"] for r in rows}, key=lambda t: (t[0] * t[1], t))
    ops = [op for op in ("fwd", "dx", "dw") if any(k[1:] == ("ref", op) for k in rate)]
    if len(sizes) < 2 or not ops:
        return ["(need two map sizes and the ref formulation to conclude)"]

    def name(t: tuple[int, int]) -> str:
        return f"{t[0]}x{t[1]}"

    slow: dict[str, list[tuple[int, int]]] = {}
    parts = []
    for op in ops:
        best = max(rate[(t, "ref", op)] for t in sizes)
        slow[op] = [t for t in sizes if rate[(t, "ref", op)] * slow_factor < best]
        worst = min(sizes, key=lambda t: rate[(t, "ref", op)])
        parts.append(f"{op} on {','.join(map(name, slow[op])) or 'none'}"
                     + (f" (worst {name(worst)}: {best / rate[(worst, 'ref', op)]:.0f}x)"
                        if slow[op] else ""))
    lines = [f"ref ops >= {slow_factor:g}x below their best map's GFLOP/s: " + "; ".join(parts)]

    bad = {t for op in ops for t in slow[op]}
    good = [t for t in sizes if t not in bad]
    narrow = [t for t in sizes if t[1] < 3]
    wide = [t for t in sizes if t[1] >= 3]
    pairs = []
    for t in narrow:
        same_h = [u for u in wide if u[0] == t[0]]
        if same_h:
            u = min(same_h, key=lambda u: u[1])
            pairs.append(f"{name(t)}/{name(u)} " + ",".join(
                f"{op} {rate[(u, 'ref', op)] / rate[(t, 'ref', op)]:.1f}x" for op in ops))
    if pairs:
        lines.append("narrow vs wide (same H), ref GFLOP/s wide/narrow: " + "; ".join(pairs))
    if bad and good:
        by_width = all(t[1] < 3 for t in bad) and all(t[1] >= 3 for t in good)
        max_bad = max(t[0] * t[1] for t in bad)
        by_area = max_bad < min(t[0] * t[1] for t in good)
        if by_width:
            where = "slow maps are exactly those with W < 3"
        else:
            odd = [name(t) + (" slow" if t in bad else " fast") for t in sizes
                   if (t in bad) != (t[1] < 3)]
            where = f"W < 3 does not tell slow maps from fast ones ({', '.join(odd)})"
        lines.append(where + (f"; slow maps are those with H*W <= {max_bad}" if by_area else "")
                     + ".")
    cases = [(t, op) for op in ops for t in slow[op]]
    forms = sorted({k[1] for k in rate if k[1] not in ("ref", "torch")})
    if cases and forms:
        def worst_speedup(form: str) -> float:
            return min(rate.get((t, form, op), 0.0) / rate[(t, "ref", op)] for t, op in cases)
        fix = max(forms, key=worst_speedup)
        at_good = [rate[(t, fix, op)] / rate[(t, "ref", op)] for t in good for op in ops
                   if (t, fix, op) in rate]
        lines.append(f"best fix: {fix}, >= {worst_speedup(fix):.0f}x faster than ref on every "
                     "slow case" + (f"; on the other maps {min(at_good):.2f}-{max(at_good):.2f}x "
                                    "ref" if at_good else "") + ".")
    return lines


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4x2,4x3,8x2,8x4,2x4", help="HxW maps, comma-separated")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5, help="timed calls (median), at most")
    parser.add_argument("--budget", type=float, default=2.0,
                        help="seconds per measurement; fewer reps when one call is slow")
    parser.add_argument("--formulations", default=",".join(formulations(3)))
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--min-width", type=int, default=4, help="pad_wide's computed width")
    parser.add_argument("--torch", action="store_true", help="also PyTorch CPU, channels_last")
    args = parser.parse_args()

    forms_all = formulations(args.min_width)
    forms = [forms_all[n] for n in args.formulations.split(",") if n]
    ops = [op for op in args.ops.split(",") if op]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        parser.error(f"unknown ops {unknown}; choose from {OPS}")
    print(f"jax {jax.__version__} {jax.devices()[0].platform}, batch {args.batch}, "
          f"{args.channels}->{args.channels} ch, 3x3 stride 1 SAME, float32, "
          f"loadavg {os.getloadavg()[0]:.2f}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    rows: list[dict] = []
    for size in parse_sizes(args.sizes):
        rows += bench_jax(size, args, forms, ops)
        if args.torch:
            rows += bench_torch(size, args, ops)
    print_table(rows, args)
    print()
    for line in conclusion(rows, args):
        print(line)


if __name__ == "__main__":
    main()
