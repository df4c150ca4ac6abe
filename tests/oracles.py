"""Independent oracles for the tests: dense operator matrices built without
the library (scipy.ndimage and F.conv2d applied to basis vectors).

Import as ``from oracles import ...`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def dense_image_operator(psf: np.ndarray, size) -> np.ndarray:
    """Matrix (H*W, H*W) of ``scipy.ndimage.convolve(x, psf, mode="wrap")``."""
    import scipy.ndimage as ndi

    H, W = size
    A = np.empty((H * W, H * W))
    for i in range(H * W):
        e = np.zeros(H * W)
        e[i] = 1.0
        A[:, i] = ndi.convolve(e.reshape(H, W), psf, mode="wrap").ravel()
    return A


def circular_same_pads(kernel_size, dilation):
    """The (left, right, top, bottom) pads of ``padding="same"`` for F.pad."""
    pads = []
    for k, d in zip(reversed(kernel_size), reversed(dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def conv2d_circular(x: torch.Tensor, weight: torch.Tensor, bias=None, groups=1, dilation=(1, 1)):
    """The layer forward model: F.conv2d with circular "same" padding."""
    pads = circular_same_pads(weight.shape[-2:], dilation)
    return F.conv2d(F.pad(x, pads, mode="circular"), weight, bias, dilation=dilation, groups=groups)


def dense_layer_operator(weight: torch.Tensor, size, groups=1, dilation=(1, 1)) -> torch.Tensor:
    """Matrix (C_out*H*W, C_in*H*W) of the circular conv layer."""
    c_in = weight.shape[1] * groups
    H, W = size
    n = c_in * H * W
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, c_in, H, W)
    cols = conv2d_circular(basis, weight, groups=groups, dilation=dilation)
    return cols.reshape(n, -1).T


def invertible_psf(gen: torch.Generator, kh: int, kw: int, dtype=torch.float64) -> torch.Tensor:
    """A PSF whose centre tap dominates, so |K(w)| >= 0.5 at every frequency."""
    p = torch.rand(kh, kw, generator=gen, dtype=dtype) * (0.5 / max(kh * kw - 1, 1))
    p[kh // 2, kw // 2] = 1.0
    return p


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())
