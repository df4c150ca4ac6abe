"""The CPU pipelines on other FFT libraries: ``scipy.fft`` (pocketfft) and FFTW.

``irfft2(solve(rfft2(x)))`` and ``irfft2(K rfft2(x))`` with the transforms of
``scipy.fft`` (BSD, a dependency) or pyFFTW (GPL, only if the user installed
it), the fused C++ solve in between; and the symmetric-boundary DCT solve
with pocketfft's native DCTs. Which library runs is chosen by the route table
(:mod:`.routes`), only for eager CPU calls without autograd: compiled graphs
and backward passes always run the ops.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

import numpy as np
import scipy.fft as sf
import torch

from .library import cpp

__all__ = ["deconv2d", "filter2d", "dct_solve", "rfft2", "irfft2", "pyfftw_available",
           "CHUNK_ELEMENTS"]

_lock = threading.Lock()


def pyfftw_available() -> bool:
    """Whether pyFFTW can be imported (it is never a dependency)."""
    try:
        import pyfftw  # noqa: F401
    except ImportError:
        return False
    return True


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
    workers = _workers()
    Y = torch.from_numpy(np.ascontiguousarray(sf.rfft2(x.numpy(), workers=workers)))
    middle(Y)
    result = sf.irfft2(Y.numpy(), s=tuple(x.shape[-2:]), workers=workers)
    if out is None:  # scipy returns a new array: no copy (peak: spectrum + output)
        return torch.from_numpy(np.ascontiguousarray(result))
    np.copyto(out.numpy(), result)
    return out


def rfft2(x: torch.Tensor) -> torch.Tensor:
    """``scipy.fft.rfft2`` of a CPU tensor (..., H, W) -> complex (..., H, W // 2 + 1)."""
    x = x.detach().resolve_neg().contiguous()
    return torch.from_numpy(np.ascontiguousarray(sf.rfft2(x.numpy(), workers=_workers())))


def irfft2(Y: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``scipy.fft.irfft2`` of a half spectrum back to (..., H, W)."""
    Y = Y.resolve_conj().contiguous()
    return torch.from_numpy(np.ascontiguousarray(sf.irfft2(Y.numpy(), s=tuple(size),
                                                           workers=_workers())))


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


def deconv2d(name: str, image, k, reg, eps, thresh):
    """``torch.ops.deconv_ext.deconv2d`` (adjoint=False) with FFT library ``name``
    ("scipy" or "pyfftw"); the fused C++ solve runs between the transforms."""

    def solve(x, k, reg, thresh, out):
        return _numpy_pipeline(name, x, lambda Y: cpp.spectral_solve_(Y, k, reg, eps, thresh), out)

    # .numpy() reads raw memory: a lazily negated view is materialised first.
    return _by_chunks(image.resolve_neg().contiguous(), (k, reg, thresh), solve)


def filter2d(name: str, x, k, conj: bool):
    """``torch.ops.deconv_ext.filter2d`` with FFT library ``name`` (as :func:`deconv2d`)."""

    def apply(xc, k, out):
        return _numpy_pipeline(name, xc, lambda Y: Y.mul_(k.conj() if conj else k), out)

    return _by_chunks(x.resolve_neg().contiguous(), (k,), apply)


# ---------------------------------------------------------------------------
# The DCT solve with pocketfft's native DCTs
# ---------------------------------------------------------------------------

_DCT_CHUNK_ELEMENTS = 1 << 18  # as fft_backend.CHUNK_ELEMENTS: a chunk's buffers stay in cache
_pool = None
_pool_lock = threading.Lock()


def _thread_pool(n: int):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="deconv_ext_dct")
        return _pool


def _scipy_dct_chunk(x: np.ndarray, f: np.ndarray, out: np.ndarray, workers: int) -> None:
    """``out = DCT-III(f * DCT-II(x))`` (unnormalised, pocketfft), in place in one buffer.

    The buffer's rows are padded by a cache line when their length in bytes is
    a multiple of 512: the column pass then does not stride by a power of two
    (at 512^2 float64 that halves ``dctn``'s time).
    """
    W = x.shape[-1]
    pad = 64 // x.itemsize if (W * x.itemsize) % 512 == 0 else 0
    buf = np.empty(x.shape[:-1] + (W + pad,), dtype=x.dtype)
    v = buf[..., :W]
    np.copyto(v, x)
    v = sf.dctn(v, type=2, axes=(-2, -1), workers=workers, overwrite_x=True)
    if np.broadcast_shapes(v.shape, f.shape) == v.shape:
        np.multiply(v, f, out=v)
    else:
        v = v * f
    v = sf.dctn(v, type=3, axes=(-2, -1), workers=workers, overwrite_x=True)
    np.copyto(out, v)


def dct_solve(image: torch.Tensor, f: np.ndarray) -> torch.Tensor:
    """``idctn(F * dctn(x, norm="ortho"), norm="ortho")`` by pocketfft's native DCTs.

    The unnormalised transforms are used: DCT-III(DCT-II(x)) = 4 H W x, so
    ``f = F / (4 H W)``. A batch is solved chunk by chunk along its leading
    dims (``torch.get_num_threads()`` chunks at a time on a thread pool:
    pocketfft releases the GIL), each chunk's transforms and filter in one
    cache-sized buffer, like the circular pipeline.
    """
    H, W = image.shape[-2:]
    workers = max(1, torch.get_num_threads())
    x = image.detach().resolve_neg().numpy()  # .numpy() refuses a lazily negated view
    out = np.empty(x.shape, dtype=x.dtype)
    n = math.prod(x.shape[:-2])
    if n <= 1:
        _scipy_dct_chunk(x, f, out, workers)
        return torch.from_numpy(out)
    xf = x.reshape(n, H, W)
    of = out.reshape(n, H, W)
    ff = np.broadcast_to(f, x.shape).reshape(n, H, W) if f.ndim > 2 else f
    step = max(1, min(_DCT_CHUNK_ELEMENTS // (H * W), -(-n // workers)))
    starts = range(0, n, step)

    def job(s):
        fs = ff[s:s + step] if ff.ndim == 3 else ff
        _scipy_dct_chunk(xf[s:s + step], fs, of[s:s + step], 1)

    if workers == 1 or len(starts) == 1:
        for s in starts:
            _scipy_dct_chunk(xf[s:s + step], ff[s:s + step] if ff.ndim == 3 else ff,
                             of[s:s + step], workers)
    else:
        list(_thread_pool(workers).map(job, starts))
    return torch.from_numpy(out)
