"""deconv_ext against its peers on the five benchmark shapes (README, "Benchmarks").

Every method deconvolves the same float32 batch blurred by a 5x5 Gaussian
PSF (Tikhonov, eps=1e-2; skimage's wiener uses its Laplacian regulariser).
Times are medians of side-by-side rounds in one process, printed as
multiples of torch's bare ``rfft2`` + ``irfft2`` round trip of the same
tensor (1.00: no FFT deconvolution can do less on this backend).

Peers that are not installed (deepinv, pyfftw) are reported as skipped, not
faked. A relative-error column (one shape, against the float64 reference
of the same problem) shows which methods compute the right answer.

Usage::

    python benchmarks/bench_peers.py            # all five shapes (a few minutes on 2 cores)
    python benchmarks/bench_peers.py --quick    # two shapes, fewer rounds
    python benchmarks/bench_peers.py --append-results   # add a section to RESULTS.md

Writes ``benchmarks/out/peers.csv`` / ``.json`` and the plot ``benchmarks/peers.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _report  # noqa: E402
from _timing import machine_line, markdown_table, median_times, today  # noqa: E402
from bench_cpu import fftw_round_trip  # noqa: E402

import deconv_ext as dx  # noqa: E402
from deconv_ext import reference  # noqa: E402

SHAPES = [(1, 1, 512, 512), (1, 1, 2048, 2048), (8, 3, 256, 256), (64, 1, 128, 128),
          (16, 3, 512, 512)]
QUICK_SHAPES = [(1, 1, 512, 512), (8, 3, 256, 256)]
EPS = 1e-2
FLOOR = "rfft2+irfft2 round trip (floor)"


def shape_name(shape) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}²"


# -- the peers -------------------------------------------------------------

def seed_formula(image: torch.Tensor, kernel: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The widely copied FFT recipe, as published (wrong: README, "Why the naive FFT formula
    is wrong")."""
    image_fft = torch.fft.fft2(image)
    kernel_fft = torch.fft.fft2(kernel, s=(image.shape[-2], image.shape[-1]))
    kernel_fft_magnitude = torch.abs(kernel_fft) + epsilon
    kernel_fft_inverse = kernel_fft / (kernel_fft_magnitude ** 2)
    return torch.fft.ifft2(image_fft * kernel_fft_inverse).real


def tikhonov_filter(psf: torch.Tensor, size: Tuple[int, int], eps: float) -> torch.Tensor:
    """conj(K) / (|K|^2 + eps) on the half spectrum, PSF origin rolled to (0, 0)."""
    kh, kw = psf.shape[-2:]
    k = torch.zeros(size, dtype=psf.dtype)
    k[:kh, :kw] = psf
    K = torch.fft.rfft2(torch.roll(k, (-(kh // 2), -(kw // 2)), (0, 1)))
    return K.conj() / (K.real ** 2 + K.imag ** 2 + eps)


def torch_correct(y: torch.Tensor, psf: torch.Tensor, eps: float) -> torch.Tensor:
    """The correct formula in plain torch, filter computed on every call."""
    size = (y.shape[-2], y.shape[-1])
    return torch.fft.irfft2(torch.fft.rfft2(y) * tikhonov_filter(psf, size, eps), s=size)


def build_methods(y: torch.Tensor, psf: torch.Tensor, threads: int, use_compile: bool,
                  notes: Dict[str, str]) -> Dict[str, Optional[Callable[[], object]]]:
    """name -> zero-argument callable (None: skipped, reason in ``notes``)."""
    size = tuple(y.shape[-2:])
    plan = dx.DeconvPlan(psf, size, eps=EPS)
    G = tikhonov_filter(psf, size, EPS)
    m: Dict[str, Optional[Callable[[], object]]] = {
        FLOOR: lambda: torch.fft.irfft2(torch.fft.rfft2(y), s=size),
        "deconv_ext deconvolve (one-shot)": lambda: dx.deconvolve(y, psf, eps=EPS),
        "deconv_ext DeconvPlan (cached)": lambda: plan(y),
        "seed formula": lambda: seed_formula(y, psf, EPS),
        "torch correct, filter per call": lambda: torch_correct(y, psf, EPS),
        "torch correct, cached filter": lambda: torch.fft.irfft2(torch.fft.rfft2(y) * G, s=size),
    }
    if use_compile:
        compiled = torch.compile(torch_correct)
        m["torch.compile(torch correct)"] = lambda: compiled(y, psf, EPS)
    else:
        m["torch.compile(torch correct)"] = None
        notes["torch.compile(torch correct)"] = "skipped (--no-compile)"

    from skimage.restoration import wiener

    planes = y.reshape(-1, *size).numpy()
    psf_np = psf.numpy()
    m["skimage wiener (looped)"] = lambda: [wiener(p, psf_np, EPS, clip=False) for p in planes]

    try:
        from deepinv.physics import BlurFFT

        phys = BlurFFT(img_size=tuple(y.shape[1:]), filter=psf[None, None], device="cpu")
        m["deepinv BlurFFT.A_dagger"] = lambda: phys.A_dagger(y)
    except ImportError:
        m["deepinv BlurFFT.A_dagger"] = None
        notes["deepinv BlurFFT.A_dagger"] = "skipped: deepinv not installed"

    import scipy.fft as sfft

    y_np = y.numpy()
    m[f"scipy.fft round trip ({threads} workers)"] = lambda: sfft.irfft2(
        sfft.rfft2(y_np, workers=threads), s=size, workers=threads)

    m["FFTW round trip (pyfftw, planned)"] = fftw_round_trip(y_np, threads)
    if m["FFTW round trip (pyfftw, planned)"] is None:
        notes["FFTW round trip (pyfftw, planned)"] = "skipped: pyfftw not installed"
    return m


def accuracy(y: torch.Tensor, psf: torch.Tensor) -> Dict[str, float]:
    """Relative error of each torch method vs the float64 reference of its problem."""
    ref = reference.deconvolve(y.double(), psf.double(), eps=EPS).float()
    ref_lap = reference.deconvolve(y.double(), psf.double(), eps=EPS, reg="laplacian").float()

    def rel(x, r):
        x = torch.as_tensor(np.asarray(x)).reshape(r.shape).float()
        return float((x - r).norm() / r.norm())

    from skimage.restoration import wiener

    planes = y.reshape(-1, *y.shape[-2:]).numpy()
    sk = np.stack([wiener(p, psf.numpy(), EPS, clip=False) for p in planes])
    return {
        "deconv_ext deconvolve (one-shot)": rel(dx.deconvolve(y, psf, eps=EPS), ref),
        "seed formula": rel(seed_formula(y, psf, EPS), ref),
        "torch correct, filter per call": rel(torch_correct(y, psf, EPS), ref),
        "skimage wiener (looped)": rel(sk, ref_lap),
    }


def plot(path: str, methods, columns, ratio, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in methods if any((m, c) in ratio for c in columns)]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(shown)
    x = np.arange(len(columns))
    for i, m in enumerate(shown):
        vals = [ratio.get((m, c), np.nan) for c in columns]
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, vals, width, label=m)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(x, columns)
    ax.set_ylabel("median time / torch rfft2+irfft2 round trip")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two shapes, 5 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per shape")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--out-dir", default=_report.OUT_DIR, help="CSV/JSON folder")
    ap.add_argument("--plot", default=os.path.join(_report.HERE, "peers.png"))
    ap.add_argument("--append-results", action="store_true",
                    help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    # Rounds until min_time seconds per shape (at most `rounds`): a 512x512
    # round trip is 0.5 ms, and 11 rounds left its ratios +-0.15 apart run to run.
    rounds = args.rounds or (5 if args.quick else 300)
    min_time = 0.0 if args.quick or args.rounds else 10.0
    threads = torch.get_num_threads()
    psf = dx.gaussian(1.0, 5)
    gen = torch.Generator().manual_seed(0)
    notes: Dict[str, str] = {}
    medians: Dict[tuple, float] = {}
    methods = []
    errors: Dict[str, float] = {}
    for shape in shapes:
        sharp = torch.rand(shape, generator=gen)
        y = dx.convolve(sharp, psf) + 1e-3 * torch.randn(shape, generator=gen)
        fns = build_methods(y, psf, threads, not args.no_compile, notes)
        for name in fns:
            if name not in methods:
                methods.append(name)
        live = {k: f for k, f in fns.items() if f is not None}
        print(f"timing {shape_name(shape)} ({len(live)} methods, {rounds} rounds) ...",
              file=sys.stderr, flush=True)
        t = median_times(live, rounds=rounds, warmup=2, min_time=min_time)
        for k, v in t.items():
            medians[(k, shape_name(shape))] = v
        if not errors:
            errors = accuracy(y, psf)
    columns = [shape_name(s) for s in shapes]
    ratio = {(m, c): medians[(m, c)] / medians[(FLOOR, c)] for (m, c) in medians}
    cell = {k: f"{v:.2f}" for k, v in ratio.items()}
    for m, why in notes.items():
        cell[(m, columns[0])] = why
    header = (f"{today()}, {machine_line()}, load avg {os.getloadavg()[0]:.1f}; float32, "
              f"5x5 Gaussian PSF, eps={EPS}; median of "
              f"{rounds} side-by-side rounds / rfft2+irfft2 round trip")
    print(header)
    print(_report.ratio_text_table(methods, columns, cell))
    print("floor (ms): " + ", ".join(f"{c} {medians[(FLOOR, c)] * 1e3:.2f}" for c in columns))
    print(f"relative error vs float64 reference at {columns[0]}: " +
          ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))

    rows = [{"method": m, "shape": c, "median_s": medians[(m, c)], "ratio": ratio[(m, c)]}
            for (m, c) in medians]
    csv_path = _report.write_csv(os.path.join(args.out_dir, "peers.csv"), rows)
    json_path = _report.write_json(os.path.join(args.out_dir, "peers.json"), {
        "date": today(), "machine": machine_line(), "dtype": "float32", "psf": "gaussian 5x5",
        "eps": EPS, "rounds": rounds, "floor": FLOOR, "results": rows, "skipped": notes,
        "relative_error": errors})
    plot(args.plot, methods, columns, ratio, header)
    print(f"wrote {csv_path}, {json_path}, {args.plot}")
    if args.append_results:
        md_rows = [[m] + [cell.get((m, c), "") for c in columns] for m in methods]
        body = header + "\n\n" + markdown_table(["method"] + columns, md_rows)
        print("appended to", _report.append_results(f"Peers (CPU), {today()}", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
