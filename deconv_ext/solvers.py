"""Exact solvers for non-circular convolutions.

* :func:`cgls`: conjugate gradients on the normal equations of the
  Tikhonov problem ``min_x ||A x - y||^2 + eps ||R x||^2`` (CGLS form: the
  data residual ``s = y - A x`` is carried, and the normal residual
  ``r = A^T s - eps R^T R x`` recomputed from it, which is more stable than
  updating ``A^T A`` products), batched (one step length per image),
  optionally preconditioned by a fast transform solve;
* :class:`FFTPreconditioner`, :class:`DCTPreconditioner`: ``M^-1 r`` with
  ``M = A_c^T A_c + eps R_c^T R_c`` for the circulant (FFT) or Neumann
  (DCT-II) approximation ``A_c`` of ``A``;
* :func:`dct2`, :func:`idct2`: orthonormal 2D DCT-II and its inverse on
  ``torch.fft`` (Makhoul's reordering in 2D: one ``rfft2`` / ``irfft2`` at the
  image size), equal to ``scipy.fft.dctn(x, norm="ortho")``;
* :func:`dct_deconvolve`: the direct, exact solve of the symmetric-boundary
  (Neumann) blur by a PSF that is symmetric in each axis, which the DCT-II
  diagonalises (its filter cached per PSF content; eager CPU calls without
  autograd run it in C++ around the pipelines' real FFTs, ``csrc/dct.cpp``,
  or with pocketfft's native DCTs through ``scipy.fft``).
"""
from __future__ import annotations

import functools
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from . import plan_cache, spectral

__all__ = [
    "SolveInfo",
    "cgls",
    "FFTPreconditioner",
    "DCTPreconditioner",
    "dct2",
    "idct2",
    "dct_eigenvalues",
    "is_axis_symmetric",
    "dct_deconvolve",
    "PRECONDS",
    "DEFAULT_MAX_ITER",
]

PRECONDS = ("auto", "dct", "fft", "none")
DEFAULT_MAX_ITER = 1000


@dataclass
class SolveInfo:
    """What an exact solve did (returned with ``return_info=True``).

    Attributes
    ----------
    iterations : Tensor (...,) int64
        Iterations per independent system (per image plane, or per sample of a
        multi-channel layer); 0 for direct solves.
    residual : Tensor (...,) float
        Relative residual of the normal equations reached,
        ``||A^T (y - A x) - eps R^T R x|| / ||A^T y||`` (0 where ``A^T y = 0``).
    converged : Tensor (...,) bool
        ``residual <= tol``.
    solver : str
        ``"cg"``, ``"dct"`` or ``"fft"``.
    precond : str or None
        Preconditioner used by CG (``"dct"``, ``"fft"`` or None).
    """

    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    solver: str
    precond: Optional[str] = None

    @property
    def max_iterations(self) -> int:
        """The largest iteration count over the batch (what the call cost)."""
        return int(self.iterations.max()) if self.iterations.numel() else 0


# ---------------------------------------------------------------------------
# DCT-II
# ---------------------------------------------------------------------------

def _ortho_scale(n: int, dtype, device) -> torch.Tensor:
    f = torch.full((n,), math.sqrt(1.0 / (2 * n)), dtype=dtype, device=device)
    f[0] = math.sqrt(1.0 / (4 * n))
    return f


def _makhoul_order(n: int) -> torch.Tensor:
    """``perm`` with ``v = x[perm] = (x0, x2, x4, ..., x5, x3, x1)``."""
    return torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])


def _dct_tables_build(H: int, W: int, dtype: torch.dtype, device) -> dict:
    """Index and twiddle tables of the 2D Makhoul DCT-II / DCT-III at (H, W).

    Built in float64 and rounded once to ``dtype``.
    """
    f64 = torch.float64
    Wh = W // 2 + 1
    ph, pw = _makhoul_order(H), _makhoul_order(W)
    perm = (ph[:, None] * W + pw[None, :]).reshape(-1)            # v = x.flat[perm]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(H * W)                               # x = v.flat[inv]
    k = torch.arange(H, dtype=f64)
    l_ = torch.arange(Wh, dtype=f64)
    th = math.pi * k / (2 * H)
    tw = math.pi * l_ / (2 * W)
    sh = _ortho_scale(H, f64, "cpu")
    sw = _ortho_scale(W, f64, "cpu")[:Wh]
    scale = 2 * sh[:, None] * sw[None, :]
    # Forward: 4 s_h s_w sum x cos cos = Re/Im of G1 V[k, l] + G2 conj(V[-k, l]).
    g1 = torch.polar(scale, -(th[:, None] + tw[None, :]))
    g2 = torch.polar(scale, -(th[:, None] - tw[None, :]))
    # Inverse: with S = X / (4 c_h c_w) after scaling row 0 and column 0 by sqrt(2)
    # (c = sqrt(1 / 2N): the scale of every index but 0),
    # V[k, l] = e^{i(th + tw)} (S[k, l] - S[H-k, W-l] - i (S[H-k, l] + S[k, W-l])).
    amp = torch.full((H, Wh), math.sqrt(H * W) / 2, dtype=f64)    # 1 / (4 c_h c_w)
    t_inv = torch.polar(amp, th[:, None] + tw[None, :])
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    return {
        "perm": perm.to(device), "inv": inv.to(device),
        "negk": ((-torch.arange(H)) % H).to(device),              # V[-k]
        "rev_h": (H - torch.arange(H)).to(device),                # rows H, H-1, ..., 1 of the padded X
        "rev_w": (W - torch.arange(Wh)).to(device),               # cols W, W-1, ..., W-Wh+1
        "g1": g1.to(device=device, dtype=cdtype), "g2": g2.to(device=device, dtype=cdtype),
        "t_inv": t_inv.to(device=device, dtype=cdtype),
    }


_dct_tables_cached = functools.lru_cache(maxsize=32)(_dct_tables_build)


def _dct_tables(H: int, W: int, dtype: torch.dtype, device: torch.device) -> dict:
    if torch.compiler.is_compiling():
        return _dct_tables_build(H, W, dtype, device)
    return _dct_tables_cached(H, W, dtype, torch.device(device))


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2D DCT-II over the last two dims: ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``.

    2D Makhoul: one gather (rows and columns even-then-odd-reversed), one
    ``rfft2`` at (H, W) and a 2D twiddle. With ``V`` the full DFT of the
    reordered ``v``, ``sum x cos(a_k) cos(b_l) = Re(e^{-i th_k} (e^{-i tw_l}
    V[k, l] + e^{i tw_l} V[k, -l])) / 2`` and ``V[k, -l] = conj(V[-k, l])``:
    columns ``l <= W / 2`` are the real part of that sum, and columns ``W - l``
    minus the imaginary part of the difference, all from the half spectrum.

    Parameters
    ----------
    x : Tensor (..., H, W), float32 or float64

    Returns
    -------
    Tensor (..., H, W)
    """
    H, W = x.shape[-2:]
    Wh = W // 2 + 1
    t = _dct_tables(H, W, x.dtype, x.device)
    v = x.reshape(*x.shape[:-2], H * W)[..., t["perm"]].reshape(x.shape)
    V = torch.fft.rfft2(v)
    z1 = t["g1"] * V
    z2 = t["g2"] * V[..., t["negk"], :].conj()
    first = (z1 + z2).real
    if Wh == W:                                                   # W <= 2
        return first.contiguous()
    second = (z2 - z1).imag[..., 1:W - Wh + 1].flip(-1)
    return torch.cat([first, second], dim=-1)


def idct2(X: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (its transpose: the transform is orthonormal), (..., H, W).

    The 2D Makhoul inverse: the half spectrum of the reordered signal is
    ``V[k, l] = e^{i (th_k + tw_l)} (S[k, l] - S[-k, -l] - i (S[-k, l] + S[k, -l]))``
    (``S`` the unnormalised coefficients, zero at index ``H`` / ``W``), then one
    ``irfft2`` and one gather.
    """
    H, W = X.shape[-2:]
    Wh = W // 2 + 1
    t = _dct_tables(H, W, X.dtype, X.device)
    Xp = torch.nn.functional.pad(X, (0, 1, 0, 1))                 # row H, column W = 0
    Xp[..., 0, :] *= math.sqrt(2.0)                               # s[0] = c / sqrt(2)
    Xp[..., :, 0] *= math.sqrt(2.0)
    rows = Xp[..., t["rev_h"], :]                        # S[H - k, :]
    a = Xp[..., :H, :Wh]
    b = rows[..., :Wh]
    c = Xp[..., :H, t["rev_w"]]
    d = rows[..., t["rev_w"]]
    V = t["t_inv"] * torch.complex(a - d, -(b + c))
    v = torch.fft.irfft2(V, s=(H, W))
    return v.reshape(*v.shape[:-2], H * W)[..., t["inv"]].reshape(v.shape)


def dct_eigenvalues(psf: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``K(pi k / H, pi l / W)``: the PSF's DTFT on the DCT-II frequency grid.

    For a PSF symmetric in each axis about its origin ``(kh // 2, kw // 2)``
    this is real and the exact spectrum of its symmetric-boundary (Neumann)
    blur: ``A_s = C^T diag(lambda) C`` with ``C`` the orthonormal 2D DCT-II.
    For any PSF, ``|K|^2`` is the DCT spectrum of the symmetric kernel
    ``psf (*) flip(psf)``, which is what the DCT preconditioner uses.

    Parameters
    ----------
    psf : Tensor (..., kh, kw), kh <= 2 H, kw <= 2 W
    size : (H, W)

    Returns
    -------
    Tensor (..., H, W), complex (real up to rounding when the PSF is symmetric).
    """
    H, W = size
    # rfft2 at (2H, 2W) samples the DTFT at 2 pi k / 2H = pi k / H.
    return spectral.psf_spectrum(psf, (2 * H, 2 * W))[..., :H, :W]


def _centred(psf: torch.Tensor) -> torch.Tensor:
    """The PSF zero-padded to odd sizes with its origin in the middle."""
    kh, kw = psf.shape[-2:]
    return torch.nn.functional.pad(psf, (0, 2 * (kw // 2) + 1 - kw, 0, 2 * (kh // 2) + 1 - kh))


def is_axis_symmetric(psf: torch.Tensor) -> bool:
    """Whether ``psf[c + i, c' + j] == psf[c - i, c' + j] == psf[c + i, c' - j]``
    about the origin ``(c, c') = (kh // 2, kw // 2)`` (to rounding).

    Even sizes need their first row/column to be zero (the origin is
    ``k // 2``, so the support must end at ``2 (k // 2)``).
    """
    h = _centred(psf.detach())
    tol = 100 * torch.finfo(spectral.compute_dtype(h.dtype)).eps * float(h.abs().max())
    return bool((h - h.flip(-2)).abs().max() <= tol) and bool((h - h.flip(-1)).abs().max() <= tol)


def _reg_dct_power(reg, size, dtype, device) -> Optional[torch.Tensor]:
    """``|R|^2`` on the DCT-II grid (None for the identity)."""
    if reg is None:
        return None
    if isinstance(reg, str):
        H, W = size
        u = torch.arange(H, dtype=torch.float64, device=device)
        v = torch.arange(W, dtype=torch.float64, device=device)
        lap = 4 - 2 * torch.cos(math.pi * u / H)[:, None] - 2 * torch.cos(math.pi * v / W)[None, :]
        return (lap * lap).to(dtype)
    return dct_eigenvalues(reg.to(dtype=dtype, device=device), size).abs().square()


def dct_deconvolve(image: torch.Tensor, psf: torch.Tensor, eps: float = 1e-2,
                   method: str = "tikhonov", reg=None,
                   rcond: Optional[float] = None) -> torch.Tensor:
    """Exact regularised inverse of the symmetric-boundary blur, by the DCT-II.

    Model: ``y = A_s x``, the blur of ``x`` extended by half-sample symmetry
    (``np.pad(mode="symmetric")``, ``scipy.ndimage.convolve(mode="reflect")``)
    with a PSF symmetric in each axis. ``A_s = C^T diag(lambda) C`` exactly, so
    per DCT coefficient ``(k, l)``:

    * Tikhonov: ``X = lambda Y / (lambda^2 + eps |R|^2)``;
    * pinv (or where ``eps |R|^2 = 0``): ``X = Y / lambda`` where
      ``|lambda| > rcond * max |lambda|``, else 0.

    Parameters
    ----------
    image : Tensor (..., H, W), float32/float64 (the computation dtype)
    psf : Tensor (..., kh, kw), symmetric in each axis about ``(kh // 2, kw // 2)``
    eps : float >= 0
    method : {"tikhonov", "pinv"}
    reg : None, "laplacian" (symmetric-boundary Laplacian) or a symmetric kernel
    rcond : float, optional; default ``10 max(H, W) finfo.eps``

    Returns
    -------
    Tensor (..., H, W) in ``image``'s dtype.

    Raises
    ------
    ValueError if ``psf`` (or a ``reg`` kernel) is not symmetric in each axis:
    the DCT does not diagonalise that operator (use ``solver="cg"``).
    """
    dtype = image.dtype
    size = tuple(int(n) for n in image.shape[-2:])
    if rcond is None:
        rcond = spectral.default_rcond(size, dtype)
    eps_key = float(eps) if not isinstance(eps, torch.Tensor) else eps
    reg_key = reg if not isinstance(reg, str) else str(reg)
    plan = plan_cache.cached_plan(
        psf, ("dct_filter", size, dtype, str(image.device), method, eps_key, reg_key, float(rcond)),
        lambda: _DCTFilter(_dct_filter(psf.to(dtype=dtype, device=image.device), size, eps,
                                       method, reg, rcond, dtype)))
    route = _eager_dct(image, plan.filt)
    if route is not None:
        return _eager_dct_solve(route, image, plan)
    return idct2(dct2(image) * plan.filt)


class _DCTFilter:
    """A cached DCT solve: the filter ``F`` (torch) and, made on first use,
    ``F / (4 H W)`` as a NumPy array for the unnormalised pocketfft transforms."""

    def __init__(self, filt: torch.Tensor):
        self.filt = filt
        self._scaled = None

    def scaled(self) -> np.ndarray:
        if self._scaled is None:
            H, W = self.filt.shape[-2:]
            self._scaled = self.filt.detach().numpy() * (1.0 / (4.0 * H * W))
        return self._scaled


def _dct_filter(psf, size, eps, method, reg, rcond, dtype) -> torch.Tensor:
    """The per-coefficient filter ``F`` of :func:`dct_deconvolve` (``X = F Y``).

    Validates the PSF (and a ``reg`` kernel): only those symmetric in each
    axis are diagonalised by the DCT.
    """
    if not is_axis_symmetric(psf):
        raise ValueError("solver='dct' needs a PSF symmetric in each axis about its origin "
                         "(kh // 2, kw // 2) (psf == psf.flip(-1) == psf.flip(-2) for odd sizes); "
                         "this PSF is not, so the DCT does not diagonalise the blur. Use "
                         "solver='cg' for the exact solve of a non-symmetric PSF")
    if isinstance(reg, torch.Tensor) and not is_axis_symmetric(reg):
        raise ValueError("solver='dct' needs a regulariser kernel symmetric in each axis; "
                         "use reg=None, 'laplacian' or solver='cg'")
    lam = dct_eigenvalues(psf, size).real
    dims = tuple(range(-min(lam.dim(), 3), 0))
    thr = rcond * lam.abs().amax(dim=dims, keepdim=True)
    keep = lam.abs() > thr
    one = torch.ones_like(lam)
    pinv = torch.where(keep, 1.0 / torch.where(keep, lam, one), torch.zeros_like(lam))
    if method == "pinv" or float(eps) == 0.0:
        return pinv
    r2 = _reg_dct_power(reg, size, dtype, psf.device)
    P = eps * (r2 if r2 is not None else one)
    den = lam * lam + P
    return torch.where(P > 0, lam / torch.where(P > 0, den, one), pinv)


def _eager_dct(image: torch.Tensor, filt: torch.Tensor) -> Optional[str]:
    """The DCT route of an eager CPU call without autograd, else None (then the
    torch transforms run: differentiable, traceable).

    * ``"cpp"``: the fused C++ solve (``csrc/dct.cpp``: Makhoul's 2D
      reordering around the pipelines' own real FFTs, on torch's MKL and
      OpenMP threads) for a filter shared by every image plane, unless
      ``DECONV_EXT_FFT`` names scipy or pyfftw;
    * ``"scipy"``: pocketfft's native DCTs (``scipy.fft``): those names, or a
      per-sample filter under ``auto``.
    """
    if image.device.type != "cpu" or filt.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if torch.is_grad_enabled() and (image.requires_grad or filt.requires_grad):
        return None
    from . import backend, fft_backend

    name = fft_backend.selected()
    if (name in ("auto", "torch") and backend.selected() == "cpp"
            and image.dtype in (torch.float32, torch.float64) and filt.dtype == image.dtype
            and all(n == 1 for n in filt.shape[:-2])):
        return "cpp"
    return None if name == "torch" else "scipy"


def _eager_dct_solve(route: str, image: torch.Tensor, filt: "_DCTFilter") -> torch.Tensor:
    if route == "cpp":
        from ._C import dct_solve

        return dct_solve(image, filt.filt.detach().reshape(filt.filt.shape[-2:]))
    return _scipy_dct_solve(image, filt.scaled())


_DCT_CHUNK_ELEMENTS = 1 << 18  # as fft_backend.CHUNK_ELEMENTS: a chunk's buffers stay in cache
_pool = None
_pool_lock = threading.Lock()


def _thread_pool(n: int):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != n:
            from concurrent.futures import ThreadPoolExecutor

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
    import scipy.fft as sf

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


def _scipy_dct_solve(image: torch.Tensor, f: np.ndarray) -> torch.Tensor:
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


# ---------------------------------------------------------------------------
# Preconditioners: M^-1 r with M = A_c^T A_c + eps R_c^T R_c
# ---------------------------------------------------------------------------

def _safe_inverse(power: torch.Tensor) -> torch.Tensor:
    """1 / power, with powers below 1e-12 of the largest clamped there (keeps M SPD)."""
    dims = tuple(range(-min(power.dim(), 3), 0))
    floor = 1e-12 * power.amax(dim=dims, keepdim=True)
    return 1.0 / torch.maximum(power, floor.clamp_min(torch.finfo(power.dtype).tiny))


class FFTPreconditioner:
    """``M^-1 r = irfft2(rfft2(r) / (|K|^2 + eps |R|^2))`` at ``r``'s size (circulant model).

    Parameters
    ----------
    psf : Tensor (..., kh, kw); size : (H, W) of the unknowns; eps : float > 0;
    reg : None, "laplacian" or kernel; dtype : float32/float64
    """

    name = "fft"

    def __init__(self, psf, size, eps, reg, dtype):
        self.size = tuple(size)
        k2 = spectral.psf_spectrum(psf.to(dtype), self.size).abs().square()
        r2 = spectral.reg_power(reg, self.size, dtype, psf.device)
        self.inv = _safe_inverse(k2 + eps * (r2 if r2 is not None else 1.0))

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(r) * self.inv, s=self.size)


class DCTPreconditioner:
    """``M^-1 r = idct2(dct2(r) / (|K(pi k/H, pi l/W)|^2 + eps |R|^2))`` (Neumann model).

    ``|K|^2`` on the DCT grid is the exact DCT spectrum of ``A_s^T A_s`` for
    the symmetric-boundary blur by ``psf (*) flip(psf)``, so the
    preconditioner is exact for a symmetric PSF with ``boundary="symmetric"``
    and close for the other smooth extensions (reflect, replicate).
    """

    name = "dct"

    def __init__(self, psf, size, eps, reg, dtype):
        self.size = tuple(size)
        k2 = dct_eigenvalues(psf.to(dtype), self.size).abs().square()
        r2 = _reg_dct_power(reg, self.size, dtype, psf.device)
        self.inv = _safe_inverse(k2 + eps * (r2 if r2 is not None else 1.0))
        self._filter = _DCTFilter(self.inv)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        # Eager CPU without autograd: as in dct_deconvolve.
        route = _eager_dct(r, self.inv)
        if route is not None:
            return _eager_dct_solve(route, r, self._filter)
        return idct2(dct2(r) * self.inv)


# ---------------------------------------------------------------------------
# CGLS
# ---------------------------------------------------------------------------

def cgls(op, y: torch.Tensor, eps: float = 0.0, reg_op=None,
         precond: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, tol: float = 1e-6,
         max_iter: int = DEFAULT_MAX_ITER, x0: Optional[torch.Tensor] = None,
         warn: bool = True) -> Tuple[torch.Tensor, SolveInfo]:
    """Solve ``min_x ||A x - y||^2 + eps ||R x||^2`` by (preconditioned) CG on
    the normal equations ``(A^T A + eps R^T R) x = A^T y``.

    Every independent system (the dims ``op.sample_dims`` of one image or
    sample) gets its own step lengths and stops on its own; a stopped system
    keeps its iterate while the others go on. ``eps = 0`` without a
    preconditioner and ``x0 = None`` is CGLS, whose iterates stay in the
    range of ``A^T``: it converges to the minimum-norm least-squares solution
    ``A^+ y`` (a preconditioner or a warm start would lose that property).

    Parameters
    ----------
    op : object with ``matvec`` (x -> A x), ``rmatvec`` (y -> A^T y) and
        ``sample_dims`` (the dims one system spans, e.g. ``(-2, -1)``)
    y : Tensor, the observation (the op's output shape), computation dtype
    eps : float >= 0
    reg_op : op for ``R`` (None: identity)
    precond : callable ``r -> M^-1 r`` (symmetric positive definite), optional
    tol : float > 0; stop when ``||r|| <= tol ||A^T y||``, with
        ``r = A^T (y - A x) - eps R^T R x`` the normal-equations residual
    max_iter : int >= 1
    x0 : initial guess (only meaningful for ``eps > 0``), optional
    warn : bool; a RuntimeWarning with the residual reached when a system did
        not converge

    Returns
    -------
    x : Tensor (the op's input shape); for each system, the iterate of
        smallest residual seen (never NaN unless ``y`` holds NaN/inf)
    info : SolveInfo, per-system iterations, residual, converged flags
    """
    dims = op.sample_dims

    def dot(a, b):
        return (a * b).sum(dim=dims, keepdim=True)

    def normal_residual(s, x, rx):
        r = op.rmatvec(s)
        if eps:
            r = r - eps * (x if reg_op is None else reg_op.rmatvec(rx))
        return r

    b = op.rmatvec(y)
    bnorm = dot(b, b).sqrt()
    bsafe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    if x0 is None:
        x = torch.zeros_like(b)
        s = y.clone()
        rx = None if reg_op is None else reg_op.matvec(x)
        r = b.clone()
    else:
        x = x0.to(b.dtype).clone()
        s = y - op.matvec(x)
        rx = None if reg_op is None else reg_op.matvec(x)
        r = normal_residual(s, x, rx)
    res = dot(r, r).sqrt() / bsafe
    res = torch.where(bnorm > 0, res, torch.zeros_like(res))
    best_x, best_res = x.clone(), res.clone()
    active = (res > tol) & torch.isfinite(res)
    iters = torch.zeros_like(res, dtype=torch.int64)

    z = precond(r) if precond is not None else r
    p = z.clone()
    gamma = dot(r, z)
    for _ in range(int(max_iter)):
        if not bool(active.any()):
            break
        q = op.matvec(p)
        delta = dot(q, q)
        rp = None
        if eps:
            if reg_op is None:
                delta = delta + eps * dot(p, p)
            else:
                rp = reg_op.matvec(p)
                delta = delta + eps * dot(rp, rp)
        # A breakdown (delta or gamma <= 0: exact convergence, or an M that
        # rounding made indefinite) stops that system instead of dividing by 0.
        ok = active & (delta > 0) & (gamma > 0)
        alpha = torch.where(ok, gamma / torch.where(ok, delta, torch.ones_like(delta)),
                            torch.zeros_like(delta))
        x = x + alpha * p
        s = s - alpha * q
        if rp is not None:
            rx = rx + alpha * rp
        r = normal_residual(s, x, rx)
        new_res = dot(r, r).sqrt() / bsafe
        iters = iters + ok.to(iters.dtype)
        res = torch.where(ok, new_res, res)
        better = ok & (res < best_res)
        best_x = torch.where(better, x, best_x)
        best_res = torch.where(better, res, best_res)
        active = ok & (res > tol) & torch.isfinite(res)
        z = precond(r) if precond is not None else r
        gamma_new = dot(r, z)
        beta = torch.where(active & (gamma > 0), gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        p = z + beta * p
        gamma = gamma_new
    # A^T y = 0: the solution is 0 (for eps > 0 and for the minimum norm alike).
    best_x = torch.where(bnorm > 0, best_x, torch.zeros_like(best_x))
    converged = best_res <= tol
    info = SolveInfo(iterations=_squeeze(iters, dims), residual=_squeeze(best_res, dims),
                     converged=_squeeze(converged, dims), solver="cg",
                     precond=getattr(precond, "name", None if precond is None else "custom"))
    if warn and not bool(converged.all()):
        bad = int((~converged).sum())
        worst = float(best_res.max())
        warnings.warn(f"deconv_ext: conjugate gradients did not reach tol={tol:g} in "
                      f"max_iter={int(max_iter)} iterations for {bad} of {converged.numel()} "
                      f"system(s); relative residual reached {worst:.3g}. Returning the best "
                      f"iterate; raise max_iter or eps, or loosen tol", RuntimeWarning,
                      stacklevel=3)
    return best_x, info


def _squeeze(t: torch.Tensor, dims) -> torch.Tensor:
    """Drop the (trailing, size-1) reduced dims of a per-system scalar."""
    for _ in dims:
        t = t.squeeze(-1)
    return t


def pcg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, sample_dims,
        precond: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, tol: float = 1e-6,
        max_iter: int = DEFAULT_MAX_ITER) -> torch.Tensor:
    """Plain preconditioned CG for ``N z = b`` with ``N`` SPD, batched like :func:`cgls`.

    Used for the backward pass of the CG solve (``N`` is the normal matrix,
    symmetric, so the gradient needs one more solve with it). Returns the
    best iterate; no warning (the forward solve already reported).
    """

    def dot(a, c):
        return (a * c).sum(dim=sample_dims, keepdim=True)

    z = torch.zeros_like(b)
    r = b.clone()
    bnorm = dot(b, b).sqrt()
    bsafe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    w = precond(r) if precond is not None else r
    p = w.clone()
    gamma = dot(r, w)
    active = bnorm > 0
    for _ in range(int(max_iter)):
        if not bool(active.any()):
            break
        q = matvec(p)
        delta = dot(p, q)
        ok = active & (delta > 0) & (gamma > 0)
        alpha = torch.where(ok, gamma / torch.where(ok, delta, torch.ones_like(delta)),
                            torch.zeros_like(delta))
        z = z + alpha * p
        r = r - alpha * q
        active = ok & (dot(r, r).sqrt() / bsafe > tol)
        w = precond(r) if precond is not None else r
        gamma_new = dot(r, w)
        beta = torch.where(active & (gamma > 0), gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        p = w + beta * p
        gamma = gamma_new
    return z


class _CGSolve(torch.autograd.Function):
    """``x = (A^T A + eps R^T R)^-1 A^T y`` with the gradient w.r.t. ``y``.

    ``dL/dy = A N^-1 dL/dx`` (``N`` symmetric): one more CG solve in the
    backward pass, to the same tolerance.
    """

    @staticmethod
    def forward(ctx, y, problem):
        x, info = problem.solve(y.detach())
        ctx.problem = problem
        ctx.info = info
        return x

    @staticmethod
    def backward(ctx, g):
        pb = ctx.problem
        z = pcg(pb.normal_matvec, g, pb.op.sample_dims, pb.precond, pb.tol, pb.max_iter)
        return pb.op.matvec(z), None


class _Problem:
    """One Tikhonov least-squares problem: operator, regulariser, preconditioner, stopping rule."""

    def __init__(self, op, eps, reg_op, precond, tol, max_iter, x0_fn=None):
        self.op, self.eps, self.reg_op, self.precond = op, eps, reg_op, precond
        self.tol, self.max_iter, self.x0_fn = tol, max_iter, x0_fn

    def normal_matvec(self, p):
        out = self.op.rmatvec(self.op.matvec(p))
        if self.eps:
            out = out + self.eps * (p if self.reg_op is None
                                    else self.reg_op.rmatvec(self.reg_op.matvec(p)))
        return out

    def solve(self, y):
        with torch.no_grad():
            x0 = self.x0_fn(y) if self.x0_fn is not None else None
            return cgls(self.op, y, self.eps, self.reg_op, self.precond, self.tol, self.max_iter,
                        x0=x0)

    def run(self, y):
        """(x, info), differentiable w.r.t. ``y`` when autograd records."""
        if torch.is_grad_enabled() and y.requires_grad:
            x = _CGSolve.apply(y, self)
            return x, x.grad_fn.info  # the Function's ctx is the grad_fn
        return self.solve(y)


def auto_precond(boundary: str, psf: torch.Tensor) -> Optional[str]:
    """The preconditioner that ``precond="auto"`` picks (for ``eps > 0``).

    Measured at 512^2, eps = 1e-3, tol = 1e-6 (benchmarks/bench_boundary.py),
    CG iterations without / with DCT / with FFT preconditioner:

    * circular: the FFT preconditioner is the exact inverse (1 iteration);
    * symmetric + axis-symmetric PSF: the DCT one is exact (1 iteration);
    * zeros + axis-symmetric PSF: DCT cuts ~110 iterations to ~20;
      zeros + non-symmetric (motion) PSF: FFT cuts ~136 to ~91, DCT fails;
    * reflect, replicate, and symmetric with a non-symmetric (motion) PSF:
      both transforms *hurt* (up to 3x more iterations, or no convergence):
      with a small eps the boundary rows that the transform gets wrong are
      a perturbation of rank ~ perimeter x PSF size whose eigenvalues are
      far above eps, so ``M^-1 N`` gets thousands of outliers, while plain
      CG already converges in ~sqrt(1 / eps) log(1 / tol) iterations. No
      preconditioner there.
    """
    if boundary == "circular":
        return "fft"
    if boundary in ("symmetric", "zeros") and is_axis_symmetric(psf):
        return "dct"
    if boundary == "zeros":
        return "fft"
    return None


def _make_precond(name: Optional[str], psf, size, eps, reg, dtype):
    if name is None:
        return None
    cls = DCTPreconditioner if name == "dct" else FFTPreconditioner
    return cls(psf, size, eps, reg, dtype)


def _residual_info(op, y, x, eps, reg_op, solver: str) -> SolveInfo:
    """SolveInfo of a direct solve: 0 iterations, its normal-equations residual."""
    dims = op.sample_dims
    b = op.rmatvec(y)
    r = op.rmatvec(y - op.matvec(x))
    if eps:
        r = r - eps * (x if reg_op is None else reg_op.rmatvec(reg_op.matvec(x)))
    bn = (b * b).sum(dim=dims, keepdim=True).sqrt()
    res = (r * r).sum(dim=dims, keepdim=True).sqrt() / torch.where(bn > 0, bn, torch.ones_like(bn))
    res = _squeeze(torch.where(bn > 0, res, torch.zeros_like(res)), dims)
    return SolveInfo(iterations=torch.zeros_like(res, dtype=torch.int64), residual=res,
                     converged=torch.ones_like(res, dtype=torch.bool), solver=solver)


def _reg_kernel(reg, dtype, device):
    if reg is None:
        return None
    if isinstance(reg, str):
        return torch.tensor(spectral.LAPLACIAN, dtype=dtype, device=device)
    return reg.to(dtype=dtype, device=device)


def deconvolve_boundary(image: torch.Tensor, psf: torch.Tensor, eps, method: str, reg,
                        boundary: str, rcond, solver: str, tol: float, max_iter: Optional[int],
                        taper: Optional[int], precond: str, return_info: bool):
    """``deconvolve`` for a non-circular boundary or a non-default solver (validated inputs).

    * ``solver="fft"``: the padded fast path (``DeconvPlan(boundary=...)``);
    * ``solver="dct"``: :func:`dct_deconvolve` (``boundary="symmetric"`` only);
    * ``solver="cg"``: :func:`cgls` on ``A_b`` (:class:`~deconv_ext.boundary.ConvOperator`),
      preconditioned per ``precond``, warm-started from the padded fast
      solve when ``eps > 0``.

    Returns ``x`` or ``(x, SolveInfo)``.
    """
    from .boundary import ConvOperator
    from .plan import DeconvPlan

    dtype = spectral.compute_dtype(image.dtype)
    size = tuple(image.shape[-2:])
    psf_c = psf.to(dtype)
    eps_eff = 0.0 if method == "pinv" else eps
    need_op = solver == "cg" or return_info
    op = ConvOperator(psf_c, size, boundary, dtype) if need_op else None
    reg_k = _reg_kernel(reg, dtype, image.device)
    reg_op = ConvOperator(reg_k, size, boundary, dtype) if need_op and reg_k is not None else None
    info = None
    if solver == "fft":
        # Repeated calls with the same small PSF reuse the padded plan.
        plan = plan_cache.cached_plan(
            psf, ("padded", size, dtype, eps, method, reg, rcond, boundary, taper),
            lambda: DeconvPlan(psf_c, size, eps=eps, method=method, reg=reg, rcond=rcond,
                               dtype=dtype, boundary=boundary, taper=taper))
        x = plan(image)
    elif solver == "dct":
        x = dct_deconvolve(image.to(dtype), psf_c, eps=eps_eff, method=method, reg=reg,
                           rcond=rcond)
    else:
        pname = auto_precond(boundary, psf_c) if precond == "auto" else (None if precond == "none" else precond)
        # eps = 0 asks for the minimum-norm least-squares solution: only plain
        # CGLS from 0 converges to it (see cgls), so no preconditioner then.
        if eps_eff == 0:
            pname = None
        pc = _make_precond(pname, psf_c, size, eps_eff, reg, dtype)
        x0_fn = None
        if eps_eff > 0 and boundary != "circular":
            # The padded fast solve is close to the answer away from the edges:
            # starting there saves iterations (the solution is unique for eps > 0).
            warm = DeconvPlan(psf_c, size, eps=eps_eff, method="tikhonov", reg=reg, rcond=rcond,
                              dtype=dtype, boundary=boundary)
            x0_fn = warm
        problem = _Problem(op, eps_eff, reg_op, pc, tol,
                           DEFAULT_MAX_ITER if max_iter is None else max_iter, x0_fn)
        x, info = problem.run(image.to(dtype))
    x = x.to(image.dtype)
    if not return_info:
        return x
    if info is None:
        with torch.no_grad():
            info = _residual_info(op, image.to(dtype), x.to(dtype), eps_eff, reg_op, solver)
    return x, info


def conv2d_exact(output: torch.Tensor, weight: torch.Tensor, bias, groups: int, dilation,
                 padding: str, padding_mode: str, eps: float, rcond, solver: Optional[str],
                 tol: float, max_iter: Optional[int], precond: str, return_info: bool):
    """``conv2d_pinv`` for "valid", non-circular ``padding_mode`` or ``solver="cg"``.

    Forward model (stride 1, ``F.conv2d`` semantics)::

        padding="same":  output = F.conv2d(pad_m(input), weight, bias, dilation=d, groups=g)
        padding="valid": output = F.conv2d(input, weight, bias, dilation=d, groups=g)

    with ``pad_m`` the "same" padding (total ``d (k - 1)``, smaller half
    first) by ``padding_mode`` m; "valid" inputs are ``d (k - 1)`` larger than
    the output. ``solver="cg"`` (default here) solves
    ``min ||A x - (output - bias)||^2 + eps ||x||^2`` exactly (``eps = 0``:
    minimum-norm least squares by plain CGLS): depthwise layers by FFT
    (:class:`~deconv_ext.boundary.ConvOperator`, per-channel systems),
    other layers with ``F.conv2d`` / ``F.conv_transpose2d``
    (:class:`~deconv_ext.boundary.Conv2dLayerOperator`, one system per
    sample). ``solver="fft"``: the padded fast approximation, depthwise
    "same" layers only.
    """
    from . import _validate as V
    from .boundary import Conv2dLayerOperator, ConvOperator
    from .plan import DeconvPlan

    V.choice("padding", padding, V.PADDINGS)
    V.choice("padding_mode", padding_mode, V.PADDING_MODES)
    solver = "cg" if solver is None else V.choice("solver", solver, ("fft", "cg"))
    V.tol(tol)
    V.max_iter(max_iter)
    V.choice("precond", precond, PRECONDS)
    dil = V.pair("dilation", dilation)
    eps = V.eps(eps, tuple(output.shape[-2:]))
    if isinstance(eps, torch.Tensor):
        raise TypeError("conv2d_pinv takes a scalar eps")
    V.rcond(rcond)
    c_out, c_in_g, kh, kw = weight.shape
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c_out % groups:
        raise ValueError(f"groups={groups!r} is not valid for weight of shape {tuple(weight.shape)}; "
                         f"expected a positive int dividing C_out={c_out}")
    if weight.dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"weight has dtype {weight.dtype}; expected a real floating dtype")
    Dh, Dw = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
    H, W = output.shape[-2:]
    if padding == "same" and (Dh > H or Dw > W):
        raise ValueError(f"the dilated kernel ({Dh}x{Dw}) is larger than the output ({H}x{W})")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (c_out,)):
        raise ValueError(f"bias must be a tensor of shape ({c_out},), got "
                         f"{getattr(bias, 'shape', bias)}")
    dtype = spectral.compute_dtype(output.dtype)
    batched = output.dim() == 4
    y = (output if batched else output.unsqueeze(0)).to(dtype)
    if bias is not None:
        y = y - bias.to(dtype)[:, None, None]
    depthwise = groups == c_out and c_in_g == 1
    psf = spectral.conv2d_kernel_as_psf(weight[:, 0].to(dtype), dil) if depthwise else None
    boundary = "valid" if padding == "valid" else padding_mode
    if solver == "fft":
        if not depthwise or padding == "valid":
            raise ValueError("solver='fft' for conv2d_pinv with a non-circular padding_mode is the "
                             "padded fast path of depthwise 'same' layers only; use solver='cg'")
        plan = DeconvPlan(psf, (H, W), eps=eps, method="tikhonov", rcond=rcond, dtype=dtype,
                          boundary=padding_mode)
        x = plan(y)
        info = _residual_info(ConvOperator(psf, (H, W), boundary, dtype), y, x, eps, None,
                              "fft") if return_info else None
    else:
        if depthwise:
            op = ConvOperator(psf, (H, W), boundary, dtype)
            pname = (auto_precond(boundary, psf) if precond == "auto"
                     else (None if precond == "none" else precond))
        else:
            op = Conv2dLayerOperator(weight, (H, W), groups, dil, padding, padding_mode, dtype)
            if precond not in ("auto", "none"):
                raise ValueError(f"precond={precond!r} needs a depthwise layer (the transform "
                                 f"preconditioners are per channel); use 'auto' or 'none'")
            pname = None
        if eps == 0:
            pname = None  # minimum norm: plain CGLS from 0 (see cgls)
        pc = _make_precond(pname, psf, op.in_size, eps, None, dtype)
        problem = _Problem(op, eps, None, pc, tol,
                           DEFAULT_MAX_ITER if max_iter is None else max_iter)
        x, info = problem.run(y)
    if not batched:
        x = x.squeeze(0)
        if info is not None:
            info.iterations, info.residual, info.converged = (
                t.squeeze(0) for t in (info.iterations, info.residual, info.converged))
    x = x.to(output.dtype)
    return (x, info) if return_info else x
