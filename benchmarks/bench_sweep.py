"""How deconvolution time grows with image size: 64² ... 4096², one float32 plane.

Same problem as bench_peers.py (5x5 Gaussian PSF, Tikhonov eps=1e-2), fewer
methods: the FFT round trip floor, deconv_ext (one-shot and cached plan), the
seed formula, the correct torch version, scipy.fft and skimage's wiener.
Times are medians of side-by-side rounds; the plot is log-log, with an
``N log N`` guide through the floor's largest size (N = pixels).

Usage::

    python benchmarks/bench_sweep.py            # 64² .. 4096²
    python benchmarks/bench_sweep.py --quick    # 64² .. 1024², fewer rounds

Writes ``benchmarks/out/sweep.csv`` / ``.json`` and the plot ``benchmarks/sweep.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _report  # noqa: E402
from _timing import machine_line, markdown_table, median_times, today  # noqa: E402
from bench_peers import EPS, seed_formula, tikhonov_filter, torch_correct  # noqa: E402

import deconv_ext as dx  # noqa: E402

SIZES = [64, 128, 256, 512, 1024, 2048, 4096]
QUICK_SIZES = [64, 128, 256, 512, 1024]
FLOOR = "rfft2+irfft2 (floor)"
# skimage's wiener works in float64 and full spectra: slow at the top sizes.
SKIMAGE_MAX = 2048


def methods_for(y: torch.Tensor, psf: torch.Tensor, threads: int):
    import scipy.fft as sfft
    from skimage.restoration import wiener

    size = tuple(y.shape[-2:])
    plan = dx.DeconvPlan(psf, size, eps=EPS)
    G = tikhonov_filter(psf, size, EPS)
    y_np, psf_np = y.numpy(), psf.numpy()
    m = {
        FLOOR: lambda: torch.fft.irfft2(torch.fft.rfft2(y), s=size),
        "deconv_ext deconvolve": lambda: dx.deconvolve(y, psf, eps=EPS),
        "deconv_ext DeconvPlan": lambda: plan(y),
        "seed formula": lambda: seed_formula(y, psf, EPS),
        "torch correct, per call": lambda: torch_correct(y, psf, EPS),
        "torch correct, cached": lambda: torch.fft.irfft2(torch.fft.rfft2(y) * G, s=size),
        "scipy.fft round trip": lambda: sfft.irfft2(sfft.rfft2(y_np, workers=threads), s=size,
                                                    workers=threads),
    }
    if size[0] <= SKIMAGE_MAX:
        m["skimage wiener"] = lambda: wiener(y_np, psf_np, EPS, clip=False)
    return m


def plot(path, sizes, medians, methods, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    n = np.array([s * s for s in sizes], dtype=float)
    for m in methods:
        pts = [(s * s, medians[(m, s)] * 1e3) for s in sizes if (m, s) in medians]
        if pts:
            xs, ts = zip(*pts)
            ax.plot(xs, ts, "o-" if m.startswith("deconv_ext") else ".--", label=m,
                    lw=2 if m.startswith("deconv_ext") else 1)
    top = medians[(FLOOR, sizes[-1])] * 1e3
    guide = top * (n * np.log(n)) / (n[-1] * np.log(n[-1]))
    ax.plot(n, guide, color="gray", lw=0.8, ls=":", label="N log N guide")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n, [f"{s}²" for s in sizes])
    ax.set_xlabel("image size (one float32 plane)")
    ax.set_ylabel("median time (ms)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="up to 1024², 5 rounds")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out-dir", default=_report.OUT_DIR, help="CSV/JSON folder")
    ap.add_argument("--plot", default=os.path.join(_report.HERE, "sweep.png"))
    ap.add_argument("--append-results", action="store_true",
                    help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    sizes = QUICK_SIZES if args.quick else SIZES
    threads = torch.get_num_threads()
    psf = dx.gaussian(1.0, 5)
    gen = torch.Generator().manual_seed(0)
    medians, methods = {}, []
    for s in sizes:
        y = dx.convolve(torch.rand(s, s, generator=gen), psf)
        fns = methods_for(y, psf, threads)
        methods += [m for m in fns if m not in methods]
        # Big sizes take seconds per call: fewer rounds there keep the sweep short.
        rounds = args.rounds or (5 if args.quick else (41 if s <= 1024 else 5))
        print(f"timing {s}² ({rounds} rounds) ...", file=sys.stderr, flush=True)
        for k, v in median_times(fns, rounds=rounds, warmup=1).items():
            medians[(k, s)] = v
    load = ", load avg %.1f" % os.getloadavg()[0]
    title = f"{today()}, {machine_line()}{load}; 5x5 Gaussian PSF, eps={EPS}"
    cols = [f"{s}²" for s in sizes]
    cell = {(m, f"{s}²"): f"{medians[(m, s)] * 1e3:.2f}" for (m, s) in medians}
    print(title)
    print("median time (ms)")
    print(_report.ratio_text_table(methods, cols, cell))
    rows = [{"method": m, "size": s, "median_s": v, "ratio": v / medians[(FLOOR, s)]}
            for (m, s), v in medians.items()]
    csv_path = _report.write_csv(os.path.join(args.out_dir, "sweep.csv"), rows)
    json_path = _report.write_json(os.path.join(args.out_dir, "sweep.json"), {
        "date": today(), "machine": machine_line(), "dtype": "float32", "psf": "gaussian 5x5",
        "eps": EPS, "results": rows})
    plot(args.plot, sizes, medians, methods, title)
    print(f"wrote {csv_path}, {json_path}, {args.plot}")
    if args.append_results:
        md = [[m] + [cell.get((m, c), "") for c in cols] for m in methods]
        body = title + "\n\nmedian time (ms)\n\n" + markdown_table(["method"] + cols, md)
        print("appended to", _report.append_results(f"Size sweep (CPU), {today()}", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
