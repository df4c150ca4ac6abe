"""The ``bench`` subcommand: time the library on this machine.

In a source checkout the benchmark scripts of ``benchmarks/`` are the
reference (``bench_cpu.py`` for CPU, ``bench_gpu.py`` for CUDA): ``bench``
runs the one for the device with this Python, with the flags listed in
:data:`SCRIPTS` (it prints only: nothing is appended to the repository's
``benchmarks/RESULTS.md``). Installed without the source
tree, it prints a small built-in table of the same kind: median time of a
one-shot ``deconvolve`` and of a cached ``DeconvPlan`` as multiples of
torch's bare ``rfft2`` + ``irfft2`` round trip of the same tensor (1.00 is
the floor: a deconvolution cannot avoid one forward and one inverse FFT).
"""
from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..functional import deconvolve
from ..plans import DeconvPlan
from ..psf import gaussian

__all__ = ["run_bench", "builtin_table", "find_script"]

SHAPES = [(1, 1, 512, 512), (1, 1, 2048, 2048), (8, 3, 256, 256), (64, 1, 128, 128),
          (16, 3, 512, 512)]
QUICK_SHAPES = [(1, 1, 512, 512), (8, 3, 256, 256)]
#: device type -> (script in benchmarks/, flags always passed, flags added by --quick)
SCRIPTS: Dict[str, Tuple[str, Tuple[str, ...], Tuple[str, ...]]] = {
    "cpu": ("bench_cpu.py", ("--no-append",), ("--quick",)),
    "cuda": ("bench_gpu.py", (), ("--reps", "5")),
}


def find_script(device: str) -> Optional[str]:
    """The source tree's benchmark script for ``device`` ('cpu'/'cuda'), if present."""
    # deconv_ext/app/bench.py -> the checkout's root, three levels up
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    entry = SCRIPTS.get(torch.device(device).type)
    path = os.path.join(root, "benchmarks", entry[0]) if entry else None
    return path if path and os.path.isfile(path) else None


def script_argv(device: str, script: str, quick: bool) -> List[str]:
    """The command line that runs ``script`` for ``device`` with this Python."""
    _, always, quick_flags = SCRIPTS[torch.device(device).type]
    return [sys.executable, script, *always, *(quick_flags if quick else ())]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _medians(fns: Dict[str, Callable[[], object]], rounds: int,
             device: torch.device) -> Dict[str, float]:
    # Side by side, in an order shuffled per round (seeded): machine noise hits
    # every method alike, and no method always follows the same neighbour.
    names = list(fns)
    rng = random.Random(0)
    for n in names:  # warm-up: allocator, FFT plans
        fns[n]()
    _sync(device)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in rng.sample(names, len(names)):
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            samples[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in samples.items()}


def builtin_table(device: str = "cpu", quick: bool = False) -> List[Tuple[str, float, float, float]]:
    """Rows ``(shape, floor ms, one-shot ratio, cached-plan ratio)``, float32, 5x5 Gaussian PSF."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    psf = gaussian(1.0, 5).to(dev)
    rows = []
    for shape in (QUICK_SHAPES if quick else SHAPES):
        y = torch.rand(shape, generator=gen).to(dev)
        plan = DeconvPlan(psf, shape[-2:], eps=1e-2)
        fns = {
            "floor": lambda: torch.fft.irfft2(torch.fft.rfft2(y), s=y.shape[-2:]),
            "deconvolve": lambda: deconvolve(y, psf, eps=1e-2),
            "plan": lambda: plan(y),
        }
        t = _medians(fns, rounds=5 if quick else 11, device=dev)
        rows.append(("x".join(map(str, shape[:2])) + f"x{shape[2]}^2", t["floor"] * 1e3,
                     t["deconvolve"] / t["floor"], t["plan"] / t["floor"]))
    return rows


def run_bench(device: str = "cpu", quick: bool = False, builtin: bool = False) -> int:
    """Run the source tree's script for the device, else print the built-in table.

    Returns the exit status.
    """
    script = None if builtin else find_script(device)
    if script:
        argv = script_argv(device, script, quick)
        print(f"running {' '.join([os.path.relpath(script)] + argv[2:])}", flush=True)
        return subprocess.call(argv)
    print(f"deconv_ext built-in benchmark, {device}, float32, 5x5 Gaussian PSF, "
          f"{torch.get_num_threads()} threads; median time / (rfft2 + irfft2 round trip)")
    print(f"{'shape':<16} {'round trip ms':>13} {'deconvolve':>11} {'DeconvPlan':>11}")
    for shape, floor_ms, one, cached in builtin_table(device, quick):
        # 3 significant digits: a ratio skewed by a loaded machine never prints as 0.00
        print(f"{shape:<16} {floor_ms:13.3g} {one:11.3g} {cached:11.3g}")
    return 0
