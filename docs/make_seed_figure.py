"""Draw docs/seed_bug.png: what the naive FFT formula of the seed article gets wrong.

Panels: (a) the sharp image; (b) the seed formula's restoration of its blur,
shifted by the kernel's half size; (c) deconv_ext's restoration; (d) the
gain of each filter relative to the exact inverse 1/K, with eps chosen so
both cut off at the same |K|: the seed's eps inside the square biases every
frequency by about 2 eps/|K|. The title reports the output shape the seed
formula gives a (1, 3, H, W) image and a (3, 3, 5, 5) kernel.

Usage: ``python docs/make_seed_figure.py [--out docs/seed_bug.png]``
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
from bench_peers import seed_formula  # noqa: E402  (the article's code, verbatim)

import deconv_ext as dx  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "seed_bug.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import data

    truth = torch.from_numpy(data.camera()[40:296, 120:376].astype(np.float64) / 255)
    psf = dx.gaussian(2.0, 15, dtype=torch.float64)  # origin (7, 7)
    blurred = dx.convolve(truth, psf)
    eps = 1e-4
    seed = seed_formula(blurred, psf, eps)
    # Same cut-off frequency: Tikhonov's eps is the square of the seed's.
    ours = dx.deconvolve(blurred, psf, eps=eps ** 2)
    err_seed = float((seed - truth).norm() / truth.norm())
    err_ours = float((ours - truth).norm() / truth.norm())
    # The seed output is the restoration rolled by the kernel's half size.
    back = torch.roll(seed, (-7, -7), (0, 1))
    err_back = float((back - truth).norm() / truth.norm())

    g = torch.Generator().manual_seed(0)
    img3 = torch.rand(1, 3, 64, 64, generator=g)
    ker3 = torch.rand(3, 3, 5, 5, generator=g)
    shape3 = tuple(seed_formula(img3, ker3, 1e-6).shape)

    fig = plt.figure(figsize=(13, 3.9))
    axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
    for ax, img, title in [
            (axes[0], truth, "(a) sharp"),
            (axes[1], seed, f"(b) seed formula, ε={eps:g}: shifted by (7, 7)\nrel. error {err_seed:.2f} "
                            f"({err_back:.3f} once rolled back)"),
            (axes[2], ours, f"(c) deconv_ext.deconvolve, ε={eps ** 2:g}\nrel. error {err_ours:.3f}")]:
        ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axhline(128, color="tab:red", lw=0.6)
        ax.axvline(128, color="tab:red", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    k = np.logspace(-4, 0, 400)
    cut = 1e-2  # both filters reach half their ideal gain near |K| = cut
    tik = k ** 2 / (k ** 2 + cut ** 2)          # conj(K) / (|K|^2 + eps) times K, eps = cut^2
    naive = k ** 2 / (k + cut) ** 2              # K / (|K| + eps)^2 times K, eps = cut
    ax = axes[3]
    ax.loglog(k, 1 - tik, label="Tikhonov: conj(K)/(|K|²+ε), ε=1e-4")
    ax.loglog(k, 1 - naive, label="seed: K/(|K|+ε)², ε=1e-2")
    ax.set_xlabel("|K| (transfer function magnitude)")
    ax.set_ylabel("1 - gain / ideal gain (bias)")
    ax.set_title("(d) eps inside the square biases\nevery frequency by ≈ 2ε/|K|", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"Seed formula vs deconv_ext, blur = 15x15 Gaussian (σ=2), noise-free. "
                 f"Multi-channel: image (1,3,64,64) with kernel (3,3,5,5) -> output {shape3} "
                 f"(expected (1,3,64,64))", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    print(f"wrote {args.out}: seed rel. error {err_seed:.3f} (rolled back {err_back:.4f}), "
          f"deconv_ext {err_ours:.4f}, multi-channel output {shape3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
