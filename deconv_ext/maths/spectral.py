"""Spectral maths shared by every layer: dtypes, thresholds, regularisers, FFT sizes.

Pure torch, no compute back end: the reference imports this module too.
Spectra here are half spectra (``rfft2`` layout, last dim ``W // 2 + 1``):
the images are real, so half of the full spectrum is redundant.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "compute_dtype",
    "default_rcond",
    "half_width",
    "conv2d_kernel_as_psf",
    "laplacian_power",
    "symmetrised_eps",
    "next_fast_size",
]

LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32 (no half FFT on CPU, bf16 nowhere)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def scale_exponent(t: torch.Tensor) -> int:
    """``k`` with ``2^k max|t|`` in [0.5, 1): the exact power of two that brings ``t`` near 1.

    0 for an empty, all-zero or non-finite ``t``. Reads one value (a host
    sync). Scaling by ``2^k`` is exact in floating point, so a linear solve
    done on scaled operands and scaled back gives the same result, without
    the overflow or underflow of squares at extreme scales.
    """
    if t.numel() == 0:
        return 0
    amax = float(t.detach().abs().amax())
    if not 0.0 < amax < math.inf:
        return 0
    return -math.frexp(amax)[1]


def default_rcond(size: Sequence[int], dtype: torch.dtype) -> float:
    """``10 * max(H, W) * finfo(dtype).eps``.

    Relative to sigma_max, like ``torch.linalg.pinv``'s ``rtol``; torch's own
    dense default ``max(m, n) * eps`` would be ~0.03 at 512^2 in float32 and
    zero out real signal.
    """
    return 10.0 * max(size) * torch.finfo(compute_dtype(dtype)).eps


def half_width(w: int) -> int:
    """Last dim of an ``rfft2`` spectrum of width ``w``."""
    return w // 2 + 1


def conv2d_kernel_as_psf(weight: torch.Tensor, dilation: Tuple[int, int]) -> torch.Tensor:
    """The image-convention PSF equivalent to an ``F.conv2d`` kernel.

    ``F.conv2d`` with circular "same" padding (left ``(D - 1) // 2`` of the
    dilated size ``D``) is a cross-correlation; it equals the true convolution
    with the flipped dilated kernel whose origin is ``D // 2`` -- exactly the
    PSF origin of the image convention, for odd and even ``D``.

    Parameters
    ----------
    weight : Tensor (..., kh, kw)
    dilation : (dh, dw)

    Returns
    -------
    Tensor (..., dh (kh - 1) + 1, dw (kw - 1) + 1)
    """
    dh, dw = dilation
    kh, kw = weight.shape[-2:]
    if (dh, dw) != (1, 1):
        dilated = weight.new_zeros(*weight.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dilated[..., ::dh, ::dw] = weight
        weight = dilated
    return torch.flip(weight, dims=(-2, -1))


def laplacian_power(size: Tuple[int, int], dtype: torch.dtype, device=None) -> torch.Tensor:
    """``|R(w)|^2`` of the 3x3 discrete Laplacian, half spectrum (H, W // 2 + 1).

    Closed form ``(4 - 2 cos(2 pi u / H) - 2 cos(2 pi v / W))^2``: real and
    exactly zero at DC only.
    """
    H, W = size
    u = torch.arange(H, dtype=torch.float64, device=device)
    v = torch.arange(half_width(W), dtype=torch.float64, device=device)
    lap = 4 - 2 * torch.cos(2 * math.pi * u / H)[:, None] - 2 * torch.cos(2 * math.pi * v / W)[None, :]
    return (lap * lap).to(dtype)


def symmetrised_eps(eps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Per-frequency eps in full ``fft2`` layout -> symmetrised half spectrum.

    ``(e(w) + e(-w)) / 2`` makes the filter Hermitian, so the result is real
    and the half spectrum is enough.

    Parameters
    ----------
    eps : Tensor broadcastable to (..., H, W)

    Returns
    -------
    Tensor (..., H, W // 2 + 1)
    """
    H, W = size
    full = eps.expand(*eps.shape[:-2], H, W) if eps.dim() >= 2 else eps.expand(H, W)
    # e(-w) on the fft grid: index (-u mod H, -v mod W) = flip, then roll by one.
    neg = torch.roll(torch.flip(full, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return (0.5 * (full + neg))[..., : half_width(W)]


@lru_cache(maxsize=4096)
def next_fast_size(n: int) -> int:
    """Smallest even m >= n whose prime factors are all in {2, 3, 5, 7} (1 for n <= 1).

    Even: a real FFT of odd length is markedly slower (measured here with
    torch's MKL FFT: a 525x525 round trip took 1.5-1.9x as long as 540x540,
    float32 and float64), and padding one more pixel costs nothing.
    """
    if n <= 1:
        return 1
    if n > 1 << 40:  # the loop below would run for minutes; no FFT of that size exists
        raise ValueError(f"FFT size {n} is not valid; expected at most 2**40")
    m = int(n) + (int(n) % 2)
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2
