"""Thread counts: small LAPACK batches split over single-threaded workers.

torch's intra-op thread count is process-wide; these helpers change only the
calling (worker) thread's OpenMP setting, so concurrent callers and threads
started meanwhile are never affected.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["batched_linalg", "single_threaded", "call_single_threaded"]


@functools.lru_cache(maxsize=None)
def _omp_set_num_threads():
    """``omp_set_num_threads`` of the OpenMP runtime that torch's CPU ops use, or None.

    OpenMP's thread count (the ``nthreads-var`` ICV) belongs to the calling
    thread: setting it in a worker thread changes that worker only. That is
    the one knob that lets :func:`batched_linalg` run its workers single-
    threaded without touching any process-wide state. ``torch.set_num_threads``
    cannot be used for this: it also stores the process-wide default that
    every thread reads on its first torch call, so a thread started by the
    user while a plan is being built would run single-threaded for good (and
    restoring it afterwards clobbers a setting the user made in between).

    The symbol is looked up through ``libtorch_cpu`` (dlsym on a library
    handle searches its own dependencies first), so it is torch's own OpenMP
    runtime, not another one loaded by numpy or scipy. None when torch's
    parallel backend is not OpenMP or the lookup fails: then the workers run
    with the thread count they inherit (correct, somewhat slower).
    """
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
        libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
        names = [n for n in os.listdir(libdir)
                 if n.startswith(("libtorch_cpu.", "torch_cpu.")) and
                 n.endswith((".so", ".dylib", ".dll"))]
        if not names:
            return None
        fn = ctypes.CDLL(os.path.join(libdir, names[0])).omp_set_num_threads
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = None
    return fn


@contextlib.contextmanager
def single_threaded():
    """Run the body with one intra-op thread in the calling thread only.

    Nothing process-wide changes: other threads, threads started meanwhile and
    ``torch.set_num_threads`` calls made elsewhere are unaffected.
    """
    setter = _omp_set_num_threads()
    if setter is None:
        yield
        return
    # torch initialises a thread's OpenMP count lazily on its first call (from
    # the process-wide default): trigger that first, so it cannot undo ours.
    prev = torch.get_num_threads()
    setter(1)
    try:
        yield
    finally:
        setter(prev)


def call_single_threaded(fn, *args):
    """``fn(*args)`` with one intra-op thread in the calling thread only (as
    :func:`single_threaded`, without a context manager's cost on a hot path)."""
    setter = _omp_set_num_threads()
    prev = torch.get_num_threads()
    if setter is None or prev == 1:
        return fn(*args)
    setter(1)
    try:
        return fn(*args)
    finally:
        setter(prev)


def batched_linalg(fn, K: torch.Tensor):
    """``fn(K)`` for a batch of small matrices K (..., m, n), parallel over the batch.

    On the CPU, LAPACK called per matrix with a multi-threaded BLAS spends its
    time in thread synchronisation: a batched 64x64 complex SVD of 2112
    matrices took 1.0-1.5 s with one intra-op thread and 5-28 s with two on
    this project's 2-core machines. So for small matrices the batch is split
    into one contiguous slice per thread, each slice runs in a worker thread
    limited to a single intra-op thread (that worker's own OpenMP setting:
    see :func:`_omp_set_num_threads`; the process-wide ``torch.set_num_threads``
    value is never changed, so concurrent callers and other threads are not
    affected), and the results are concatenated. Elsewhere (CUDA, one
    thread, few or large matrices) ``fn(K)`` is called as is. Thread-safe.

    ``fn`` returns a tensor or a tuple of tensors, each with K's batch dims
    leading.
    """
    if torch.compiler.is_compiling():
        return fn(K)  # traced: the compiler schedules it; no Python threads in a graph
    threads = torch.get_num_threads()
    batch = K.shape[:-2]
    nb = math.prod(batch)
    if (K.device.type != "cpu" or threads <= 1 or nb < 4 * threads
            or max(K.shape[-2:]) > 256):
        return fn(K)
    flat = K.reshape(nb, *K.shape[-2:])
    bounds = [nb * i // threads for i in range(threads + 1)]
    grad = torch.is_grad_enabled()

    def run(i):
        with torch.set_grad_enabled(grad), single_threaded():
            return fn(flat[bounds[i]:bounds[i + 1]])

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(run, range(threads)))
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p).reshape(*batch, *p[0].shape[1:]) for p in zip(*parts))
    return torch.cat(parts).reshape(*batch, *parts[0].shape[1:])
