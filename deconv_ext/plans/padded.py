"""Non-circular boundaries: forward models, their exact adjoints, the padded fast path.

Boundary names follow ``torch.nn.functional.pad`` (see docs/architecture.md, "The maths"):

=============  ==========================  ==================  ===============
boundary       extension of ``abcd``       numpy ``np.pad``    scipy.ndimage
=============  ==========================  ==================  ===============
``reflect``    ``dcb|abcd|cba``            ``reflect``         ``mirror``
``symmetric``  ``cba|abcd|dcb``            ``symmetric``       ``reflect``
``replicate``  ``aaa|abcd|ddd``            ``edge``            ``nearest``
``zeros``      ``000|abcd|000``            ``constant``        ``constant``
``circular``   ``bcd|abcd|abc``            ``wrap``            ``wrap``
=============  ==========================  ==================  ===============

Forward model (image convention, PSF origin ``(c_h, c_w) = (kh // 2, kw // 2)``)::

    A_b x = crop( circ_conv_N( pad_b(x) ) )

``pad_b`` extends ``x`` (H, W) by the boundary rule, ``top = kh - 1 - c_h``
rows above and ``c_h`` below (likewise for columns), which is exactly the
support the PSF reaches; the (linear, full-overlap) convolution is then
computed as a circular one on any buffer ``N >= (H + kh - 1, W + kw - 1)``
(nothing wraps around inside the cropped window) and cropped back to (H, W).
This is ``scipy.ndimage.convolve(x, psf, mode=<scipy name>)``. "valid"
(the layer convention with an input larger than the output) is the same with
no extension: ``x`` is (H + kh - 1, W + kw - 1) and ``y`` (H, W).

The adjoint is exact and needs no autograd: ``A_b^T y = pad_b^T(circ_corr_N(
embed(y)))``, with ``pad_b^T`` folding the border back onto the pixels it was
copied from (``torch.ops.deconv_ext.pad_backward``).

The fast path (``deconvolve(..., boundary=b)`` with the default solver) does
not solve ``A_b`` exactly: it extends the *observation* by the boundary rule
up to a fast FFT size, solves circularly there and crops. Its error is
confined near the edges, where the circular solve would ring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import execution
from ..maths import spectral

__all__ = [
    "NONCIRCULAR",
    "PadGeometry",
    "psf_pads",
    "padded_geometry",
    "taper_border",
    "extend",
    "apply_model",
    "padded_solve",
    "plan_apply",
    "FAST_PAD_MODE",
]

NONCIRCULAR = ("reflect", "symmetric", "replicate", "zeros")

# How the fast path extends the observation for each boundary of the blur.
# The blur of a reflect/symmetric/replicate-extended image is, near the edge,
# close to the same extension of the blurred image, so the same rule is used.
# For "zeros" the observation fades toward the edge and no extension is
# consistent with it; measured on a 128^2 camera image (9x9 Gaussian, sigma 2,
# eps 1e-3), PSNR: circular 14.0, zero fill 13.5, symmetric 15.8, replicate
# 18.3 dB, so "replicate". (The exact solver reaches ~28 dB there.)
FAST_PAD_MODE = {
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "replicate",
    "zeros": "replicate",
    "circular": "circular",
}


def psf_pads(kh: int, kw: int) -> Tuple[int, int, int, int]:
    """Extension ``(top, bottom, left, right)`` that a PSF's support needs.

    With the origin at ``c = k // 2``, ``y[i] = sum_t psf[t] x[i - t + c]``
    reads ``x`` from ``i - (k - 1 - c)`` to ``i + c``.
    """
    return kh - 1 - kh // 2, kh // 2, kw - 1 - kw // 2, kw // 2


@dataclass(frozen=True)
class PadGeometry:
    """Where an (H, W) image sits in its (Nh, Nw) FFT buffer (offset ``top``, ``left``)."""

    top: int
    left: int
    height: int
    width: int
    fft_size: Tuple[int, int]


def padded_geometry(size: Tuple[int, int], ksize: Tuple[int, int],
                    taper: Optional[int] = None) -> PadGeometry:
    """Buffer for the padded fast path: every side gets at least the PSF's
    half size (and the taper width), the total is rounded up to a size whose
    prime factors are 2, 3, 5, 7 and the extra is split between both sides.

    Parameters
    ----------
    size : (H, W) image size
    ksize : (kh, kw) PSF size
    taper : int >= 0, optional; the taper needs that many pixels of border
        on each side so that the two sides meet at the mean where the buffer
        wraps around.
    """
    geo = []
    for n, k in zip(size, ksize):
        half = max(k // 2, int(taper or 0))
        total = spectral.next_fast_size(n + 2 * half)
        extra = total - n - 2 * half
        geo.append((half + extra // 2, total))
    return PadGeometry(geo[0][0], geo[1][0], size[0], size[1], (geo[0][1], geo[1][1]))


# ---------------------------------------------------------------------------
# pad / its adjoint / crop: the fused ops where they exist, pure torch else.
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Edge taper for the fast path
# ---------------------------------------------------------------------------

def _taper_profile(n: int, start: int, length: int, width: int, dtype, device) -> torch.Tensor:
    """1 on [start, start + length), raised cosine to 0 over ``width`` px outside, 0 beyond.

    Distances are measured to the nearer image edge without wrapping; the
    geometry guarantees ``width`` pixels on both sides, so both ends reach 0
    before the buffer wraps.
    """
    i = torch.arange(n, device=device, dtype=torch.float64)
    d = torch.clamp(torch.maximum(start - i, i - (start + length - 1)), min=0)
    w = 0.5 * (1 + torch.cos(math.pi * torch.clamp(d / width, max=1.0)))
    return w.to(dtype)


def taper_border(buf: torch.Tensor, geo: PadGeometry, width: int) -> torch.Tensor:
    """Blend the extended border of ``buf`` toward the image's mean.

    ``buf`` (..., Nh, Nw) holds the image at ``geo``; outside it, each value
    becomes ``mean + w (value - mean)`` with ``w`` a separable raised cosine
    that is 1 at the image edge and 0 from ``width`` pixels out. The buffer
    then wraps around continuously (both sides meet at the mean), which
    removes the jump that the circular solve would otherwise turn into
    ringing. Pixels of the image itself are untouched.
    """
    Nh, Nw = buf.shape[-2:]
    wr = _taper_profile(Nh, geo.top, geo.height, width, buf.dtype, buf.device)
    wc = _taper_profile(Nw, geo.left, geo.width, width, buf.dtype, buf.device)
    inner = buf[..., geo.top:geo.top + geo.height, geo.left:geo.left + geo.width]
    mean = inner.mean(dim=(-2, -1), keepdim=True)
    # Written as a correction so that the image pixels (weight 1) stay bit-exact.
    return buf + (wr[:, None] * wc[None, :] - 1) * (buf - mean)


def apply_model(x: torch.Tensor, spectrum: torch.Tensor, at: Tuple[int, int],
                fft_size: Tuple[int, int], out_size: Tuple[int, int], mode: Optional[str],
                adjoint: bool = False, in_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The exact non-circular blur ``crop(circ_conv_N(pad_b(x)))`` or its adjoint.

    ``x`` (..., H, W) is extended by ``mode`` into the ``fft_size`` buffer
    with its pixel (0, 0) at ``at = (T, L)``, convolved circularly with the
    half ``spectrum`` (of the PSF at ``fft_size``) and the window (T, L,
    out_size) is returned. Nothing wraps around inside that window as long as
    ``T >= kh - 1 - kh // 2`` and ``N - T - H >= kh // 2`` (likewise for
    columns), so this is the linear convolution of the extended image.
    ``mode=None`` is "valid": ``x`` (H + kh - 1, W + kw - 1) sits at (0, 0)
    with zeros after it and ``at`` is the crop offset of the output only.

    ``adjoint=True`` maps y (..., out_size) back to (..., in_size): zero
    embedding (adjoint of the crop), circular correlation, then the fold-back
    of the extension (adjoint of the pad).
    """
    Nh, Nw = fft_size
    T, L = at
    if not adjoint:
        if mode is None:
            buf = F.pad(x, (0, Nw - x.shape[-1], 0, Nh - x.shape[-2]))
        else:
            buf = execution.pad(x, T, L, Nh, Nw, mode)
        out = torch.fft.irfft2(torch.fft.rfft2(buf) * spectrum, s=fft_size)
        return out[..., T:T + out_size[0], L:L + out_size[1]]
    buf = F.pad(x, (L, Nw - L - x.shape[-1], T, Nh - T - x.shape[-2]))
    g = torch.fft.irfft2(torch.fft.rfft2(buf) * spectrum.conj(), s=fft_size)
    if mode is None:
        return g[..., :in_size[0], :in_size[1]]
    return execution.pad_adjoint(g, T, L, in_size[0], in_size[1], mode)


# ---------------------------------------------------------------------------
# The padded fast path and the plan's exact forward model (DeconvPlan with
# boundary != "circular" calls these)
# ---------------------------------------------------------------------------

def padded_solve(plan, image: torch.Tensor) -> torch.Tensor:
    """Fast approximate inverse of the non-circular blur of ``plan``.

    ``image`` (..., H, W) is extended by :data:`FAST_PAD_MODE` [boundary]
    into the plan's (Nh, Nw) buffer (fused pad + cast op), optionally
    tapered, solved circularly there with the plan's solve spectrum and
    cropped back (fused crop + cast op). The border absorbs the wrap-around
    that makes a plain circular solve ring at the edges. The caller
    (``DeconvPlan._solve``) applies the plan's output scale.

    Returns
    -------
    Tensor (..., H, W), ``image``'s dtype.
    """
    geo = plan.geometry
    Nh, Nw = geo.fft_size
    if not plan.taper:
        return execution.padded_deconv2d(image, geo.top, geo.left, Nh, Nw,
                                         FAST_PAD_MODE[plan.boundary], plan._solve_spectrum,
                                         plan._reg_op, plan._eps_op, plan.thresh)
    x = execution.deconv2d(extend(plan, image), plan._solve_spectrum, plan._reg_op,
                           plan._eps_op, plan.thresh)
    return execution.crop(x, geo.top, geo.left, geo.height, geo.width, image.dtype)


def extend(plan, image: torch.Tensor) -> torch.Tensor:
    """The buffer the fast path solves: ``image`` (..., H, W) extended by
    :data:`FAST_PAD_MODE` [boundary] to the plan's (Nh, Nw), then tapered if
    the plan has a taper. (Without one, :func:`padded_solve` fuses this pad
    into its solve.)"""
    geo = plan.geometry
    buf = execution.pad(image, geo.top, geo.left, *geo.fft_size, FAST_PAD_MODE[plan.boundary])
    return taper_border(buf, geo, plan.taper) if plan.taper else buf


def plan_apply(plan, x: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """The exact forward model ``A_b x`` (or ``A_b^T y``) at the plan's padded size.

    The plan's geometry leaves at least the PSF's half size on each side, so
    :func:`apply_model` is exact with the image at (top, left) of the buffer.
    """
    geo = plan.geometry
    at = (geo.top, geo.left)
    size = (geo.height, geo.width)
    out = apply_model(x.to(plan.dtype), plan.spectrum, at, geo.fft_size, size, plan.boundary,
                      adjoint=adjoint, in_size=size)
    return out.to(x.dtype)
