"""The spectra a plan holds: transfer functions, regulariser powers, thresholds.

Half spectra (``rfft2`` layout). The complex maths runs inside ops of the
execution layer, so that compiled graphs hold no complex intermediates.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import execution
from ..maths import spectral

__all__ = ["psf_spectrum", "reg_power", "pinv_threshold", "power"]


def psf_spectrum(psf: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Half-spectrum transfer function of a PSF in the image convention.

    Parameters
    ----------
    psf : Tensor (..., kh, kw), real, kh <= H and kw <= W
    size : (H, W)

    Returns
    -------
    Tensor (..., H, W // 2 + 1), complex: ``rfft2`` of the PSF zero-padded to
    (H, W) and rolled so that its origin ``(kh // 2, kw // 2)`` sits at (0, 0).
    Without the roll the result is shifted by the PSF's half-size (the seed
    article's bug).
    """
    return execution.kernel_spectrum(psf, size[0], size[1])


def reg_power(reg: Union[None, str, torch.Tensor], size: Tuple[int, int], dtype: torch.dtype,
              device=None) -> Optional[torch.Tensor]:
    """``|R(w)|^2`` for ``reg``: None -> None (identity), "laplacian", or a kernel tensor."""
    if reg is None:
        return None
    if isinstance(reg, str):
        return spectral.laplacian_power(size, dtype, device)
    return power(psf_spectrum(reg.to(dtype=dtype, device=device), size))


def pinv_threshold(K: torch.Tensor, rcond: float) -> torch.Tensor:
    """``(rcond * sigma_max)^2``, the threshold on ``|K|^2``, one per sample.

    ``sigma_max`` is the largest ``|K|`` over the frequencies and channels of
    one sample's operator, dims (-3, -2, -1) of the spectrum: what
    ``torch.linalg.pinv(A, rtol=rcond)`` uses for the dense matrix ``A``. The
    half spectrum holds the maximum (``|K(-w)| = |K(w)|``).

    Returns
    -------
    Tensor (..., 1, 1, 1) (or (1, 1) for a 2D spectrum), real.
    """
    dims = tuple(range(-min(K.dim(), 3), 0))
    return (rcond * rcond) * power(K).amax(dim=dims, keepdim=True)


def power(K: torch.Tensor) -> torch.Tensor:
    """``|K|^2`` of a complex tensor (an op: Inductor generates no complex code)."""
    return execution.spectral_power(K)
