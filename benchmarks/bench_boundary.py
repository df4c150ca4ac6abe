"""Non-circular boundaries: PSNR and time of circular / padded / exact solves.

On a 512x512 natural image (skimage camera, float64, in [0, 1]) blurred with
a boundary model (reflect, zeros) by 9x9 Gaussian (sigma 2), 21x21 Gaussian
(sigma 5) and a 15-px motion PSF, plus noise 1e-3, eps = 1e-3:

* circular: ``deconvolve(y, psf, eps)`` (wrong model: rings at the edges);
* padded: the fast path ``deconvolve(..., boundary=b)``, without / with taper;
* exact: ``solver="cg"`` (auto preconditioner, warm start) and unpreconditioned;
* deepinv ``Blur(...).A_dagger`` if deepinv is importable (not installed here).

Then, per boundary, CG iterations to relative residual 1e-6 with the DCT,
FFT and no preconditioner (9x9 Gaussian), and a table of the fast paths
(padded, DCT) as multiples of the circular solve, measured side by side in
float32 and float64. Default run: ~3 minutes on 2 CPU cores.

Usage: python benchmarks/bench_boundary.py [--size 512] [--threads 2] [--speed-only]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

import deconv_ext as dx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import markdown_table, median_times  # noqa: E402


def gaussian(k, sigma):
    t = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g[:, None] * g[None, :]
    return g / g.sum()


def motion(k):
    """A straight motion streak of length k at a shallow angle (not axis-symmetric)."""
    p = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        p[k // 2 + (i - k // 2) // 3, i] = 1.0
    return p / p.sum()


def psnr(x, ref):
    return float(10 * torch.log10(1.0 / ((x - ref) ** 2).mean()))


def timed(fn, repeat=3):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def once(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=200, help="rounds of the speed table")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the table of fast paths vs the circular solve")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from skimage import data, transform

    img = data.camera().astype(np.float64) / 255
    if img.shape != (args.size, args.size):
        img = transform.resize(img, (args.size, args.size), anti_aliasing=True)
    img = torch.from_numpy(img)
    if args.speed_only:
        print(speed_table(img, rounds=args.rounds))
        return
    gen = torch.Generator().manual_seed(0)
    eps = 1e-3
    psfs = [("gauss9 s2", gaussian(9, 2.0)), ("gauss21 s5", gaussian(21, 5.0)),
            ("motion15", motion(15))]
    try:
        import deepinv  # noqa: F401
        have_deepinv = True
    except ImportError:
        have_deepinv = False
        print("deepinv is not installed: its Blur(...).A_dagger column is skipped.\n")

    print(f"{args.size}x{args.size} float64, eps={eps}, noise 1e-3; PSNR dB / time s "
          f"(fast paths: median of 3; CG: one run, iterations)")
    hdr = (f"{'psf':11s} {'boundary':8s} | {'circular':>13s} | {'padded':>13s} | "
           f"{'padded+taper':>13s} | {'exact CG auto':>22s} | {'exact CG none':>22s}")
    print(hdr)
    print("-" * len(hdr))
    for name, psf in psfs:
        for b in ("reflect", "zeros"):
            y = dx.convolve(img, psf, boundary=b)
            y = y + 1e-3 * torch.randn(y.shape, generator=gen, dtype=y.dtype)
            taper = psf.shape[-1]
            xc, tc = timed(lambda: dx.deconvolve(y, psf, eps=eps))
            xp, tp = timed(lambda: dx.deconvolve(y, psf, eps=eps, boundary=b))
            xt, tt = timed(lambda: dx.deconvolve(y, psf, eps=eps, boundary=b, taper=taper))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                (xe, ie), te = once(lambda: dx.deconvolve(y, psf, eps=eps, boundary=b, solver="cg",
                                                           return_info=True))
                (xn, inn), tn = once(lambda: dx.deconvolve(y, psf, eps=eps, boundary=b,
                                                            solver="cg", precond="none",
                                                            return_info=True))
            print(f"{name:11s} {b:8s} | {psnr(xc, img):5.2f} {tc:7.4f} | {psnr(xp, img):5.2f} "
                  f"{tp:7.4f} | {psnr(xt, img):5.2f} {tt:7.4f} | {psnr(xe, img):5.2f} {te:6.2f} "
                  f"{ie.max_iterations:4d} it {ie.precond or 'none':4s} | {psnr(xn, img):5.2f} "
                  f"{tn:6.2f} {inn.max_iterations:4d} it")
            if have_deepinv:  # pragma: no cover - deepinv absent here
                print("   (deepinv comparison: run deepinv.physics.Blur(filter, padding=...)"
                      ".A_dagger on the same y)")

    print("\nCG iterations to relative residual 1e-6 (gauss9 s2, eps 1e-3, max 300), "
          "by preconditioner [time s]")
    psf = gaussian(9, 2.0)
    for b in ("reflect", "symmetric", "replicate", "zeros"):
        y = dx.convolve(img, psf, boundary=b)
        row = []
        for pc in ("dct", "fft", "none"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                (_, info), t = once(lambda: dx.deconvolve(y, psf, eps=eps, boundary=b, solver="cg",
                                                           precond=pc, max_iter=300,
                                                           return_info=True))
            flag = "" if bool(info.converged.all()) else "(nc)"
            row.append(f"{pc}: {info.max_iterations:3d}{flag:4s} [{t:5.2f}]")
        print(f"  {b:9s} " + "   ".join(row))

    print()
    print(speed_table(img, rounds=args.rounds))


def speed_table(img: torch.Tensor, rounds: int = 200) -> str:
    """Fast paths vs the circular solve, one-shot calls, side by side (median_times).

    gauss9 s2, eps 1e-3, on ``img`` in float32 and float64: the padded fast
    path (reflect, zeros) and the DCT direct solve (symmetric) as multiples
    of the circular solve of the same image.
    """
    psf64 = gaussian(9, 2.0)
    rows = []
    for dtype in (torch.float32, torch.float64):
        psf = psf64.to(dtype)
        y = dx.convolve(img.to(dtype), psf, boundary="symmetric")
        t = median_times({
            "circular": lambda: dx.deconvolve(y, psf, eps=1e-3),
            "padded reflect": lambda: dx.deconvolve(y, psf, eps=1e-3, boundary="reflect"),
            "padded zeros": lambda: dx.deconvolve(y, psf, eps=1e-3, boundary="zeros"),
            "DCT (symmetric)": lambda: dx.deconvolve(y, psf, eps=1e-3, boundary="symmetric",
                                                     solver="dct"),
        }, rounds=rounds, min_time=10.0)
        base = t["circular"]
        rows.append([str(dtype).replace("torch.", ""), f"{base * 1e3:.2f} ms = 1.00"]
                    + [f"{t[k] / base:.2f}" for k in ("padded reflect", "padded zeros",
                                                       "DCT (symmetric)")])
    return markdown_table(["dtype", "circular", "padded reflect", "padded zeros",
                           "DCT (symmetric)"], rows)


if __name__ == "__main__":
    main()
