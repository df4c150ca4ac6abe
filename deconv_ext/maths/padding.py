"""Boundary extension by index maps, in pure torch (the rule of the ``pad`` op).

Used by the reference-style paths and by devices without compiled kernels;
``torch.ops.deconv_ext.pad`` / ``pad_backward`` implement the same maps in
C++ and Triton.
"""
from __future__ import annotations

import torch

from .spectral import compute_dtype

__all__ = ["index_map", "pad", "pad_adjoint"]


def index_map(n_out: int, offset: int, n: int, mode: str, device) -> torch.Tensor:
    """Source index in [0, n) of each extended index, -1 for a zero (same rule as the C++ op)."""
    i = torch.arange(n_out, device=device) - offset
    if mode == "zeros":
        return torch.where((i >= 0) & (i < n), i, torch.full_like(i, -1))
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if mode == "circular":
        return torch.remainder(i, n)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(i)
        p = 2 * (n - 1)
        m = torch.remainder(i, p)
        return torch.where(m < n, m, p - m)
    if mode == "symmetric":
        p = 2 * n
        m = torch.remainder(i, p)
        return torch.where(m < n, m, p - 1 - m)
    raise ValueError(f"mode={mode!r} is not valid; expected one of 'zeros', 'reflect', "
                     f"'symmetric', 'replicate', 'circular'")


def pad(x: torch.Tensor, top: int, left: int, height: int, width: int,
              mode: str) -> torch.Tensor:
    """Pure-torch ``deconv_ext::pad``: ``x`` (..., H, W) at (top, left) of (..., height, width)."""
    x = x.to(compute_dtype(x.dtype))
    rows = index_map(height, top, x.shape[-2], mode, x.device)
    cols = index_map(width, left, x.shape[-1], mode, x.device)
    out = x.index_select(-2, rows.clamp(min=0)).index_select(-1, cols.clamp(min=0))
    if mode == "zeros":
        out = out * ((rows >= 0)[:, None] & (cols >= 0)[None, :]).to(out.dtype)
    return out


def pad_adjoint(g: torch.Tensor, top: int, left: int, height: int, width: int,
                      mode: str) -> torch.Tensor:
    """Pure-torch ``deconv_ext::pad_backward``: fold ``g`` back onto (..., height, width)."""
    g = g.to(compute_dtype(g.dtype))
    rows = index_map(g.shape[-2], top, height, mode, g.device)
    cols = index_map(g.shape[-1], left, width, mode, g.device)
    if mode == "zeros":
        g = g * ((rows >= 0)[:, None] & (cols >= 0)[None, :]).to(g.dtype)
    tmp = g.new_zeros(*g.shape[:-1], width).index_add_(g.dim() - 1, cols.clamp(min=0), g)
    return tmp.new_zeros(*g.shape[:-2], height, width).index_add_(g.dim() - 2,
                                                                  rows.clamp(min=0), tmp)
