"""Exact forward models of non-circular convolutions and their adjoints.

Both directions are explicit (no autograd needed), for the iterative solvers:

* :class:`ConvOperator`: the image-convention blur with a boundary, by FFT
  (:func:`deconv_ext.plans.padded.apply_model`);
* :class:`Conv2dLayerOperator`: a multi-channel ``F.conv2d`` layer with
  "same" padding by a ``padding_mode``, or "valid".
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .. import execution
from ..maths import spectral
from ..plans.padded import apply_model, psf_pads
from ..plans.spectra import psf_spectrum

__all__ = ["ConvOperator", "Conv2dLayerOperator"]


class ConvOperator:
    """The image-convention blur ``A_b`` with boundary ``b`` (or "valid"), and ``A_b^T``.

    Applied by FFT on a buffer of a fast size >= (H + kh - 1, W + kw - 1):
    one ``rfft2`` / ``irfft2`` pair per application whatever the PSF size
    (see :func:`apply_model`).

    Parameters
    ----------
    psf : Tensor (..., kh, kw)
        Image-convention PSF (origin ``(kh // 2, kw // 2)``), its leading dims
        broadcasting to the images'.
    out_size : (H, W)
        Size of ``y = A x``.
    boundary : {"reflect", "symmetric", "replicate", "zeros", "circular", "valid"}
        ``"valid"``: ``x`` is (H + kh - 1, W + kw - 1), no extension.
    dtype : float32 or float64

    Attributes
    ----------
    in_size : (H_in, W_in), the size of ``x``.
    sample_dims : (-2, -1): each image plane is one independent system.
    """

    def __init__(self, psf: torch.Tensor, out_size: Tuple[int, int], boundary: str,
                 dtype: torch.dtype):
        self.psf = psf.to(dtype)
        self.boundary = boundary
        self.out_size = tuple(out_size)
        self.dtype = dtype
        kh, kw = psf.shape[-2:]
        top, _, left, _ = psf_pads(kh, kw)
        H, W = self.out_size
        self.at = (top, left)
        if boundary == "valid":
            self.in_size, self.mode = (H + kh - 1, W + kw - 1), None
        else:
            self.in_size, self.mode = (H, W), boundary
        self.fft_size = (spectral.next_fast_size(H + kh - 1), spectral.next_fast_size(W + kw - 1))
        self.spectrum = psf_spectrum(self.psf, self.fft_size)
        self.sample_dims = (-2, -1)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: (..., H_in, W_in) -> (..., H, W)."""
        return apply_model(x, self.spectrum, self.at, self.fft_size, self.out_size, self.mode)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: (..., H, W) -> (..., H_in, W_in), the exact adjoint."""
        return apply_model(y, self.spectrum, self.at, self.fft_size, self.out_size, self.mode,
                           adjoint=True, in_size=self.in_size)


class Conv2dLayerOperator:
    """The layer-convention operator: stride-1 ``F.conv2d`` with ``groups`` and
    ``dilation``, "same" padding by ``padding_mode`` or "valid", and its adjoint
    (``F.conv_transpose2d`` then the fold-back of the padding). General
    multi-channel weights; bias is not part of the linear operator.

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw)
    out_size : (H, W), spatial size of the output
    padding : {"same", "valid"}
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
    """

    def __init__(self, weight: torch.Tensor, out_size: Tuple[int, int], groups: int,
                 dilation: Tuple[int, int], padding: str, padding_mode: str, dtype: torch.dtype):
        self.weight = weight.to(dtype)
        self.groups, self.dilation = groups, dilation
        self.out_size = tuple(out_size)
        self.dtype = dtype
        Dh = dilation[0] * (weight.shape[-2] - 1) + 1
        Dw = dilation[1] * (weight.shape[-1] - 1) + 1
        H, W = self.out_size
        self.valid = padding == "valid"
        self.mode = padding_mode
        # "same" splits the total D - 1 with the smaller half first (F.conv2d).
        self.pad_at = ((Dh - 1) // 2, (Dw - 1) // 2)
        self.ext = (H + Dh - 1, W + Dw - 1)
        self.in_size = self.ext if self.valid else (H, W)
        self.sample_dims = (-3, -2, -1)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        if not self.valid:
            x = execution.pad(x, *self.pad_at, *self.ext, self.mode)
        return F.conv2d(x, self.weight, dilation=self.dilation, groups=self.groups)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        g = F.conv_transpose2d(y, self.weight, dilation=self.dilation, groups=self.groups)
        if self.valid:
            return g
        return execution.pad_adjoint(g, *self.pad_at, *self.in_size, self.mode)
