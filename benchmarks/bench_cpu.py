"""CPU benchmark of the foundation (issue 2): ratios to torch's FFT round trip.

For the five benchmark shapes of the README (float32, 5x5 Gaussian PSF,
eps=1e-2), times side by side in one process:

* ``round trip``: bare ``irfft2(rfft2(x))`` of the same tensor (= 1.00);
* ``seed``: the seed article's formula (full complex FFTs, ``K/(|K|+eps)^2``,
  filter recomputed per call);
* ``torch/call``: the correct torch version, filter computed per call;
* ``torch/cached``: the correct torch version with a cached filter;
* ``scipy round trip``: the same round trip with ``scipy.fft`` (pocketfft);
* ``deconvolve``: this library, one-shot (repeated calls reuse a plan cached
  by the PSF's content);
* ``plan``: this library, ``DeconvPlan`` built once, with the FFT library
  chosen per shape (``FFT chosen``; ``DECONV_EXT_CPU_FFT=auto``);
* ``plan (FFT=pipeline)``: the same plan forced onto the C++ pipeline
  (``DECONV_EXT_CPU_FFT=pipeline``: MKL's DFTI called directly where torch ships
  MKL; what compiled and autograd calls use);
* with pyFFTW installed (GPL, optional, never a default), timed in a second
  group with torch's round trip: ``FFTW round trip``, planned with
  ``FFTW_MEASURE`` (as a multiple of torch's), and ``plan (FFTW)``
  (``DECONV_EXT_CPU_FFT=pyfftw``) as a multiple of the FFTW round trip.

Then the fused C++ spectral solve alone on a 16x3x512x257 complex64 spectrum,
against the torch expression computing the same filter per call and against
an in-place multiply by a precomputed filter (the memory-bound floor).

Usage::

    python benchmarks/bench_cpu.py [--quick] [--no-append]

Appends a dated section to benchmarks/RESULTS.md unless --no-append.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, markdown_table, median_times, today  # noqa: E402

import scipy.fft as scipy_fft  # noqa: E402

import deconv_ext as dx  # noqa: E402
from deconv_ext import config  # noqa: E402
from deconv_ext.execution import fft_choice  # noqa: E402
from deconv_ext.plans import spectra as spectral  # noqa: E402

SHAPES = [(1, 1, 512, 512), (1, 1, 2048, 2048), (8, 3, 256, 256), (64, 1, 128, 128),
          (16, 3, 512, 512)]
EPS = 1e-2
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def gaussian_psf(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def seed_formula(image, kernel, epsilon=EPS):
    """The seed article's Example 1, verbatim in substance (shifted, full FFTs)."""
    image_fft = torch.fft.fft2(image)
    kernel_fft = torch.fft.fft2(kernel, s=(image.shape[-2], image.shape[-1]))
    mag = torch.abs(kernel_fft) + epsilon
    return torch.fft.ifft2(image_fft * (kernel_fft / mag ** 2)).real


def torch_filter(psf, size):
    K = spectral.psf_spectrum(psf, size)
    return K.conj() / (K.abs() ** 2 + EPS)


def torch_per_call(image, psf):
    size = image.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(image) * torch_filter(psf, size), s=size)


def fftw_round_trip(xn, threads: int):
    """A planned (FFTW_MEASURE) FFTW rfft2 + irfft2 of ``xn``, or None without pyFFTW."""
    try:
        import pyfftw.builders as fb
    except ImportError:
        return None
    fwd = fb.rfft2(xn.copy(), threads=threads, planner_effort="FFTW_MEASURE")
    inv = fb.irfft2(fwd.output_array.copy(), s=xn.shape[-2:], threads=threads,
                    planner_effort="FFTW_MEASURE")
    return lambda: inv(fwd(xn))


def bench_shapes(rounds: int, min_time: float):
    psf = gaussian_psf()
    rows, raw = [], {}
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(*shape, generator=gen)
        size = shape[-2:]
        G = torch_filter(psf, size)
        plan = dx.DeconvPlan(psf, size, eps=EPS)
        xn = x.numpy()
        workers = torch.get_num_threads()
        choice = fft_choice.choose(tuple(x.shape), x.dtype)  # measured once, cached

        def forced(name, fn):
            def run():
                with config.override(cpu_fft=name):
                    return fn()
            return run

        t = median_times({
            "round trip": lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=size),
            "scipy round trip": lambda: scipy_fft.irfft2(scipy_fft.rfft2(xn, workers=workers),
                                                         s=size, workers=workers),
            "seed": lambda: seed_formula(x, psf),
            "torch/call": lambda: torch_per_call(x, psf),
            "torch/cached": lambda: torch.fft.irfft2(torch.fft.rfft2(x) * G, s=size),
            "deconvolve": lambda: dx.deconvolve(x, psf, eps=EPS),
            "plan": lambda: plan(x),
            "plan (FFT=pipeline)": forced("pipeline", lambda: plan(x)),
        }, rounds=rounds, min_time=min_time)
        # FFTW in a group of its own, with torch's round trip again: FFTW's
        # threads, interleaved with the group above, slowed torch's round trip
        # by up to 1.6x here (and ours by 5%), which says nothing about either.
        fftw = fftw_round_trip(xn, workers)
        if fftw is not None:
            t.update({k + " (FFTW group)": v for k, v in median_times({
                "round trip": lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=size),
                "FFTW round trip": fftw,
                "plan (FFTW)": forced("pyfftw", lambda: plan(x)),
            }, rounds=rounds, min_time=min_time).items()})
        base = t["round trip"]
        name = "x".join(map(str, shape[:2])) + f"x{shape[2]}²"
        raw[name] = dict(t, fft_choice=choice)
        rows.append([name, f"{base * 1e3:.2f} ms"] + [f"{t[k] / base:.2f}" for k in
                     ("scipy round trip", "seed", "torch/call", "torch/cached", "deconvolve",
                      "plan", "plan (FFT=pipeline)")]
                    + [choice, f"{t['seed'] / t['deconvolve']:.1f}x"]
                    + ([f"{t['FFTW round trip (FFTW group)'] / t['round trip (FFTW group)']:.2f}",
                        f"{t['plan (FFTW) (FFTW group)'] / t['FFTW round trip (FFTW group)']:.2f}"]
                       if fftw else ["not installed", "—"]))
    header = ["shape", "torch round trip", "scipy round trip", "seed", "torch/call",
              "torch/cached", "deconvolve", "plan", "plan (FFT=pipeline)", "FFT chosen",
              "deconvolve vs seed", "FFTW round trip", "plan (FFTW) / FFTW round trip"]
    return markdown_table(header, rows), raw


def bench_solve(rounds: int):
    gen = torch.Generator().manual_seed(1)
    shape = (16, 3, 512, 257)
    Y = torch.randn(*shape, generator=gen, dtype=torch.complex64)
    K = torch.randn(512, 257, generator=gen, dtype=torch.complex64)
    G = K.conj() / (K.abs() ** 2 + EPS)
    thr = torch.zeros((), dtype=torch.float32)
    Ys = [Y.clone() for _ in range(2)]  # the in-place ones work on their own copies
    op = torch.ops.deconv_ext.spectral_solve
    op_ = torch.ops.deconv_ext.spectral_solve_
    t = median_times({
        "fused C++ solve, in place": lambda: op_(Ys[1], K, None, EPS, thr),
        "fused C++ solve": lambda: op(Y, K, None, EPS, thr),
        "torch expression": lambda: K.conj() * Y / (K.abs() ** 2 + EPS),
        "Y.mul_(G)": lambda: Ys[0].mul_(G),
        "Y * G": lambda: Y * G,
    }, rounds=rounds)
    f = t["fused C++ solve, in place"]
    rows = [[k, f"{v * 1e3:.2f} ms", f"{v / f:.2f}"] for k, v in t.items()]
    return markdown_table(["16x3x512x257 complex64", "median", "/ fused"], rows), t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--json", help="also write the raw medians (s) to this JSON file")
    args = ap.parse_args(argv)
    # Small shapes get many rounds (a 512x512 round trip is 0.5 ms: its
    # median over 21 rounds moved by +-0.15), large ones at least a few.
    rounds, min_time = (60, 2.0) if args.quick else (300, 10.0)
    shapes_table, raw_shapes = bench_shapes(rounds, min_time)
    solve_table, raw_solve = bench_solve(7 if args.quick else 21)
    text = (f"\n## {today()} — CPU foundation benchmark\n\n"
            f"Machine: {machine_line()}  \n"
            f"Command: `python benchmarks/bench_cpu.py{' --quick' if args.quick else ''}`  \n"
            f"float32, 5x5 Gaussian PSF, eps={EPS}; median time as a multiple of torch's bare "
            f"rfft2+irfft2 round trip of the same tensor, measured side by side.\n\n"
            f"{shapes_table}\n\nFused spectral solve alone:\n\n{solve_table}\n")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shapes": raw_shapes, "solve": raw_solve}, f, indent=2)
    if not args.no_append:
        new = not os.path.exists(RESULTS)
        with open(RESULTS, "a") as f:
            if new:
                f.write("# Benchmark results\n\nNewest last. Each section: date, machine, command, "
                        "table. Ratios are measured side by side in one process.\n")
            f.write(text)


if __name__ == "__main__":
    main()
