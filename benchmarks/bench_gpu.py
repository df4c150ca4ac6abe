"""GPU benchmark of the Triton path (run by benchmarks/gpu_check.sh).

Sections, each a set of rows of one table:

1. ``bandwidth``: the fused spectral solve (out of place and in place) vs a
   device-to-device copy of the same bytes, on spectra of >= 256 MB
   (achieved GB/s, % of the copy's), plus a sweep of block sizes;
2. ``e2e``: one-shot ``deconvolve`` and a reused ``DeconvPlan`` vs the bare
   cuFFT ``rfft2`` + ``irfft2`` round trip (= 1.00), the seed article's
   formula (full complex FFTs, ``K / (|K| + eps)^2``) and the correct
   pure-torch version (half spectrum, origin-corrected kernel, filter
   computed per call), at 16x3x1024x1024 float32 and other shapes;
3. ``compile``: ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) of a
   ``DeconvPlan`` call vs eager; a failure there is an error row.

Timing: CUDA events around each call, medians after warm-up, random
(never zero) data, inputs rotated over several buffers so that L2 never
serves a repeat. The table is printed last; with ``$OUT`` set (or
``--out``) it is also written there as ``bench_gpu.md`` and ``bench_gpu.json``.

``--device cpu --dry-run`` runs every code path on tiny shapes on the CPU
(the Triton kernels in the interpreter): a check of the script itself, not a
measurement.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import deconv_ext as dx  # noqa: E402
from deconv_ext import triton_kernels as tk  # noqa: E402


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


class Timer:
    """Median time of ``fn(buffer)`` over rotating buffers, CUDA events on a GPU."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn: Callable[[torch.Tensor], object], bufs: Sequence[torch.Tensor]) -> float:
        n = len(bufs)
        for i in range(self.warmup):
            fn(bufs[i % n])
        times: List[float] = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.reps)]
            for i, (a, b) in enumerate(events):
                a.record()
                fn(bufs[i % n])
                b.record()
            torch.cuda.synchronize()
            times = [a.elapsed_time(b) * 1e-3 for a, b in events]
        else:
            for i in range(self.reps):
                t0 = time.perf_counter()
                fn(bufs[i % n])
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def n_buffers(nbytes: int, l2_bytes: int = 64 << 20) -> int:
    """Enough input buffers that consecutive calls never find theirs in L2."""
    return max(2, min(8, math.ceil(2 * l2_bytes / max(nbytes, 1)) + 1))


def rand_spectrum(shape, dtype, device, gen) -> torch.Tensor:
    re = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    im = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    z = torch.complex(re, im) + 0.01  # never zero
    return z.to(dtype)


# ---------------------------------------------------------------------------
# The methods compared end to end
# ---------------------------------------------------------------------------


def seed_formula(image: torch.Tensor, psf: torch.Tensor, eps: float) -> torch.Tensor:
    """The seed article's version: full complex FFTs, kernel spectrum per call,
    no origin correction, ``K / (|K| + eps)^2`` (see /work/shared/seed-article.md)."""
    image_fft = torch.fft.fft2(image)
    kernel_fft = torch.fft.fft2(psf, s=(image.shape[-2], image.shape[-1]))
    mag = torch.abs(kernel_fft) + eps
    return torch.fft.ifft2(image_fft * (kernel_fft / mag ** 2)).real


def correct_torch(image: torch.Tensor, psf: torch.Tensor, eps: float) -> torch.Tensor:
    """Correct pure torch, filter per call: half spectrum, PSF origin rolled to
    (0, 0), ``conj(K) Y / (|K|^2 + eps)``."""
    H, W = image.shape[-2:]
    kh, kw = psf.shape[-2:]
    k = torch.roll(F.pad(psf, (0, W - kw, 0, H - kh)), (-(kh // 2), -(kw // 2)), dims=(-2, -1))
    K = torch.fft.rfft2(k)
    X = torch.conj(K) * torch.fft.rfft2(image) / (K.real ** 2 + K.imag ** 2 + eps)
    return torch.fft.irfft2(X, s=(H, W))


def gaussian_psf(size: int, sigma: float, device, dtype=torch.float32) -> torch.Tensor:
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def section_bandwidth(rows: List[dict], device, timer: Timer, shapes, gen, blocks) -> None:
    for shape in shapes:
        H, Wf = shape[-2:]
        y0 = rand_spectrum(shape, torch.complex64, device, gen)
        nbuf = n_buffers(y0.numel() * 8)
        bufs = [y0] + [rand_spectrum(shape, torch.complex64, device, gen) for _ in range(nbuf - 1)]
        k = rand_spectrum((H, Wf), torch.complex64, device, gen)
        thresh = torch.full((1, 1), 1e-6, device=device)
        out = torch.empty_like(y0)
        nbytes = 2 * y0.numel() * 8  # one read of y, one write of X
        mb = y0.numel() * 8 / 2**20
        t_copy = timer(lambda y: out.copy_(y), bufs)
        rows.append(dict(section="bandwidth", case=f"copy {tuple(shape)} c64 ({mb:.0f} MB)",
                         time_ms=t_copy * 1e3, gbps=nbytes / t_copy / 1e9, pct_copy=100.0))

        def add(name, fn):
            try:
                t = timer(fn, bufs)
                rows.append(dict(section="bandwidth", case=f"{name} {tuple(shape)}",
                                 time_ms=t * 1e3, gbps=nbytes / t / 1e9, pct_copy=100 * t_copy / t))
            except Exception as exc:  # one failing variant must not hide the others
                rows.append(dict(section="bandwidth", case=f"{name} {tuple(shape)}",
                                 error=f"{type(exc).__name__}: {exc}"))

        add("fused solve", lambda y: tk.spectral_solve(y, k, None, 1e-2, thresh))
        add("fused solve in place", lambda y: tk.spectral_solve_(y, k, None, 1e-2, thresh))
        reg = torch.rand((H, Wf), generator=gen, device=device) + 0.1
        add("fused solve, reg tensor", lambda y: tk.spectral_solve(y, k, reg, 1e-2, thresh))
        add("torch eager solve (ref)", lambda y: torch.conj(k) * y / (k.abs() ** 2 + 1e-2))
        for blk in blocks:
            tk.spectral.BLOCK_OVERRIDE = blk
            try:
                add(f"fused solve BLOCK={blk[0]} warps={blk[1]}",
                    lambda y: tk.spectral_solve(y, k, None, 1e-2, thresh))
            finally:
                tk.spectral.BLOCK_OVERRIDE = None
        del bufs, out, y0


def section_e2e(rows: List[dict], device, timer: Timer, shapes, gen) -> None:
    eps = 1e-2
    for shape in shapes:
        H, W = shape[-2:]
        x0 = torch.rand(shape, generator=gen, device=device) + 0.1
        nbuf = n_buffers(x0.numel() * 4)
        bufs = [x0] + [torch.rand(shape, generator=gen, device=device) + 0.1 for _ in range(nbuf - 1)]
        psf = gaussian_psf(5, 1.2, device)
        plan = dx.DeconvPlan(psf, (H, W), eps=eps)
        # The plan and the one-shot agree with the correct torch version (a guard
        # against benchmarking something wrong).
        err = (plan(x0) - correct_torch(x0, psf, eps)).abs().max().item()
        scale = correct_torch(x0, psf, eps).abs().max().item()
        cases = {
            "cuFFT rfft2+irfft2": lambda x: torch.fft.irfft2(torch.fft.rfft2(x), s=(H, W)),
            "DeconvPlan (reused)": lambda x: plan(x),
            "deconvolve (one-shot)": lambda x: dx.deconvolve(x, psf, eps=eps),
            "correct torch, filter per call": lambda x: correct_torch(x, psf, eps),
            "seed formula": lambda x: seed_formula(x, psf, eps),
        }
        base = None
        for name, fn in cases.items():
            try:
                t = timer(fn, bufs)
            except Exception as exc:
                rows.append(dict(section="e2e", case=f"{name} {tuple(shape)}",
                                 error=f"{type(exc).__name__}: {exc}"))
                continue
            base = t if base is None else base
            rows.append(dict(section="e2e", case=f"{name} {tuple(shape)}", time_ms=t * 1e3,
                             ratio=t / base,
                             note=f"max|plan - torch| / max = {err / scale:.1e}"
                             if name.startswith("DeconvPlan") else ""))
        del bufs, x0


def section_compile(rows: List[dict], device, timer: Timer, shape, gen, dry_run: bool) -> None:
    H, W = shape[-2:]
    bufs = [torch.rand(shape, generator=gen, device=device) + 0.1 for _ in range(3)]
    plan = dx.DeconvPlan(gaussian_psf(5, 1.2, device), (H, W), eps=1e-2)
    t_eager = timer(lambda x: plan(x), bufs)
    rows.append(dict(section="compile", case=f"DeconvPlan eager {tuple(shape)}",
                     time_ms=t_eager * 1e3, ratio=1.0))
    try:
        kwargs = dict(backend="eager") if dry_run else dict(mode="reduce-overhead")
        compiled = torch.compile(lambda x: plan(x), **kwargs)
        # Static input for CUDA graphs: copy into one buffer (the copy is timed too,
        # as a user feeding new data would pay it).
        static = bufs[0].clone()

        def run(x):
            static.copy_(x)
            return compiled(static)

        for _ in range(3):
            run(bufs[0])
        err = (run(bufs[1]) - plan(bufs[1])).abs().max().item()
        t = timer(run, bufs)
        rows.append(dict(section="compile",
                         case=f"torch.compile({'eager backend' if dry_run else 'reduce-overhead'}) "
                              f"{tuple(shape)}",
                         time_ms=t * 1e3, ratio=t / t_eager, note=f"max|diff| {err:.1e}"))
    except Exception as exc:
        rows.append(dict(section="compile", case=f"torch.compile(reduce-overhead) {tuple(shape)}",
                         error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
        traceback.print_exc()


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def format_table(rows: List[dict]) -> str:
    lines = [f"| {'section':9} | {'case':62} | {'ms':>9} | {'GB/s':>7} | {'% copy':>6} | "
             f"{'x base':>6} | note |",
             f"|{'-' * 11}|{'-' * 64}|{'-' * 11}|{'-' * 9}|{'-' * 8}|{'-' * 8}|------|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['section']:9} | {r['case'][:62]:62} | {'ERROR':>9} | {'':>7} | "
                         f"{'':>6} | {'':>6} | {r['error'][:120]} |")
            continue

        def f(key, fmt):
            return format(r[key], fmt) if key in r else ""

        lines.append(f"| {r['section']:9} | {r['case'][:62]:62} | {f('time_ms', '9.3f'):>9} | "
                     f"{f('gbps', '7.0f'):>7} | {f('pct_copy', '6.1f'):>6} | {f('ratio', '6.2f'):>6} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)


def environment(device) -> dict:
    import triton

    env = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
               python=platform.python_version(), torch=torch.__version__,
               triton=triton.__version__, device=str(device),
               interpreted=bool(tk.INTERPRETED))
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda)
    else:
        env.update(card=platform.processor() or platform.machine())
    return env


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes, few repetitions: exercise every code path")
    ap.add_argument("--out", default=os.environ.get("OUT") or None,
                    help="directory for bench_gpu.md / bench_gpu.json (default: $OUT)")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --device cpu --dry-run to check the script)",
              file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.dry_run:
        print("bench_gpu: the CPU mode is a dry run of the script only; pass --dry-run",
              file=sys.stderr)
        return 2
    gen = torch.Generator(device=device).manual_seed(0)
    if args.dry_run:
        timer = Timer(device, warmup=1, reps=args.reps or 2)
        bw_shapes = [(2, 8, 5)]
        e2e_shapes = [(2, 3, 16, 16), (1, 1, 32, 24)]
        blocks = [(8, 4)]
        compile_shape = (2, 1, 16, 16)
    else:
        timer = Timer(device, warmup=5, reps=args.reps or 30)
        # complex64 spectra of 269 MB and 538 MB (>= 256 MB).
        bw_shapes = [(64, 1024, 513), (128, 1024, 513)]
        e2e_shapes = [(16, 3, 1024, 1024), (1, 1, 2048, 2048), (8, 3, 256, 256), (64, 1, 128, 128)]
        blocks = [(512, 4), (1024, 4), (2048, 8), (4096, 8)]
        compile_shape = (16, 3, 1024, 1024)
    rows: List[dict] = []
    t0 = time.time()
    for name, run in (("bandwidth", lambda: section_bandwidth(rows, device, timer, bw_shapes, gen,
                                                              blocks)),
                      ("e2e", lambda: section_e2e(rows, device, timer, e2e_shapes, gen)),
                      ("compile", lambda: section_compile(rows, device, timer, compile_shape, gen,
                                                          args.dry_run))):
        print(f"[bench_gpu] {name} ... ({time.time() - t0:.0f} s)", flush=True)
        try:
            run()
        except Exception as exc:  # a broken section is reported, the others still run
            traceback.print_exc()
            rows.append(dict(section=name, case="(section failed)",
                             error=f"{type(exc).__name__}: {exc}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    env = environment(device)
    table = format_table(rows)
    header = (f"bench_gpu {env['date']}  {env.get('card')}  torch {env['torch']}  "
              f"triton {env['triton']}{'  (DRY RUN: not a measurement)' if args.dry_run else ''}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
        with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
            json.dump(dict(environment=env, dry_run=args.dry_run, rows=rows), f, indent=1)
    print(f"[bench_gpu] done in {time.time() - t0:.0f} s")
    print(header)
    print(table)
    return 1 if any("error" in r and r["section"] != "compile" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
