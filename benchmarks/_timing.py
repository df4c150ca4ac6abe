"""Timing helpers shared by the benchmark scripts.

Methods are timed side by side: each round runs every method once, in an
order shuffled per round (seeded), so that noise from the shared machine hits
all of them alike and no method always runs after the same neighbour (a
rotating order keeps neighbours fixed: a method that always followed one that
evicts the caches measured up to 0.35x of the round trip slower); the figure
reported is the median over rounds.
"""
from __future__ import annotations

import datetime
import os
import platform
import random
import statistics
import time
from typing import Callable, Dict

import torch


def median_times(fns: Dict[str, Callable[[], object]], rounds: int = 15, warmup: int = 2,
                 min_time: float = 0.0) -> Dict[str, float]:
    """Median wall time (s) of each callable, measured side by side.

    Parameters
    ----------
    fns : name -> zero-argument callable
    rounds : number of timed rounds (each runs every callable once)
    warmup : untimed rounds first (allocator, plans, caches)
    min_time : stop adding rounds once this many seconds were spent (0: never)
    """
    names = list(fns)
    rng = random.Random(0)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    samples = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        order = rng.sample(names, len(names))
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            samples[n].append(time.perf_counter() - t0)
        if min_time and time.perf_counter() - start > min_time and r >= 4:
            break
    return {n: statistics.median(v) for n, v in samples.items()}


def machine_line() -> str:
    """One line naming the machine, the thread count and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def today() -> str:
    return datetime.date.today().isoformat()


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
