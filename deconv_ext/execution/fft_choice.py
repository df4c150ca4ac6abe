"""``DECONV_EXT_CPU_FFT=auto`` (opt-in): the faster CPU FFT library per shape, measured once.

On CPU the FFTs are nearly all of a deconvolution's time. The C++ pipeline
(MKL's DFTI called directly, else ``torch.fft``) and ``scipy.fft`` are timed
side by side on the first eager call of a shape, like an FFT planner, and the
winner is remembered in memory and in a small JSON file
(``<cache_dir>/fft_choice.json``, see :mod:`deconv_ext.config`), so that
results stay bit-identical from run to run on one machine and thread count.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import stat
import statistics
import threading
import time
import warnings

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, last writer wins
    fcntl = None
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

_MAX_ENTRIES = 256          # shapes kept in the file, newest first out
_MAX_FILE_BYTES = 1 << 20   # a larger file is not ours: ignored

_lock = threading.Lock()
_warned = False
_choices: Dict[str, str] = {}
_known: Dict[tuple, str] = {}  # (cache path, shape, dtype, threads) -> choice, this process
_loaded_from = None


def cache_path() -> str:
    """The JSON file holding measured choices; ``""`` when there is no cache folder."""
    folder = config.get().cache_dir
    return os.path.join(folder, "fft_choice.json") if folder else ""


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


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"deconv_ext: {message}; FFT choices are kept in memory only",
                      RuntimeWarning, stacklevel=4)


def _read(path: str) -> Dict[str, str]:
    """The choices stored at ``path`` ({} if there is no usable file: never blocks)."""
    try:
        # A FIFO, a device or a directory at the cache path is not a cache file:
        # opening a FIFO would block, /dev/zero would never end.
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            _warn_once(f"the FFT-choice cache {path} is not a regular file")
            return {}
        if st.st_size > _MAX_FILE_BYTES:
            _warn_once(f"the FFT-choice cache {path} is larger than {_MAX_FILE_BYTES} bytes")
            return {}
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _warn_once(f"the FFT-choice cache {path} could not be read ({exc})")
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and v in _CHOICES}


def _load(path: str) -> None:
    global _loaded_from
    if _loaded_from == path:
        return
    _loaded_from = path
    if path:
        _choices.update(_read(path))


def _save(path: str, key: str) -> None:
    """Add ``key`` to the file: read, merge, write atomically, under an exclusive lock,
    so that processes measuring at once keep each other's entries."""
    if not path:
        _warn_once("no absolute cache folder is known (XDG_CACHE_HOME and HOME unset or "
                   "relative)")
        return
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "fft_choice.lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            merged = _read(path)
            merged[key] = _choices[key]
            # Bounded: the newest entries win (dicts keep insertion order).
            merged = dict(list(merged.items())[-_MAX_ENTRIES:])
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump(merged, f, indent=0)
            os.replace(tmp, path)  # atomic: readers never see half a file
            tmp = None
            _choices.update(merged)
    except OSError as exc:  # a read-only home, a directory at the path, ...
        _warn_once(f"the FFT-choice cache {path} could not be written ({exc})")
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


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
            _save(path, key)
        _known[fast] = _choices[key]
        return _choices[key]


def _after_fork_in_child() -> None:
    # A fork taken while another thread held the lock (measuring a shape)
    # would leave the child's copy locked forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
