"""``DECONV_EXT_CPU_FFT=auto`` (opt-in): the faster CPU FFT library per shape, measured once.

On CPU the FFTs are nearly all of a deconvolution's time. The C++ pipeline
(MKL's DFTI called directly, else ``torch.fft``) and ``scipy.fft`` are timed
side by side on the first eager call of a shape, like an FFT planner, and the
winner is remembered in memory and in a small JSON file
(``<cache_dir>/fft_choice.json``, see :mod:`deconv_ext.config`), so that
results stay bit-identical from run to run on one machine and thread count.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import threading
import time
from typing import Dict, Tuple

import torch

from .. import config
from . import cpu_fft
from .library import ops

__all__ = ["choose", "cache_path"]

# Bumped whenever the pipelines change in a way that can change which FFT
# wins (e.g. chunked batches): older measurements are then ignored.
_PIPELINE_VERSION = 5
_CHOICES = ("pipeline", "scipy")

_lock = threading.Lock()
_choices: Dict[str, str] = {}
_known: Dict[tuple, str] = {}  # (cache path, shape, dtype, threads) -> choice, this process
_loaded_from = None


def cache_path() -> str:
    """The JSON file holding measured choices."""
    return os.path.join(config.get().cache_dir, "fft_choice.json")


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        platform.machine())
    except OSError:
        return platform.machine()


def _machine_key() -> str:
    # The thread count is read per call: a choice holds for one thread count.
    return (f"v{_PIPELINE_VERSION}|{_cpu_name()}|torch {torch.__version__}|"
            f"{torch.get_num_threads()} threads")


def _load(path: str) -> None:
    global _loaded_from
    if _loaded_from == path:
        return
    _loaded_from = path
    try:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            _choices.update({k: v for k, v in data.items() if v in _CHOICES})
    except (OSError, ValueError):
        pass  # no cache yet, or an unreadable one: measure again


def _save(path: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(_choices, f, indent=0, sort_keys=True)
        os.replace(tmp, path)  # atomic: concurrent writers never leave half a file
    except OSError:
        pass  # a read-only home: the choice still holds for this process


def _measure(shape: Tuple[int, ...], dtype: torch.dtype) -> str:
    """Time the pipeline's and scipy's round trips side by side; the faster one's name."""
    x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    k = torch.ones(shape[-2], shape[-1] // 2 + 1, dtype=torch.complex64 if dtype == torch.float32
                   else torch.complex128)
    thr = torch.zeros((), dtype=dtype)
    runs = {"pipeline": lambda: ops.deconv2d(x, k, None, 0.0, thr, False),
            "scipy": lambda: cpu_fft.deconv2d("scipy", x, k, None, 0.0, thr)}
    samples = {n: [] for n in runs}
    budget = time.perf_counter() + 1.0  # cap the tuning cost of one shape
    for r in range(7):
        for n in (_CHOICES if r % 2 else _CHOICES[::-1]):
            t0 = time.perf_counter()
            runs[n]()
            samples[n].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() > budget:
            break
    # The first round pays one-off costs (plans, pages); leave it out.
    med = {n: statistics.median(v[1:]) for n, v in samples.items()}
    return "scipy" if med["scipy"] < med["pipeline"] else "pipeline"


def choose(shape: Tuple[int, ...], dtype: torch.dtype) -> str:
    """The measured FFT library ("pipeline" or "scipy") for a CPU solve of ``shape``."""
    path = cache_path()
    # The hot path of every eager call: one dict lookup, no lock, no formatting.
    fast = (path, tuple(shape), dtype, torch.get_num_threads())
    hit = _known.get(fast)
    if hit is not None:
        return hit
    key = f"{_machine_key()}|{tuple(shape)}|{dtype}"
    with _lock:
        _load(path)
        if key not in _choices:
            _choices[key] = _measure(tuple(shape), dtype)
            _save(path)
        _known[fast] = _choices[key]
        return _choices[key]
