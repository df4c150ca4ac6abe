"""Point-spread-function constructors: gaussian, box, motion, disk.

Every PSF returned here is a real 2D tensor ``(kh, kw)`` that sums to 1 (a
blur conserves the image's total intensity) and follows the library's image
convention: its origin is the pixel ``(kh // 2, kw // 2)``, which for the odd
sizes chosen by default is the centre. Pass one to
:func:`deconv_ext.deconvolve` / :func:`deconv_ext.convolve`.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

__all__ = ["gaussian", "box", "motion", "disk", "MAX_SIDE"]

#: Largest kernel side a constructor builds (a 8193 x 8193 float64 kernel is
#: 0.5 GB; a larger one is a typo, e.g. ``gaussian(20000)``, not a blur).
MAX_SIDE = 8193


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} is not valid; expected a finite number > 0")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}={value!r} is not valid; expected a finite number > 0")
    return v


def _size(name: str, size: Optional[int], default) -> int:
    """``size`` (a positive int) or, if None, ``default`` (computed from ``name``'s parameter),
    at most :data:`MAX_SIDE`."""
    if size is None:
        try:
            n = default() if callable(default) else default
        except OverflowError:  # e.g. ceil(3 * 1e308)
            n = math.inf
        if n > MAX_SIDE:
            wide = f"{n} pixels" if n <= 1 << 24 else "wider than any image"
            raise ValueError(f"{name}: the kernel would be {wide}; expected at most "
                             f"{MAX_SIDE} pixels (a smaller parameter, or size=)")
        return n
    if (isinstance(size, bool) or not isinstance(size, numbers.Real) or not math.isfinite(size)
            or int(size) != size or not 1 <= size <= MAX_SIDE):
        raise ValueError(f"size={size!r} is not valid; expected an int in [1, {MAX_SIDE}]")
    return int(size)


def _normalised(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (k / k.sum()).to(dtype)


def gaussian(sigma: float, size: Optional[int] = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Isotropic Gaussian PSF, sampled at pixel centres.

    Parameters
    ----------
    sigma : float > 0
        Standard deviation in pixels.
    size : int, optional
        Side of the square kernel; default ``2 * ceil(3 * sigma) + 1`` (odd,
        covers +-3 sigma, where the Gaussian has fallen below 1.2 % of its peak).
    dtype : torch.dtype, default float32

    Returns
    -------
    Tensor (size, size), sums to 1, peak at ``(size // 2, size // 2)``.
    """
    sigma = _positive("sigma", sigma)
    n = _size(f"sigma={sigma:g}", size, lambda: 2 * math.ceil(3 * sigma) + 1)
    r = torch.arange(n, dtype=torch.float64) - n // 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return _normalised(g[:, None] * g[None, :], dtype)


def box(size: Union[int, tuple], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform (moving-average) PSF.

    Parameters
    ----------
    size : int or (int, int)
        Kernel side(s) in pixels. Even sides put the origin ``(kh // 2, kw // 2)``
        half a pixel after the centre, so the restored image would be shifted
        by half a pixel relative to a centred model; prefer odd sizes.
    dtype : torch.dtype, default float32

    Returns
    -------
    Tensor (kh, kw), every entry ``1 / (kh * kw)``.
    """
    if isinstance(size, (tuple, list)) and len(size) != 2:
        raise ValueError(f"size={size!r} is not valid; expected an int or a pair of ints")
    kh, kw = (size, size) if not isinstance(size, (tuple, list)) else size
    if kh is None or kw is None:
        raise ValueError(f"size={size!r} is not valid; expected an int or a pair of ints")
    kh, kw = _size("size", kh, 1), _size("size", kw, 1)
    return torch.full((kh, kw), 1.0 / (kh * kw), dtype=dtype)


def motion(length: float, angle: float = 0.0, size: Optional[int] = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Linear motion blur: a line segment of ``length`` pixels through the origin.

    The segment is centred on the origin and drawn with sub-pixel accuracy:
    points spaced 1/8 pixel along it are spread over their four nearest pixels
    (bilinear weights), so any length and angle give a smooth kernel.

    Parameters
    ----------
    length : float > 0
        Extent of the motion in pixels (1 gives the identity).
    angle : float
        Direction in degrees, counter-clockwise from the +x (column) axis as
        seen on screen (rows grow downwards, so +90 points up).
    size : int, optional
        Side of the square kernel; default the smallest odd side that holds
        the segment.
    dtype : torch.dtype, default float32

    Returns
    -------
    Tensor (size, size), sums to 1.
    """
    length = _positive("length", length)
    if not math.isfinite(float(angle)):
        raise ValueError(f"angle={angle!r} is not valid; expected a finite number of degrees")
    half = (length - 1) / 2
    n = _size(f"length={length:g}", size, lambda: 2 * math.ceil(half) + 3)
    c = n // 2
    theta = math.radians(float(angle))
    # Sample the segment densely; the extent (length - 1) makes length=1 a
    # single point (the identity) and length=L cover L pixel centres.
    steps = max(2, int(math.ceil((length - 1) * 8)) + 1)
    t = torch.linspace(-half, half, steps, dtype=torch.float64)
    x = c + t * math.cos(theta)
    y = c - t * math.sin(theta)
    k = torch.zeros(n, n, dtype=torch.float64)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = (y0 + dy).long(), (x0 + dx).long()
            ok = (yi >= 0) & (yi < n) & (xi >= 0) & (xi < n)
            k.index_put_((yi[ok], xi[ok]), (wy * wx)[ok], accumulate=True)
    if k.sum() <= 0:
        raise ValueError(f"size={n} is too small for a motion of length {length}")
    return _normalised(k, dtype)


def disk(radius: float, size: Optional[int] = None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform disk ("pillbox") PSF: out-of-focus blur of a circular aperture.

    Each pixel's weight is the fraction of its area inside the circle,
    estimated on an 8x8 grid of sub-pixel samples, so small radii stay round.

    Parameters
    ----------
    radius : float > 0
        Radius in pixels.
    size : int, optional
        Side of the square kernel; default ``2 * ceil(radius) + 1``.
    dtype : torch.dtype, default float32

    Returns
    -------
    Tensor (size, size), sums to 1, centred on ``(size // 2, size // 2)``.
    """
    radius = _positive("radius", radius)
    n = _size(f"radius={radius:g}", size, lambda: 2 * math.ceil(radius) + 1)
    sub = 8
    offs = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    r = torch.arange(n, dtype=torch.float64) - n // 2
    # One (n, n) count per sub-pixel offset pair: memory stays that of the
    # kernel (all 64 samples at once would be 64 times it). The counts of
    # 0/1 samples are exact, so the result does not depend on the order.
    count = torch.zeros(n, n, dtype=torch.float64)
    for oy in offs:
        dy2 = (r + oy) ** 2
        for ox in offs:
            count += ((dy2[:, None] + ((r + ox) ** 2)[None, :]) <= radius ** 2)
    return _normalised(count / (sub * sub), dtype)
