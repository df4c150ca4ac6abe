"""Per-call overhead of small work: what the one execution layer costs per call.

Side by side in one process, as multiples of torch's bare ``rfft2`` +
``irfft2`` round trip of the same tensor (= 1.00), float32, 5x5 Gaussian PSF:

* ``DeconvPlan`` and one-shot ``deconvolve`` at 1x1x32², 64², 128², with one
  intra-op thread, with two, and with two while another process keeps one of
  the two cores busy (the median and the 90th percentile per call: OpenMP
  barriers stall under load, which small work must not inherit);
* one-shot ``conv2d_pinv`` with the same weight called repeatedly, as a
  multiple of the cached ``DeconvPlan.for_conv2d`` (8x16x64², 1x64x32²).

Usage::

    python benchmarks/bench_small.py [--quick] [--append-results]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, markdown_table, today  # noqa: E402

import deconv_ext as dx  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _samples(fns, rounds):
    """Per-call times of each callable, interleaved round by round."""
    out = {k: [] for k in fns}
    for _ in range(3):
        for f in fns.values():
            f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return out


def small_planes(rounds: int):
    psf = dx.gaussian(1.0, 5)
    rows = []
    for label, threads, load in (("1 thread", 1, False), ("2 threads", 2, False),
                                 ("2 threads, 1 core busy", 2, True)):
        torch.set_num_threads(threads)
        busy = None
        if load:
            busy = multiprocessing.get_context("spawn").Process(target=_busy, args=(60.0,))
            busy.start()
            time.sleep(0.5)
        try:
            for n in (32, 64, 128):
                x = torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(n))
                plan = dx.DeconvPlan(psf, (n, n), eps=1e-2)
                s = _samples({
                    "round trip": lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=(n, n)),
                    "plan": lambda: plan(x),
                    "one-shot": lambda: dx.deconvolve(x, psf, eps=1e-2),
                }, rounds)
                med = {k: statistics.median(v) for k, v in s.items()}
                p90 = {k: sorted(v)[int(0.9 * len(v))] for k, v in s.items()}
                base = med["round trip"]
                rows.append([label, f"{n}²", f"{base * 1e6:.0f} us",
                             f"{med['plan'] / base:.2f}", f"{med['one-shot'] / base:.2f}",
                             f"{p90['round trip'] * 1e6:.0f} us", f"{p90['plan'] * 1e6:.0f} us",
                             f"{p90['one-shot'] * 1e6:.0f} us"])
        finally:
            if busy is not None:
                busy.terminate()
                busy.join()
    torch.set_num_threads(2)
    return markdown_table(["threads", "size", "round trip (median)", "plan", "one-shot",
                           "round trip p90", "plan p90", "one-shot p90"], rows)


def layers(rounds: int):
    rows = []
    for n, c, s in ((8, 16, 64), (1, 64, 32)):
        gen = torch.Generator().manual_seed(c)
        w = torch.randn(c, c, 3, 3, generator=gen)
        y = torch.randn(n, c, s, s, generator=gen)
        plan = dx.DeconvPlan.for_conv2d(w, (s, s))
        t = _samples({"plan": lambda: plan(y), "one-shot": lambda: dx.conv2d_pinv(y, w)}, rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append([f"{n}x{c}x{s}²", f"{med['plan'] * 1e3:.2f} ms",
                     f"{med['one-shot'] / med['plan']:.2f}"])
    return markdown_table(["shape", "cached plan", "one-shot conv2d_pinv / plan"], rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args(argv)
    rounds = 60 if args.quick else 300
    text = (f"\n## {today()} — small work, per-call overhead\n\n{machine_line()}  \n"
            f"Command: `python benchmarks/bench_small.py{' --quick' if args.quick else ''}`  \n"
            f"float32, 5x5 Gaussian PSF, eps=0.01; plan and one-shot as multiples of torch's "
            f"rfft2+irfft2 round trip of the same tensor (median), side by side.\n\n"
            f"{small_planes(rounds)}\n\nMulti-channel layers (3x3 weights, pseudo-inverse):\n\n"
            f"{layers(max(10, rounds // 10))}\n")
    print(text)
    if args.append_results:
        with open(RESULTS, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
