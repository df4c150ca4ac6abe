"""torch.compile benchmark (issue 4): a compiled DeconvPlan call vs eager.

For a few shapes (float32, 5x5 Gaussian PSF), times side by side in one
process: the eager ``plan(y)``, the same call under
``torch.compile(fullgraph=True)``, and a compiled one-shot ``deconvolve``;
reports the ratio compiled / eager and the first-compile time (cold: caches
disabled, Dynamo reset before each compile). For scale, the same ratio for a
bare ``torch.fft.rfft2`` of the same tensor, an op torch ships: what
``torch.compile`` itself costs per call here (guards, wrappers; on this
2-core machine 3-10% of a 0.5-3 ms call).

Both eager and compiled runs use the C++ pipeline here
(``DECONV_EXT_CPU_FFT=pipeline``), so the ratio measures what compilation adds or
removes, not an FFT choice. The compiled one-shot ``deconvolve`` builds its
plan (the PSF's FFT) in the graph on every call, where eager calls reuse a
plan cached by PSF content: its ratio is above 1 by design.

Usage::

    python benchmarks/bench_compile.py [--quick] [--no-append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
os.environ["DECONV_EXT_CPU_FFT"] = "pipeline"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import machine_line, markdown_table, median_times, today  # noqa: E402
from bench_cpu import RESULTS, gaussian_psf  # noqa: E402

import deconv_ext as dx  # noqa: E402

SHAPES = [(1, 1, 512, 512), (8, 3, 256, 256), (16, 3, 512, 512)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation")
    rounds, min_time = (60, 2.0) if args.quick else (300, 8.0)  # as bench_cpu
    psf = gaussian_psf()
    rows = []
    for shape in SHAPES:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
        size = shape[-2:]
        plan = dx.DeconvPlan(psf, size, eps=1e-2)
        torch._dynamo.reset()
        compiled_plan = torch.compile(lambda y: plan(y), fullgraph=True)
        t0 = time.perf_counter()
        compiled_plan(x)
        first_plan = time.perf_counter() - t0
        compiled_oneshot = torch.compile(lambda y: dx.deconvolve(y, psf, eps=1e-2), fullgraph=True)
        t0 = time.perf_counter()
        compiled_oneshot(x)
        first_oneshot = time.perf_counter() - t0
        assert torch.allclose(compiled_plan(x), plan(x), rtol=1e-5, atol=1e-6)
        compiled_rfft2 = torch.compile(lambda y: torch.fft.rfft2(y), fullgraph=True)
        compiled_rfft2(x)
        t = median_times({
            "eager rfft2": lambda: torch.fft.rfft2(x),
            "compiled rfft2": lambda: compiled_rfft2(x),
            "eager plan": lambda: plan(x),
            "compiled plan": lambda: compiled_plan(x),
            "eager deconvolve": lambda: dx.deconvolve(x, psf, eps=1e-2),
            "compiled deconvolve": lambda: compiled_oneshot(x),
        }, rounds=rounds, min_time=min_time)
        name = "x".join(map(str, shape[:2])) + f"x{shape[2]}²"
        rows.append([name, f"{t['eager plan'] * 1e3:.2f} ms",
                     f"{t['compiled plan'] / t['eager plan']:.2f}",
                     f"{t['compiled deconvolve'] / t['eager deconvolve']:.2f}",
                     f"{t['compiled rfft2'] / t['eager rfft2']:.2f}",
                     f"{first_plan:.1f} s", f"{first_oneshot:.1f} s"])
    table = markdown_table(["shape", "eager plan", "compiled / eager plan",
                            "compiled / eager deconvolve",
                            "compiled / eager torch.fft.rfft2 (torch.compile's own cost)",
                            "first compile (plan)",
                            "first compile (deconvolve)"], rows)
    text = (f"\n## {today()} — torch.compile vs eager (CPU)\n\n"
            f"Machine: {machine_line()}  \n"
            f"Command: `python benchmarks/bench_compile.py{' --quick' if args.quick else ''}`  \n"
            f"float32, 5x5 Gaussian PSF, eps=1e-2, the C++ pipeline in both "
            f"(`DECONV_EXT_CPU_FFT=pipeline`); `fullgraph=True`; "
            f"medians side by side; first compile is cold (caches off).\n\n{table}\n")
    print(text)
    if not args.no_append:
        with open(RESULTS, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
