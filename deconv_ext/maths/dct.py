"""The orthonormal 2D DCT-II and its inverse on ``torch.fft`` (2D Makhoul reordering).

Equal to ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")`` and its inverse;
differentiable and traceable (they serve autograd, compiled graphs and CUDA).
"""
from __future__ import annotations

import functools
import math

import torch

__all__ = ["dct2", "idct2"]


def _ortho_scale(n: int, dtype, device) -> torch.Tensor:
    f = torch.full((n,), math.sqrt(1.0 / (2 * n)), dtype=dtype, device=device)
    f[0] = math.sqrt(1.0 / (4 * n))
    return f


def _makhoul_order(n: int) -> torch.Tensor:
    """``perm`` with ``v = x[perm] = (x0, x2, x4, ..., x5, x3, x1)``."""
    return torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])


def _dct_tables_build(H: int, W: int, dtype: torch.dtype, device) -> dict:
    """Index and twiddle tables of the 2D Makhoul DCT-II / DCT-III at (H, W).

    Built in float64 and rounded once to ``dtype``.
    """
    f64 = torch.float64
    Wh = W // 2 + 1
    ph, pw = _makhoul_order(H), _makhoul_order(W)
    perm = (ph[:, None] * W + pw[None, :]).reshape(-1)            # v = x.flat[perm]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(H * W)                               # x = v.flat[inv]
    k = torch.arange(H, dtype=f64)
    l_ = torch.arange(Wh, dtype=f64)
    th = math.pi * k / (2 * H)
    tw = math.pi * l_ / (2 * W)
    sh = _ortho_scale(H, f64, "cpu")
    sw = _ortho_scale(W, f64, "cpu")[:Wh]
    scale = 2 * sh[:, None] * sw[None, :]
    # Forward: 4 s_h s_w sum x cos cos = Re/Im of G1 V[k, l] + G2 conj(V[-k, l]).
    g1 = torch.polar(scale, -(th[:, None] + tw[None, :]))
    g2 = torch.polar(scale, -(th[:, None] - tw[None, :]))
    # Inverse: with S = X / (4 c_h c_w) after scaling row 0 and column 0 by sqrt(2)
    # (c = sqrt(1 / 2N): the scale of every index but 0),
    # V[k, l] = e^{i(th + tw)} (S[k, l] - S[H-k, W-l] - i (S[H-k, l] + S[k, W-l])).
    amp = torch.full((H, Wh), math.sqrt(H * W) / 2, dtype=f64)    # 1 / (4 c_h c_w)
    t_inv = torch.polar(amp, th[:, None] + tw[None, :])
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    return {
        "perm": perm.to(device), "inv": inv.to(device),
        "negk": ((-torch.arange(H)) % H).to(device),              # V[-k]
        "rev_h": (H - torch.arange(H)).to(device),                # rows H, H-1, ..., 1 of the padded X
        "rev_w": (W - torch.arange(Wh)).to(device),               # cols W, W-1, ..., W-Wh+1
        "g1": g1.to(device=device, dtype=cdtype), "g2": g2.to(device=device, dtype=cdtype),
        "t_inv": t_inv.to(device=device, dtype=cdtype),
    }


_dct_tables_cached = functools.lru_cache(maxsize=32)(_dct_tables_build)


def _dct_tables(H: int, W: int, dtype: torch.dtype, device: torch.device) -> dict:
    if torch.compiler.is_compiling():
        return _dct_tables_build(H, W, dtype, device)
    return _dct_tables_cached(H, W, dtype, torch.device(device))


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2D DCT-II over the last two dims: ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``.

    2D Makhoul: one gather (rows and columns even-then-odd-reversed), one
    ``rfft2`` at (H, W) and a 2D twiddle. With ``V`` the full DFT of the
    reordered ``v``, ``sum x cos(a_k) cos(b_l) = Re(e^{-i th_k} (e^{-i tw_l}
    V[k, l] + e^{i tw_l} V[k, -l])) / 2`` and ``V[k, -l] = conj(V[-k, l])``:
    columns ``l <= W / 2`` are the real part of that sum, and columns ``W - l``
    minus the imaginary part of the difference, all from the half spectrum.

    Parameters
    ----------
    x : Tensor (..., H, W), float32 or float64

    Returns
    -------
    Tensor (..., H, W)
    """
    H, W = x.shape[-2:]
    Wh = W // 2 + 1
    t = _dct_tables(H, W, x.dtype, x.device)
    v = x.reshape(*x.shape[:-2], H * W)[..., t["perm"]].reshape(x.shape)
    V = torch.fft.rfft2(v)
    z1 = t["g1"] * V
    z2 = t["g2"] * V[..., t["negk"], :].conj()
    first = (z1 + z2).real
    if Wh == W:                                                   # W <= 2
        return first.contiguous()
    second = (z2 - z1).imag[..., 1:W - Wh + 1].flip(-1)
    return torch.cat([first, second], dim=-1)


def idct2(X: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (its transpose: the transform is orthonormal), (..., H, W).

    The 2D Makhoul inverse: the half spectrum of the reordered signal is
    ``V[k, l] = e^{i (th_k + tw_l)} (S[k, l] - S[-k, -l] - i (S[-k, l] + S[k, -l]))``
    (``S`` the unnormalised coefficients, zero at index ``H`` / ``W``), then one
    ``irfft2`` and one gather.
    """
    H, W = X.shape[-2:]
    Wh = W // 2 + 1
    t = _dct_tables(H, W, X.dtype, X.device)
    Xp = torch.nn.functional.pad(X, (0, 1, 0, 1))                 # row H, column W = 0
    Xp[..., 0, :] *= math.sqrt(2.0)                               # s[0] = c / sqrt(2)
    Xp[..., :, 0] *= math.sqrt(2.0)
    rows = Xp[..., t["rev_h"], :]                        # S[H - k, :]
    a = Xp[..., :H, :Wh]
    b = rows[..., :Wh]
    c = Xp[..., :H, t["rev_w"]]
    d = rows[..., t["rev_w"]]
    V = t["t_inv"] * torch.complex(a - d, -(b + c))
    v = torch.fft.irfft2(V, s=(H, W))
    return v.reshape(*v.shape[:-2], H * W)[..., t["inv"]].reshape(v.shape)
