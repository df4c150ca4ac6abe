"""Estimates of the standard deviation of additive white Gaussian noise.

Two estimators, both per plane and pure torch:

* :func:`estimate_noise` works on the image: the median absolute value of the
  finest-scale diagonal Daubechies-2 wavelet coefficients (Donoho & Johnstone
  1994), the estimator of ``skimage.restoration.estimate_sigma``.
* :func:`estimate_noise_spectrum` works on a power spectrum ``|Y|^2`` and
  the blur's ``|K|^2``: the median power at the frequencies the blur damps
  most, where the observation is mostly noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["estimate_noise", "estimate_noise_spectrum", "damped_indices", "noise_from_power",
           "median_nonzero"]

# Daubechies-2 decomposition high-pass (PyWavelets' ``Wavelet("db2").dec_hi``).
_S3 = math.sqrt(3.0)
_DB2_HI = tuple(v / (4 * math.sqrt(2.0)) for v in (-(1 + _S3), 3 + _S3, -(3 - _S3), 1 - _S3))
# 75th percentile of the standard normal: median |N(0, s^2)| = s * _MAD_TO_STD.
_MAD_TO_STD = 0.6744897501960817


def median_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Median of the nonzero entries of each row of ``x`` (..., n), NaN-free.

    The mean of the two middle values for an even count (``numpy.median``);
    0 for a row without nonzero entries.
    """
    v = torch.where(x != 0, x, torch.full_like(x, float("nan")))
    s = torch.sort(v, dim=-1).values  # NaNs sort last
    n = (x != 0).sum(dim=-1, keepdim=True)
    lo = torch.gather(s, -1, ((n - 1) // 2).clamp(min=0))
    hi = torch.gather(s, -1, (n // 2).clamp(max=x.shape[-1] - 1))
    med = 0.5 * (lo + hi)
    return torch.where(n > 0, med, torch.zeros_like(med)).squeeze(-1)


def _symmetric_pad(x: torch.Tensor, p: int, dim: int) -> torch.Tensor:
    """Half-sample symmetric extension by ``p`` on both ends of ``dim`` (``cba|abc|cba``)."""
    n = x.shape[dim]
    i = torch.arange(-p, n + p, device=x.device)
    period = 2 * n
    m = torch.remainder(i, period)
    idx = torch.where(m < n, m, period - 1 - m)
    return x.index_select(dim, idx)


def _db2_detail(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Finest-scale db2 detail coefficients along ``dim``, PyWavelets' "symmetric" mode.

    ``pywt.dwt(x, "db2")[1]``: extend by 3 samples each side, convolve with the
    high-pass (a valid convolution) and keep odd positions, ``floor((n + 3) / 2)`` of them.
    """
    n = x.shape[dim]
    xe = _symmetric_pad(x, 3, dim).movedim(dim, -1)
    lead = xe.shape[:-1]
    flat = xe.reshape(-1, 1, xe.shape[-1])
    # conv1d is a correlation: flip the filter for a convolution.
    h = torch.tensor(_DB2_HI[::-1], dtype=x.dtype, device=x.device).view(1, 1, 4)
    c = F.conv1d(flat, h)[..., 1::2][..., : (n + 3) // 2]
    return c.reshape(*lead, c.shape[-1]).movedim(-1, dim)


def estimate_noise(image: torch.Tensor) -> torch.Tensor:
    """Robust per-plane estimate of the standard deviation of additive white noise.

    Parameters
    ----------
    image : Tensor (..., H, W), real floating, H, W >= 2

    Returns
    -------
    Tensor (...), float64: one sigma per plane.

    Notes
    -----
    ``sigma = median(|d|) / 0.6745`` over the nonzero finest-scale diagonal
    ("dd") db2 wavelet coefficients ``d`` of the plane, the MAD estimator of
    Donoho & Johnstone (1994), section 4.2: the finest diagonal band of a
    piecewise-smooth image is mostly noise, and the median ignores the few
    large coefficients of edges. This is
    ``skimage.restoration.estimate_sigma(plane)`` (PyWavelets' "symmetric"
    extension), computed in float64 with ``torch``. It assumes white,
    Gaussian, signal-independent noise; texture at the pixel scale biases it
    upwards, a blurred observation less so (the blur removes that texture).

    References
    ----------
    D. L. Donoho and I. M. Johnstone, "Ideal spatial adaptation by wavelet
    shrinkage", Biometrika 81(3), 425-455, 1994.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not image.dtype.is_floating_point or image.dim() < 2:
        raise ValueError(f"image has dtype {image.dtype} and shape {tuple(image.shape)}; expected "
                         f"a real floating tensor (..., H, W)")
    if min(image.shape[-2:]) < 2:
        raise ValueError(f"image has shape {tuple(image.shape)}; expected H, W >= 2")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or infinite values")
    x = image.to(torch.float64)
    d = _db2_detail(_db2_detail(x, -2), -1)
    return median_nonzero(d.abs().flatten(-2)) / _MAD_TO_STD


def damped_indices(k2: torch.Tensor, fraction: float = 0.05, dims: int = 2) -> torch.Tensor:
    """Indices of the ``fraction`` of frequencies the blur damps most, per plane.

    Parameters
    ----------
    k2 : Tensor (..., *F), ``|K|^2`` over ``dims`` trailing frequency dims
    fraction : float in (0, 1]
    dims : int, trailing dims flattened into one frequency axis

    Returns
    -------
    Tensor (..., m) int64 into the flattened frequency axis, ``m = round(fraction F)``.
    """
    flat = k2.flatten(-dims) if dims > 1 else k2
    m = max(1, int(round(fraction * flat.shape[-1])))
    return torch.topk(flat.to(torch.float64), m, dim=-1, largest=False).indices


def noise_from_power(y2: torch.Tensor, idx: torch.Tensor, size, dims: int = 2,
                     group: int = 0) -> torch.Tensor:
    """Noise sigma from the power ``y2`` at the damped frequencies ``idx``.

    ``y2`` (..., *F) flattened over its ``dims`` trailing dims (or the complex
    spectrum ``Y`` itself, whose power is taken at ``idx``); ``idx`` from
    :func:`damped_indices` (broadcast to ``y2``'s leading dims); ``group``
    more leading dims share one estimate (their powers pooled). Returns
    ``sqrt(median / (ln 2 H W))``, float64, shape ``y2.shape[:-dims - group]``.
    """
    H, W = size
    flat = y2.flatten(-dims) if dims > 1 else y2
    # Gather first: the median reads a twentieth of the entries.
    sel = torch.gather(flat, -1, idx.expand(*flat.shape[:-1], idx.shape[-1]))
    sel = (sel.real ** 2 + sel.imag ** 2 if sel.is_complex() else sel).to(torch.float64)
    if group:
        sel = sel.flatten(-1 - group)
    med = torch.median(sel, dim=-1).values
    return torch.sqrt(med / (math.log(2.0) * H * W))


def estimate_noise_spectrum(k2: torch.Tensor, y2: torch.Tensor, size, fraction: float = 0.05,
                            dims: int = 2) -> torch.Tensor:
    """Noise sigma from a half power spectrum, per plane (or per group of ``dims`` dims).

    Parameters
    ----------
    k2 : Tensor broadcastable to y2, ``|K|^2`` of the blur
    y2 : Tensor (..., H, W // 2 + 1), ``|rfft2(y)|^2`` (unnormalised FFT)
    size : (H, W), the image size
    fraction : float in (0, 1], share of the frequencies (those with the
        smallest ``|K|^2``) the median is taken over
    dims : 2 (one sigma per plane) or 3 (one per sample, dims -3.. grouped)

    Returns
    -------
    Tensor (...) float64.

    Notes
    -----
    For white noise of variance ``s^2``, ``|N(w)|^2`` is exponential with mean
    ``H W s^2`` at every frequency (chi-square with two degrees of freedom),
    whose median is ``ln 2 H W s^2``. Where the blur damps the signal most,
    ``|Y|^2 ~ |N|^2``, so ``s^2 = median(|Y|^2) / (ln 2 H W)`` over those
    frequencies. Signal left there biases it upwards; prefer
    :func:`estimate_noise` when the image is at hand.
    """
    k2 = k2.to(torch.float64).expand_as(y2)
    return noise_from_power(y2, damped_indices(k2, fraction, dims), size, dims)
