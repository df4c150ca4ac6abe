"""Which FFT library runs the CPU pipeline: measured once per shape, then cached.

On CPU the FFTs are nearly all of a deconvolution's time. The C++ pipelines
call MKL's DFTI themselves where torch ships MKL (``csrc/fft.cpp``: 0.25-0.9x
torch's own ``irfft2(rfft2(x))`` at the benchmark shapes), else ``torch.fft``.
``scipy.fft`` (pocketfft, BSD-licensed, a dependency already) can be faster
for some shapes on some machines; so the choice is made per problem by timing
both round trips side by side, like an FFT planner, and remembered (in memory
and in a small JSON file) so that results stay bit-identical from run to run
on a given machine and thread count.

The switch ``DECONV_EXT_FFT`` (or :func:`set_backend`) overrides the choice:

* ``auto`` (default): the measured choice between ``torch`` and ``scipy``;
* ``torch``: the C++ pipelines (MKL's DFTI, or ``torch.fft``), what the
  compiled ops always use;
* ``scipy``: ``scipy.fft`` with ``workers = torch.get_num_threads()``;
* ``pyfftw``: FFTW through pyFFTW, planned with ``FFTW_MEASURE`` once per
  chunk shape and thread count -- GPL, never a default, only when the user
  installed it (``pip install pyfftw``) and asked for it.

Only eager CPU calls without autograd take the non-torch path: under
``torch.compile`` and when gradients are needed the ops run, so that the
compiled graph and the backward stay opaque, exact adjoints.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import threading
import time
import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["BACKENDS", "ENV", "selected", "set_backend", "choose", "deconv2d", "filter2d",
           "cache_path"]

BACKENDS = ("auto", "torch", "scipy", "pyfftw")
ENV = "DECONV_EXT_FFT"

_override: Optional[str] = None
_lock = threading.Lock()
_choices: Dict[str, str] = {}
_loaded = False


def _validate(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"FFT backend {name!r} is not valid; expected one of "
                         f"{', '.join(map(repr, BACKENDS))}")
    if name == "pyfftw":
        try:
            import pyfftw  # noqa: F401
        except ImportError as exc:
            raise ValueError("FFT backend 'pyfftw' needs pyFFTW (GPL): install it with "
                             "`pip install pyfftw`") from exc
    return name


def set_backend(name: Optional[str]) -> None:
    """Force an FFT backend for CPU calls (None: back to ``DECONV_EXT_FFT`` / auto)."""
    global _override
    _override = None if name is None else _validate(name)


def selected() -> str:
    """The requested backend: :func:`set_backend`, else ``DECONV_EXT_FFT``, else ``auto``."""
    if _override is not None:
        return _override
    return _validate(os.environ.get(ENV, "") or "auto")


def cache_path() -> str:
    """The JSON file holding measured choices: ``$XDG_CACHE_HOME/deconv_ext/fft_choice.json``.

    ``XDG_CACHE_HOME`` counts only if it is an absolute path (the XDG base
    directory rule); otherwise ``~/.cache``.
    """
    root = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):
        root = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "deconv_ext", "fft_choice.json")


_warned = False


def _warn_once(message: str) -> None:
    # One warning per process: a read-only home must not warn at every new shape.
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"deconv_ext FFT-choice cache: {message}; measured choices are kept "
                      f"for this process only", RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        platform.machine())
    except OSError:
        return platform.machine()


# Bumped whenever the pipelines change in a way that can change which FFT
# wins (e.g. chunked batches): older measurements are then ignored.
_PIPELINE_VERSION = 4


def _machine_key() -> str:
    # The thread count is read per call: a choice holds for one thread count.
    return (f"v{_PIPELINE_VERSION}|{_cpu_name()}|torch {torch.__version__}|"
            f"{torch.get_num_threads()} threads")


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    path = cache_path()
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return  # no cache yet (writing it will say if it cannot be)
    except (OSError, ValueError) as exc:  # unreadable, or not JSON: measure again
        _warn_once(f"cannot read {path} ({type(exc).__name__}: {exc})")
        return
    if not isinstance(data, dict):
        _warn_once(f"{path} does not hold a JSON object; ignoring it")
        return
    _choices.update({k: v for k, v in data.items() if v in ("torch", "scipy")})


def _save() -> None:
    path = cache_path()
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(_choices, f, indent=0, sort_keys=True)
        os.replace(tmp, path)  # atomic: concurrent writers never leave half a file
    except OSError as exc:  # a read-only home: the choice still holds for this process
        _warn_once(f"cannot write {path} ({type(exc).__name__}: {exc})")
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _measure(shape: Tuple[int, ...], dtype: torch.dtype) -> str:
    """Time torch's and scipy's round trips side by side; the faster one's name."""
    x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    k = torch.ones(shape[-2], shape[-1] // 2 + 1, dtype=torch.complex64 if dtype == torch.float32
                   else torch.complex128)
    thr = torch.zeros((), dtype=dtype)
    runs = {"torch": lambda: torch.ops.deconv_ext.deconv2d(x, k, None, 0.0, thr, False),
            "scipy": lambda: _numpy_deconv2d(x, k, None, 0.0, thr)}
    samples = {n: [] for n in runs}
    budget = time.perf_counter() + 1.0  # cap the tuning cost of one shape
    for r in range(7):
        for n in (("torch", "scipy") if r % 2 else ("scipy", "torch")):
            t0 = time.perf_counter()
            runs[n]()
            samples[n].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() > budget:
            break
    # The first round pays one-off costs (plans, pages); leave it out.
    med = {n: statistics.median(v[1:]) for n, v in samples.items()}
    return "scipy" if med["scipy"] < med["torch"] else "torch"


def choose(shape: Tuple[int, ...], dtype: torch.dtype) -> str:
    """The FFT backend for a CPU solve of ``shape`` (..., H, W) in ``dtype``."""
    name = selected()
    if name != "auto":
        return name
    key = f"{_machine_key()}|{tuple(shape)}|{dtype}"
    with _lock:
        _load()
        if key not in _choices:
            _choices[key] = _measure(tuple(shape), dtype)
            _save()
        return _choices[key]


def _workers() -> int:
    return max(1, torch.get_num_threads())


class _FFTWPair:
    """Planned FFTW transforms of one chunk shape (pyFFTW builders, FFTW_MEASURE).

    The inverse reads the forward's output array in place (no copy between
    them) and writes into the caller's output. An FFTW plan object holds its
    arrays, so one pair serves one call at a time (concurrent calls of the
    same shape take turns on its lock).
    """

    def __init__(self, shape: Tuple[int, ...], dtype: torch.dtype, threads: int):
        import pyfftw
        import pyfftw.builders as fb

        self.np_dtype = np.float32 if dtype == torch.float32 else np.float64
        kw = dict(threads=threads, planner_effort="FFTW_MEASURE")
        self.fwd = fb.rfft2(pyfftw.empty_aligned(shape, dtype=self.np_dtype), **kw)
        # avoid_copy: the inverse's input array IS the forward's output array.
        self.inv = fb.irfft2(self.fwd.output_array, s=shape[-2:], avoid_copy=True, **kw)
        # The plans' own arrays: a call may rebind a plan to the caller's
        # (aligned) input or output, and pyFFTW would later copy a misaligned
        # input into -- or write a result into -- whatever array it holds.
        # They are rebound to these after every call.
        self._input, self._output = self.fwd.input_array, self.inv.output_array
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray, middle, out: np.ndarray) -> None:
        """``out = irfft2(middle(rfft2(x)))``; ``out`` C-contiguous, x's shape."""
        direct = out.ctypes.data % self.inv.output_alignment == 0
        with self.lock:
            try:
                Y = self.fwd(x)                 # the forward's output array
                middle(torch.from_numpy(Y))     # in place
                # Normalised by 1/(HW); consumes Y. Straight into out when aligned.
                result = self.inv(output_array=out if direct else None)
                if not direct:
                    np.copyto(out, result)
            finally:
                self.fwd.update_arrays(self._input, self.fwd.output_array)
                self.inv.update_arrays(self.inv.input_array, self._output)


_fftw_pairs: Dict[tuple, _FFTWPair] = {}
_MAX_FFTW_PAIRS = 16


def _fftw_pair(shape: Tuple[int, ...], dtype: torch.dtype) -> _FFTWPair:
    key = (shape, dtype, _workers())
    with _lock:
        pair = _fftw_pairs.get(key)
    if pair is None:
        pair = _FFTWPair(shape, dtype, key[2])  # planning (FFTW_MEASURE) outside the lock
        with _lock:
            pair = _fftw_pairs.setdefault(key, pair)
            while len(_fftw_pairs) > _MAX_FFTW_PAIRS:
                _fftw_pairs.pop(next(iter(_fftw_pairs)))
    return pair


def _numpy_pipeline(name: str, x: torch.Tensor, middle,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``irfft2(middle(rfft2(x)))`` of one contiguous CPU chunk with scipy's
    pocketfft or planned FFTW; ``middle`` works on the spectrum in place.

    Written into ``out`` (contiguous, x's shape and dtype) when given, else
    into a new tensor; returns it.
    """
    if name == "pyfftw":
        if out is None:
            import pyfftw

            out = torch.from_numpy(pyfftw.empty_aligned(tuple(x.shape), dtype=x.numpy().dtype))
        _fftw_pair(tuple(x.shape), x.dtype)(x.numpy(), middle, out.numpy())
        return out
    import scipy.fft as sf

    workers = _workers()
    Y = torch.from_numpy(np.ascontiguousarray(sf.rfft2(x.numpy(), workers=workers)))
    middle(Y)
    result = sf.irfft2(Y.numpy(), s=tuple(x.shape[-2:]), workers=workers)
    if out is None:  # scipy returns a new array: no copy (peak: spectrum + output)
        return torch.from_numpy(np.ascontiguousarray(result))
    np.copyto(out.numpy(), result)
    return out


# As csrc/pipeline.cpp: a batch is transformed chunk by chunk along dim 0, so
# the FFT temporaries stay a few MB whatever the batch.
CHUNK_ELEMENTS = 1 << 18


def _by_chunks(x: torch.Tensor, operands, fn) -> torch.Tensor:
    """``fn(x[rows], *operands[rows], out)`` for chunks of dim 0.

    One chunk: ``fn(x, *operands, None)`` returns the result. Several: each
    writes its chunk of one contiguous output (``out[rows]``). An operand is
    sliced with its sample when it has x's dims and batch size (a per-sample
    kernel); otherwise it broadcasts as it is.
    """
    if x.dim() < 3 or x.shape[0] <= 1:
        return fn(x, *operands, None)
    sample = max(1, x[0].numel())
    step = CHUNK_ELEMENTS // sample
    # pocketfft and FFTW share a chunk's planes among the threads: give each
    # chunk a multiple of the thread count (3 planes on 2 threads left one
    # idle a third of the time: 1.5x FFTW's batched round trip), unless that
    # makes chunks far larger than CHUNK_ELEMENTS (many threads, big planes).
    planes = max(1, sample // max(1, x.shape[-2] * x.shape[-1]))
    unit = _workers() // math.gcd(_workers(), planes)
    if step >= unit:
        step -= step % unit
    elif unit * sample <= 8 * CHUNK_ELEMENTS:
        step = unit
    step = max(1, step)
    if step >= x.shape[0]:
        return fn(x, *operands, None)
    # numpy's allocator asks for transparent huge pages for large arrays (as
    # csrc/alloc.cpp does): a fresh 48 MiB torch.empty took 10 ms more to fill.
    out = torch.from_numpy(np.empty(tuple(x.shape), dtype=x.numpy().dtype))
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        ops = [t[rows] if isinstance(t, torch.Tensor) and t.dim() == x.dim()
               and t.shape[0] == x.shape[0] else t for t in operands]
        fn(x[rows], *ops, out[rows])  # out[rows]: contiguous (a slice of dim 0)
    return out


def _numpy_deconv2d(image, k, reg, eps, thresh, name: str = "scipy"):
    from ._C import spectral_solve_

    def solve(x, k, reg, thresh, out):
        return _numpy_pipeline(name, x, lambda Y: spectral_solve_(Y, k, reg, eps, thresh), out)

    # .numpy() reads raw memory: a lazily negated view is materialised first.
    return _by_chunks(image.resolve_neg().contiguous(), (k, reg, thresh), solve)


def deconv2d(name: str, image, k, reg, eps, thresh):
    """``torch.ops.deconv_ext.deconv2d`` (adjoint=False) with FFT library ``name``.

    An eager CPU call without autograd: "torch" calls the C++ pipeline
    directly (no dispatcher or autograd wrapper: ~30 us less per call).
    """
    if name == "torch":
        from ._C import deconv2d as cpp_deconv2d

        return cpp_deconv2d(image, k, reg, eps, thresh, False)
    return _numpy_deconv2d(image, k, reg, eps, thresh, name)


def filter2d(name: str, x, k, conj: bool):
    """``torch.ops.deconv_ext.filter2d`` with FFT library ``name`` (as :func:`deconv2d`)."""
    if name == "torch":
        from ._C import filter2d as cpp_filter2d

        return cpp_filter2d(x, k, conj)

    def apply(xc, k, out):
        return _numpy_pipeline(name, xc, lambda Y: Y.mul_(k.conj() if conj else k), out)

    return _by_chunks(x.resolve_neg().contiguous(), (k,), apply)
