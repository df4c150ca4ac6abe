"""Multi-channel conv layers: the per-frequency pseudo-inverse against its alternatives.

Three tables (float32 unless said; median times, methods timed side by side):

1. Channel counts 3, 16, 64. The library's ``DeconvPlan.for_conv2d`` (plan
   build = the filter G, and the solve with the cached plan) against

   * the dense pseudo-inverse of the materialised operator (small sizes only:
     ``torch.linalg.pinv`` of the ``(C H W)^2`` matrix, then one mat-vec), and
   * a plain batched ``torch.linalg.solve`` per frequency on every call
     (``rfft2``, ``solve(K(w), Y(w))``, ``irfft2``; square layers only, no
     pseudo-inverse threshold: the obvious baseline).

   Memory is what each method keeps between calls: G (library), the dense
   pseudo-inverse matrix, K (batched solve).
2. The 3 -> 3 solve at 16x3x512x512 against the bare ``rfft2`` + ``irfft2``
   round trip of the same tensor (= 1.00). Target: <= 1.3.
3. The 64 -> 64 G application alone (``plans.layer_spectra.apply_matrices``, layout
   changes included) against ``torch.matmul`` of the same shapes with the
   operands already in matmul layout (= 1.00). Target: <= 1.5.

Run: ``.venv/bin/python benchmarks/bench_multichannel.py`` (about 1-2 minutes on
2 cores). Prints markdown tables; ``--json PATH`` also writes the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, markdown_table, median_times, today  # noqa: E402

import deconv_ext as dx  # noqa: E402
from deconv_ext.plans import layer_spectra as mc  # noqa: E402


def _layer(c_out, c_in, k=3, dtype=torch.float32, seed=0):
    """A well-conditioned random layer: identity-dominated centre tap."""
    g = torch.Generator().manual_seed(seed)
    w = 0.3 * torch.randn(c_out, c_in, k, k, generator=g, dtype=dtype) / math.sqrt(c_in * k * k)
    w[:, :, k // 2, k // 2] += torch.eye(c_out, c_in, dtype=dtype)
    return w


def _dense_operator(w, size):
    """(C_out H W, C_in H W) matrix of the circular "same" layer (basis vectors)."""
    c_in = w.shape[1]
    H, W = size
    n = c_in * H * W
    k = w.shape[-1]
    basis = torch.eye(n, dtype=w.dtype).reshape(n, c_in, H, W)
    pad = [(k - 1) // 2, k - 1 - (k - 1) // 2] * 2
    return F.conv2d(F.pad(basis, pad, mode="circular"), w).reshape(n, -1).T


def _mib(nbytes):
    return f"{nbytes / 2**20:.2f}"


def _best(fn, rounds=3):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def table_channels(rows_out):
    # (C, batch, small size for the dense pinv, larger size)
    cases = [(3, 4, (16, 16), (256, 256)), (16, 4, (8, 8), (128, 128)),
             (64, 4, (4, 4), (64, 64))]
    header = ["C", "N", "size", "method", "build (ms)", "solve (ms)", "solve / library",
              "kept (MiB)"]
    rows = []
    for C, N, small, large in cases:
        w = _layer(C, C)
        for size in (small, large):
            y = torch.randn(N, C, *size)
            t0 = time.perf_counter()
            plan = dx.DeconvPlan.for_conv2d(w, size)
            build = time.perf_counter() - t0
            K = mc.planar_to_matrix(mc.layer_spectrum(w, size)).contiguous()  # (1, H, Wf, C, C)

            def batched_solve():
                Y = torch.fft.rfft2(y).reshape(N, C, -1).permute(2, 1, 0)   # (F, C, N)
                X = torch.linalg.solve(K.reshape(-1, C, C), Y)
                return torch.fft.irfft2(X.permute(2, 1, 0).reshape(N, C, size[0], -1), s=size)

            fns = {"library": lambda: plan(y), "batched solve": batched_solve}
            kept = {"library": plan.filter.numel() * plan.filter.element_size(),
                    "batched solve": K.numel() * K.element_size()}
            builds = {"library": build, "batched solve": 0.0}
            if size == small:
                t0 = time.perf_counter()
                A = _dense_operator(w.double(), size)
                P = torch.linalg.pinv(A).float()
                builds["dense pinv"] = time.perf_counter() - t0
                yf = y.reshape(N, -1).T.contiguous()
                fns["dense pinv"] = lambda: (P @ yf).T.reshape(N, C, *size)
                kept["dense pinv"] = P.numel() * P.element_size()
            t = median_times(fns, rounds=7, warmup=1, min_time=3.0)
            for name in fns:
                rows.append([C, N, f"{size[0]}x{size[1]}", name, f"{1e3 * builds[name]:.1f}",
                             f"{1e3 * t[name]:.2f}", f"{t[name] / t['library']:.2f}",
                             _mib(kept[name])])
                rows_out.append(dict(table="channels", C=C, N=N, size=list(size), method=name,
                                     build_s=builds[name], solve_s=t[name], kept_bytes=kept[name]))
    return header, rows


def table_3to3(rows_out):
    size = (512, 512)
    w = _layer(3, 3, k=5)
    plan = dx.DeconvPlan.for_conv2d(w, size)
    y = torch.randn(16, 3, *size)
    fns = {"rfft2+irfft2": lambda: torch.fft.irfft2(torch.fft.rfft2(y), s=size),
           "for_conv2d solve": lambda: plan(y)}
    t = median_times(fns, rounds=9, warmup=1, min_time=12.0)
    base = t["rfft2+irfft2"]
    header = ["16x3x512x512 float32, 3->3 (5x5)", "ms", "x round trip"]
    rows = [[n, f"{1e3 * t[n]:.1f}", f"{t[n] / base:.2f}"] for n in fns]
    rows_out += [dict(table="3to3", method=n, s=t[n], ratio=t[n] / base) for n in fns]
    return header, rows, plan


def table_64(rows_out):
    header = ["64->64 G application", "shape", "ms", "x matmul"]
    rows = []
    for N, size in ((1, (64, 64)), (8, (64, 64)), (32, (32, 32))):
        C = 64
        H, Wf = size[0], size[1] // 2 + 1
        g = torch.Generator().manual_seed(1)
        G = torch.randn(1, H, Wf, C, C, generator=g, dtype=torch.complex64)
        Y = torch.randn(N, C, H, Wf, generator=g, dtype=torch.complex64)
        Gm = G.reshape(H * Wf, C, C)
        Ym = Y.reshape(N, C, H * Wf).permute(2, 1, 0).contiguous()   # (F, C, N)
        fns = {"torch.matmul (matmul layout)": lambda: torch.matmul(Gm, Ym),
               "apply_matrices": lambda: mc.apply_matrices(Y, G, False, fused=False)}
        t = median_times(fns, rounds=9, warmup=1, min_time=4.0)
        base = t["torch.matmul (matmul layout)"]
        shape = f"N={N}, {H}x{Wf} freqs"
        for n in fns:
            rows.append([n, shape, f"{1e3 * t[n]:.2f}", f"{t[n] / base:.2f}"])
            rows_out.append(dict(table="64", N=N, size=list(size), method=n, s=t[n],
                                 ratio=t[n] / base))
    return header, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = []
    print(f"# bench_multichannel, {today()}\n{machine_line()}\n")
    # The first batched SVD/solve of a process pays a one-off LAPACK start-up
    # (seconds on this machine): pay it before anything is timed.
    for dt in (torch.float32, torch.float64):
        dx.DeconvPlan.for_conv2d(_layer(64, 64, dtype=dt), (4, 4))
        dx.DeconvPlan.for_conv2d(_layer(64, 64, dtype=dt), (4, 4), eps=1e-3)
        torch.linalg.pinv(torch.randn(64, 64, dtype=dt))
    t0 = time.perf_counter()
    h, r, plan = table_3to3(out)
    print(f"## 3->3 solve vs FFT round trip ({plan.mode}, fused={plan.fused})\n")
    print(markdown_table(h, r), "\n")
    h, r = table_64(out)
    print("## 64->64 G application vs torch.matmul\n")
    print(markdown_table(h, r), "\n")
    h, r = table_channels(out)
    print("## Channel counts: library vs dense pseudo-inverse vs batched solve per frequency\n")
    print(markdown_table(h, r), "\n")
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=today(), machine=machine_line(), rows=out), f, indent=1)


if __name__ == "__main__":
    main()
