"""Preconditioners of the normal equations: ``M^-1 r`` with ``M = A_c^T A_c + eps R_c^T R_c``.

``A_c`` is the circulant (FFT) or Neumann (DCT-II) approximation of the
non-circular blur ``A``; :func:`auto_precond` says which one helps where.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import execution
from ..plans.spectra import psf_spectrum, reg_power
from .dct import dct_eigenvalues, is_axis_symmetric, reg_dct_power

__all__ = ["PRECONDS", "FFTPreconditioner", "DCTPreconditioner", "auto_precond", "make_precond"]

PRECONDS = ("auto", "dct", "fft", "none")


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
        k2 = psf_spectrum(psf.to(dtype), self.size).abs().square()
        r2 = reg_power(reg, self.size, dtype, psf.device)
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
        r2 = reg_dct_power(reg, self.size, dtype, psf.device)
        self.inv = _safe_inverse(k2 + eps * (r2 if r2 is not None else 1.0))

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        return execution.dct_solve(r, self.inv)


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


def make_precond(name: Optional[str], psf, size, eps, reg, dtype):
    if name is None:
        return None
    cls = DCTPreconditioner if name == "dct" else FFTPreconditioner
    return cls(psf, size, eps, reg, dtype)
