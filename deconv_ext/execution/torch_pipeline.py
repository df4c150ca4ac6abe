"""The real-to-real pipelines (rfft2 -> per-frequency kernel -> irfft2) in torch.

``csrc/pipeline.cpp`` implements the same functions for CPU tensors. These
torch versions take the per-frequency kernels as an argument (an object with
the Triton launchers' ``spectral_solve_``, ``spectral_solve_backward``,
``spectral_mul`` and ``spectral_mul_grad_k``, whose ``scale`` keyword folds
the inverse FFT's normalisation into the per-frequency pass), so that they serve

* as the CUDA kernels of the pipeline ops (the per-frequency kernels are then
  the ``deconv_ext.triton_kernels`` launchers, called directly: inside an op's
  CUDA kernel there is nothing left to dispatch), and
* for ``DECONV_EXT_KERNELS=triton`` on a CPU-only machine, with the Triton
  launchers run by the interpreter.

Inside an op these run eagerly: the compiler never sees their complex
intermediates.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["deconv2d", "deconv2d_grad_k", "filter2d", "filter2d_grad_k", "irfft2_backward"]


def irfft2_backward(grad: torch.Tensor) -> torch.Tensor:
    """Gradient of ``irfft2`` (norm "backward") w.r.t. its half-spectrum input.

    ``rfft2(grad) / (H W)`` with the columns that stand for two full-spectrum
    bins (``1 .. ceil(W / 2) - 1``) doubled.
    """
    h, w = grad.shape[-2:]
    G = torch.fft.rfft2(grad) / (h * w)
    G[..., 1:(w + 1) // 2] *= 2
    return G


def deconv2d(kern, image: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor], eps: float,
             thresh: torch.Tensor, adjoint: bool) -> torch.Tensor:
    """``irfft2(solve(rfft2(image)))``; ``adjoint=True`` uses the adjoint solve.

    image (..., H, W) real -> (..., H, W). The solve multiplies in the
    inverse FFT's ``1 / (H W)`` (``scale``, a keyword of the Triton
    launchers), so ``irfft2(norm="forward")`` needs no normalisation pass.
    """
    if image.numel() == 0:
        return torch.empty_like(image)
    h, w = image.shape[-2:]
    Y = torch.fft.rfft2(image)
    # conj(F) with F = conj(K)/d is K/d: the solve with the conjugated kernel,
    # read through a lazy conjugate (no copy of k). Y is ours: in place.
    kern.spectral_solve_(Y, k.conj() if adjoint else k, reg, eps, thresh, scale=1.0 / (h * w))
    return torch.fft.irfft2(Y, s=(h, w), norm="forward")


def deconv2d_grad_k(kern, grad, image, k, reg, eps, thresh, adjoint):
    """Gradients of ``deconv2d`` w.r.t. ``k`` and ``reg``."""
    G, Y = irfft2_backward(grad), torch.fft.rfft2(image)
    if not adjoint:
        return kern.spectral_solve_backward(G, Y, k, reg, eps, thresh)
    # The adjoint solve is the solve with conj(K): conjugate the kernel's gradient.
    gk, greg = kern.spectral_solve_backward(G, Y, k.conj_physical(), reg, eps, thresh)
    return gk.conj_physical(), greg


def filter2d(kern, x: torch.Tensor, k: torch.Tensor, conj: bool) -> torch.Tensor:
    """``irfft2(K rfft2(x))`` or, with ``conj``, ``irfft2(conj(K) rfft2(x))``
    (the ``1 / (H W)`` folded into the multiply, as in :func:`deconv2d`)."""
    if x.numel() == 0:
        return torch.empty_like(x)
    h, w = x.shape[-2:]
    X = kern.spectral_mul(torch.fft.rfft2(x), k, conj, scale=1.0 / (h * w))
    return torch.fft.irfft2(X, s=(h, w), norm="forward")


def filter2d_grad_k(kern, grad, x, k_shape: Sequence[int], conj: bool):
    """Gradient of ``filter2d`` w.r.t. ``k``, summed to ``k_shape``."""
    return kern.spectral_mul_grad_k(irfft2_backward(grad), torch.fft.rfft2(x), list(k_shape), conj)
