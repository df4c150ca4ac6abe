"""The direct, exact solve of the symmetric-boundary blur by the DCT-II.

For a PSF symmetric in each axis, the symmetric-boundary (Neumann) blur is
diagonalised by the orthonormal 2D DCT-II: one transform each way and a
per-coefficient filter (cached per PSF content).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import execution
from ..maths import spectral
from ..plans import cache
from ..plans.spectra import psf_spectrum

__all__ = ["dct_eigenvalues", "is_axis_symmetric", "reg_dct_power", "dct_deconvolve"]


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
    return psf_spectrum(psf, (2 * H, 2 * W))[..., :H, :W]


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


def reg_dct_power(reg, size, dtype, device) -> Optional[torch.Tensor]:
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
    filt = cache.cached_plan(
        psf, ("dct_filter", size, dtype, str(image.device), method, eps_key, reg_key, float(rcond)),
        lambda: _dct_filter(psf.to(dtype=dtype, device=image.device), size, eps, method, reg,
                            rcond, dtype))
    return execution.dct_solve(image, filt)


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
    r2 = reg_dct_power(reg, size, dtype, psf.device)
    P = eps * (r2 if r2 is not None else one)
    den = lam * lam + P
    return torch.where(P > 0, lam / torch.where(P > 0, den, one), pinv)
