"""Deconvolution of Dask arrays: one machine or many, chunk by chunk.

:func:`deconvolve` returns a lazy ``dask.array`` built with
``map_overlap``: each chunk is solved on itself plus ``depth`` pixels of its
neighbours (the inverse filter's reach, :func:`deconv_ext.tiling.filter_reach`),
and only the chunk is kept. The semantics and the error bound are those of
:func:`deconv_ext.tiling.deconvolve_tiled` (the observation extended by the
boundary rule by the filter's reach, solved circularly, cropped): the two
agree to within twice ``TiledInfo.seam_bound``.

Boundaries
----------
The extension rule is that of the padded fast path
(``deconv_ext.plans.padded.FAST_PAD_MODE``); on Dask's side (verified in
tests/test_dask.py):

=============  ===========================  =====================================
boundary       extension of ``abcd``        Dask ``map_overlap`` boundary
=============  ===========================  =====================================
``symmetric``  ``cba|abcd|dcb``             ``"reflect"`` (Dask's reflect repeats
                                            the edge pixel: numpy's "symmetric")
``replicate``  ``aaa|abcd|ddd``             ``"nearest"``
``zeros``      ``aaa|abcd|ddd`` (the fast   ``"nearest"``
               path extends a zero-
               boundary blur by replicate)
``reflect``    ``dcb|abcd|cba``             none in Dask: ``"none"``, and the
                                            chunk solve extends the image's
                                            edge itself
=============  ===========================  =====================================

Chunks
------
Every chunk along the two image axes must be at least the depth on that axis
(a neighbour must supply a whole margin); otherwise a ``ValueError`` says which
chunks to use (Dask would otherwise rechunk silently, and a chunk much smaller
than its margin wastes most of each solve). An axis held in one chunk needs no
neighbour: its depth is 0 and the chunk solve extends it by the rule. Leading
axes may be chunked freely (depth 0).

Per worker
----------
Each process keeps the plans it built (keyed by the PSF's bytes, the
filter's parameters, the buffer size and dtype; at most :data:`MAX_PLANS`),
so a worker builds one plan per chunk shape, not one per chunk. Inside a
``distributed`` worker torch is set to ``torch_threads`` intra-op threads
(default 1: the worker's threads, one task each, are Dask's parallelism; more
torch threads per task would oversubscribe the cores).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Optional, Tuple, Union

import numpy as np
import torch

from . import validation as V
from .maths import spectral
from .plans import DeconvPlan
from .plans.padded import FAST_PAD_MODE
from .tiling import DEFAULT_TOL, _filter_args, _overlap_arg, _tol, extension_index, filter_reach

__all__ = ["deconvolve", "DASK_BOUNDARY", "MAX_PLANS", "clear_plans"]

# Our extension rule -> Dask's boundary mode, where Dask has the same one.
DASK_BOUNDARY = {"symmetric": "reflect", "replicate": "nearest", "zeros": "nearest",
                 "reflect": None}
MAX_PLANS = 8

_lock = threading.Lock()
_plans: "OrderedDict[tuple, DeconvPlan]" = OrderedDict()
_threads_set = False


def _import_dask():
    try:
        import dask.array as da
    except ImportError as e:
        raise ImportError('deconv_ext.dask needs Dask: pip install "deconv_ext[dask]" (dask[array] '
                          'and distributed)') from e
    return da


def clear_plans() -> None:
    """Forget this process's cached chunk plans."""
    with _lock:
        _plans.clear()


def _plan(psf: np.ndarray, eps, method, reg, rcond, size: Tuple[int, int],
          dtype: torch.dtype) -> DeconvPlan:
    reg_key = (reg.tobytes(), reg.shape) if isinstance(reg, np.ndarray) else reg
    key = (hashlib.sha1(psf.tobytes()).hexdigest(), psf.shape, str(psf.dtype), eps, method,
           reg_key, rcond, size, dtype)
    with _lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    r = torch.from_numpy(reg).to(dtype) if isinstance(reg, np.ndarray) else reg
    plan = DeconvPlan(torch.from_numpy(psf).to(dtype), size, eps=eps, method=method, reg=r,
                      rcond=rcond, dtype=dtype)
    with _lock:
        _plans[key] = plan
        while len(_plans) > MAX_PLANS:
            _plans.popitem(last=False)
    return plan


def _set_threads(torch_threads: Optional[int]) -> None:
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    n = torch_threads
    if n is None:
        try:
            from distributed import get_worker

            get_worker()
        except (ImportError, ValueError):
            return  # not a distributed worker: leave the process's setting alone
        n = 1
    torch.set_num_threads(int(n))


def _solve_block(block: np.ndarray, *, psf, eps, method, reg, rcond, mode, margin, own,
                 nblocks, compute, result, torch_threads, block_info=None) -> np.ndarray:
    """Solve one overlapped chunk; returns the block's own shape (Dask trims the depth).

    On an axis marked ``own`` (no Dask boundary for the rule, or one chunk),
    the block lacks the margin on the image's edge: it is extended here by
    the rule about that edge. The buffer is then rounded up to a fast FFT
    size by the same rule about the block's ends (pixels beyond the margin,
    whose values only need to lie within the image's range).
    """
    _set_threads(torch_threads)
    loc = block_info[0]["chunk-location"] if block_info else (0,) * block.ndim
    dtype = torch.float64 if compute == "float64" else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.dtype(compute)))
    size, crop = [], []
    for k, ax in enumerate((block.ndim - 2, block.ndim - 1)):
        n = block.shape[ax]
        before = margin[k] if own[k] and loc[ax] == 0 else 0
        after = margin[k] if own[k] and loc[ax] == nblocks[ax] - 1 else 0
        total = n + before + after
        p = spectral.next_fast_size(total)
        start = before + (p - total) // 2
        idx = torch.from_numpy(extension_index(-start, p, n, mode))
        x = x.index_select(ax, idx)
        size.append(p)
        crop.append(start)
    plan = _plan(psf, eps, method, reg, rcond, tuple(size), dtype)
    y = plan(x.contiguous())
    h, w = block.shape[-2:]
    y = y[..., crop[0]:crop[0] + h, crop[1]:crop[1] + w]
    return y.numpy().astype(result, copy=False)


def _chunk_hint(n: int, depth: int, start: int) -> int:
    """A regular chunk size >= ``start`` whose chunks (the last one too) are all >= ``depth``."""
    c = max(depth, start)
    while c < n and 0 < n % c < depth:
        c += 1
    return min(c, n)


def deconvolve(darray, psf: torch.Tensor, eps: float = 1e-2, method: str = "tikhonov", reg=None,
               boundary: str = "reflect", rcond: Optional[float] = None, *,
               overlap: Union[str, int, Tuple[int, int]] = "auto", tol: float = DEFAULT_TOL,
               torch_threads: Optional[int] = None):
    """Lazy deconvolution of a Dask array (..., H, W) by ``map_overlap``.

    Parameters
    ----------
    darray : dask.array.Array (..., H, W), real integer or floating dtype
        Chunks along H and W must each be at least the depth on that axis
        (module docstring); leading axes are chunked freely.
    psf : Tensor or numpy array (kh, kw)
        One PSF for every image plane (a per-chunk PSF has no meaning once
        the leading axes are chunked).
    eps, method, reg, rcond : as in :func:`deconv_ext.tiling.deconvolve_tiled`
    boundary : {"reflect", "symmetric", "replicate", "zeros"}
        The extension rule, mapped onto Dask's boundary modes (module
        docstring); "circular" is rejected.
    overlap : "auto", int >= 0 or (int, int), keyword-only
        The ``map_overlap`` depth on (H, W); "auto": :func:`filter_reach` at ``tol``.
    tol : float in (0, 1), keyword-only
    torch_threads : int >= 1, optional, keyword-only
        Intra-op threads of torch in each worker (default 1 inside a
        ``distributed`` worker, unchanged elsewhere).

    Returns
    -------
    dask.array.Array, same shape and chunks; float dtype of the input
    (float32 for integers).

    Raises
    ------
    ImportError without Dask; ValueError/TypeError for invalid arguments or
    chunks finer than the depth.
    """
    da = _import_dask()
    if not isinstance(darray, da.Array):
        raise TypeError(f"darray must be a dask.array.Array, got {type(darray).__name__} "
                        f"(use deconv_ext.tiling.deconvolve_tiled for tensors and numpy arrays)")
    if darray.ndim < 2:
        raise ValueError(f"darray has shape {darray.shape}; expected at least 2 dims (..., H, W)")
    dt = np.dtype(darray.dtype)
    if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
        raise TypeError(f"darray has dtype {dt}; expected a real integer or floating dtype")
    if isinstance(psf, np.ndarray):
        psf = torch.from_numpy(psf)
    if not isinstance(psf, torch.Tensor):
        raise TypeError(f"psf must be a torch.Tensor or numpy array, got {type(psf).__name__}")
    if psf.dim() != 2:
        raise ValueError(f"psf has shape {tuple(psf.shape)}; expected (kh, kw)")
    V.kernel(psf, darray.shape)
    V.choice("boundary", boundary, V.BOUNDARIES)
    if boundary == "circular":
        raise ValueError("boundary='circular' has no meaning for chunks (a chunk has no periodic "
                         "neighbour); expected 'reflect', 'symmetric', 'replicate' or 'zeros'")
    psf, eps, method, reg, rcond = _filter_args(psf, eps, method, reg, rcond)
    margin = _overlap_arg(overlap)
    tol = _tol(tol)
    if torch_threads is not None and (isinstance(torch_threads, bool)
                                      or not isinstance(torch_threads, int) or torch_threads < 1):
        raise ValueError(f"torch_threads={torch_threads!r} is not valid; expected an int >= 1")
    if margin is None:
        margin = filter_reach(psf, eps, method, reg, rcond, tol).margin

    nd = darray.ndim
    native = DASK_BOUNDARY[boundary]
    depth, bnd, own = {}, {}, []
    for k, ax in enumerate((nd - 2, nd - 1)):
        chunks = darray.chunks[ax]
        m = margin[k]
        if len(chunks) == 1 or m == 0:
            depth[ax], bnd[ax] = 0, "none"
            own.append(True)
            continue
        if min(chunks) < m:
            name = "H" if k == 0 else "W"
            raise ValueError(
                f"darray's chunks along {name} (axis {ax}) are {chunks}; each must be at least "
                f"the overlap depth {m} (the inverse filter's reach at tol={tol}); rechunk, e.g. "
                f"darray.rechunk({{{ax}: {_chunk_hint(sum(chunks), m, max(chunks))}}}), or "
                f"pass a smaller overlap=")
        depth[ax] = m
        bnd[ax] = native or "none"
        own.append(native is None)
    for ax in range(nd - 2):
        depth[ax], bnd[ax] = 0, "none"

    compute = "float64" if dt == np.float64 else "float32"
    result = dt if np.issubdtype(dt, np.floating) else np.dtype(np.float32)
    # resolve_neg: .numpy() refuses a lazily negated view (torch._neg_view).
    reg_np = reg.detach().resolve_neg().cpu().numpy() if isinstance(reg, torch.Tensor) else reg
    mode = FAST_PAD_MODE[boundary]
    return darray.map_overlap(
        _solve_block, depth=depth, boundary=bnd, trim=True, dtype=result,
        meta=np.empty((0,) * nd, dtype=result),
        psf=psf.detach().resolve_neg().cpu().numpy(), eps=eps, method=method, reg=reg_np,
        rcond=rcond,
        mode=mode, margin=tuple(margin), own=tuple(own), nblocks=darray.numblocks,
        compute=compute, result=result, torch_threads=torch_threads)
