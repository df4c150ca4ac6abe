"""Pure-torch reference implementation: the executable specification.

Everything here is written to be obviously correct, not fast: full complex
FFTs, kernels embedded pixel by pixel, per-frequency SVDs. The fast paths
(C++ on CPU, Triton on GPU) are tested against these functions, and these
functions are tested against dense operator matrices and ``F.conv2d``.

Conventions:

* Image convention: ``blurred = image (*) psf``, a true circular convolution
  whose PSF origin is pixel ``(kh // 2, kw // 2)``.
* Layer convention: ``output = F.conv2d(F.pad(input, pads, mode="circular"),
  weight, bias, dilation=dilation, groups=groups)`` with the padding that
  ``padding="same"`` uses (total ``dilation * (k - 1)``, left ``total // 2``).
* ``pinv``: ``X = Y / K`` where ``|K| > rcond * sigma_max`` else 0, with
  ``sigma_max`` the largest ``|K|`` of one sample's operator (all frequencies
  and channels, i.e. dims ``-3, -2, -1`` of the spectrum).
* ``tikhonov``: ``X = conj(K) Y / (|K|^2 + eps |R|^2)``; where
  ``eps |R|^2 == 0`` this is its limit, the pseudo-inverse above.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .maths.spectral import LAPLACIAN, compute_dtype, default_rcond

__all__ = [
    "default_rcond",
    "embed_kernel",
    "psf_transfer",
    "conv2d_transfer",
    "laplacian_transfer",
    "deconvolve",
    "convolve",
    "conv2d_forward",
    "conv2d_pinv",
    "conv2d_svdvals",
]

def embed_kernel(kernel: torch.Tensor, size: Tuple[int, int], origin: Tuple[int, int]) -> torch.Tensor:
    """Circularly embed ``kernel`` (..., kh, kw) into (..., H, W).

    Pixel ``origin`` of the kernel lands on index (0, 0); pixel (i, j) lands on
    ``((i - origin[0]) mod H, (j - origin[1]) mod W)``. Pixels that wrap onto
    the same place add up (a kernel larger than the image).
    """
    H, W = size
    kh, kw = kernel.shape[-2:]
    out = kernel.new_zeros(*kernel.shape[:-2], H, W)
    for i in range(kh):
        for j in range(kw):
            out[..., (i - origin[0]) % H, (j - origin[1]) % W] += kernel[..., i, j]
    return out


def psf_transfer(psf: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Full complex transfer function (..., H, W) of a PSF, image convention."""
    kh, kw = psf.shape[-2:]
    return torch.fft.fft2(embed_kernel(psf, size, (kh // 2, kw // 2)))


def _dilate(weight: torch.Tensor, dilation: Tuple[int, int]) -> torch.Tensor:
    dh, dw = dilation
    kh, kw = weight.shape[-2:]
    out = weight.new_zeros(*weight.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[..., ::dh, ::dw] = weight
    return out


def conv2d_transfer(weight: torch.Tensor, size: Tuple[int, int],
                    dilation: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Transfer function (..., H, W) of ``F.conv2d`` with circular "same" padding.

    ``out[i] = sum_t w_d[t] x[i + t - left]`` (cross-correlation, ``w_d`` the
    dilated kernel, ``left = (D - 1) // 2``) is the convolution with the kernel
    ``h[(left - t) mod N] = w_d[t]``.
    """
    wd = _dilate(weight, dilation)
    Dh, Dw = wd.shape[-2:]
    left = ((Dh - 1) // 2, (Dw - 1) // 2)
    H, W = size
    h = wd.new_zeros(*wd.shape[:-2], H, W)
    for i in range(Dh):
        for j in range(Dw):
            h[..., (left[0] - i) % H, (left[1] - j) % W] += wd[..., i, j]
    return torch.fft.fft2(h)


def laplacian_transfer(size: Tuple[int, int], dtype=torch.float64, device=None) -> torch.Tensor:
    """Transfer function of the 3x3 discrete Laplacian (image convention)."""
    lap = torch.tensor(LAPLACIAN, dtype=dtype, device=device)
    return psf_transfer(lap, size)


def _sigma_max(K: torch.Tensor) -> torch.Tensor:
    """Largest |K| over dims (-3, -2, -1) (one sample's operator), keepdim."""
    dims = tuple(range(-min(K.dim(), 3), 0))
    return K.abs().amax(dim=dims, keepdim=True)


def _symmetrise(e: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(e(w) + e(-w)) / 2 on the full fft2 grid."""
    e = e.expand(*e.shape[:-2], *size) if e.dim() >= 2 else e.expand(*size)
    H, W = size
    neg_h = (-torch.arange(H, device=e.device)) % H
    neg_w = (-torch.arange(W, device=e.device)) % W
    return 0.5 * (e + e[..., neg_h, :][..., :, neg_w])


def _spectral_solve(Y, K, eps, R2, rcond, size, dtype):
    """Per-frequency solve on full spectra (the rule of docs/architecture.md, "The maths")."""
    if rcond is None:
        rcond = default_rcond(size, dtype)
    K2 = K.abs() ** 2
    thr = rcond * _sigma_max(K)
    safe = torch.where(K.abs() > thr, K, torch.ones_like(K))
    pinv = torch.where(K.abs() > thr, Y / safe, torch.zeros_like(Y))
    if eps is None:
        return pinv
    P = eps * R2
    den = K2 + P
    tik = torch.conj(K) * Y / torch.where(P > 0, den, torch.ones_like(den))
    return torch.where(P > 0, tik, pinv)


def _as_compute(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


def deconvolve(image: torch.Tensor, psf: torch.Tensor, eps: Union[float, torch.Tensor] = 1e-2,
               method: str = "tikhonov", reg: Union[None, str, torch.Tensor] = None,
               rcond: Optional[float] = None) -> torch.Tensor:
    """Reference circular deconvolution (image convention).

    Parameters
    ----------
    image : Tensor (..., H, W)
    psf : Tensor (kh, kw) or (..., kh, kw), broadcastable to the image's leading dims
    eps : float or real Tensor broadcastable to (..., H, W) (full fft2 layout)
    method : "tikhonov" or "pinv"
    reg : None (identity), "laplacian" or a kernel Tensor (image convention)
    rcond : relative threshold of the pseudo-inverse (None: default_rcond)

    Returns
    -------
    Tensor (..., H, W) in the image's dtype.
    """
    out_dtype = image.dtype
    y = _as_compute(image)
    size = tuple(y.shape[-2:])
    K = psf_transfer(psf.to(y.dtype), size)
    R2 = _reg_power(reg, size, y.dtype, y.device)
    e = _eps_full(eps, method, size, y)
    X = _spectral_solve(torch.fft.fft2(y), K, e, R2, rcond, size, y.dtype)
    return torch.fft.ifft2(X, s=size).real.to(out_dtype)


def _reg_power(reg, size, dtype, device):
    if reg is None:
        return torch.ones((), dtype=dtype, device=device)
    if isinstance(reg, str):
        return laplacian_transfer(size, dtype, device).abs() ** 2
    return psf_transfer(reg.to(dtype), size).abs() ** 2


def _eps_full(eps, method, size, y):
    if method == "pinv":
        return None
    if isinstance(eps, torch.Tensor):
        return _symmetrise(eps.to(y.dtype), size)
    return None if eps == 0 else eps


def convolve(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Reference circular blur ``image (*) psf`` (image convention), (..., H, W)."""
    y = _as_compute(image)
    size = tuple(y.shape[-2:])
    K = psf_transfer(psf.to(y.dtype), size)
    return torch.fft.ifft2(K * torch.fft.fft2(y)).real.to(image.dtype)


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def layer_transfer_matrix(weight: torch.Tensor, size: Tuple[int, int], groups: int = 1,
                          dilation=1) -> torch.Tensor:
    """Per-frequency matrix ``K(w)`` (H, W, C_out, C_in) of a conv layer.

    Groups are expanded into the block-diagonal matrix they stand for.
    """
    c_out, c_in_g = weight.shape[:2]
    c_in = c_in_g * groups
    per = conv2d_transfer(weight, size, _pair(dilation))  # (C_out, C_in/g, H, W)
    K = per.new_zeros(*size, c_out, c_in)
    out_per_group = c_out // groups
    for o in range(c_out):
        g = o // out_per_group
        K[:, :, o, g * c_in_g:(g + 1) * c_in_g] = per[o].permute(1, 2, 0)
    return K


def conv2d_forward(input: torch.Tensor, weight: torch.Tensor, bias=None, groups: int = 1,
                   dilation=1) -> torch.Tensor:
    """``F.conv2d`` with circular "same" padding, via per-frequency matrices (N, C_out, H, W)."""
    x = _as_compute(input)
    size = tuple(x.shape[-2:])
    K = layer_transfer_matrix(weight.to(x.dtype), size, groups, dilation)
    X = torch.fft.fft2(x).movedim(-3, -1).unsqueeze(-1)  # (N, H, W, C_in, 1)
    Y = (K @ X).squeeze(-1).movedim(-1, -3)
    y = torch.fft.ifft2(Y).real
    if bias is not None:
        y = y + bias.to(y.dtype)[:, None, None]
    return y.to(input.dtype)


def conv2d_pinv(output: torch.Tensor, weight: torch.Tensor, bias=None, groups: int = 1,
                dilation=1, eps: float = 0.0, rcond: Optional[float] = None) -> torch.Tensor:
    """Reference pseudo-inverse / Tikhonov inverse of a circular conv layer.

    ``pinv`` (``eps == 0``): per-frequency SVD ``K = U S V^H``, singular values
    at or below ``rcond * sigma_max`` (sigma_max over ALL frequencies) dropped.
    ``eps > 0``: ``(K^H K + eps I)^-1 K^H``.

    Parameters
    ----------
    output : Tensor (N, C_out, H, W) or (C_out, H, W)
    weight : Tensor (C_out, C_in / groups, kh, kw)

    Returns
    -------
    Tensor (N, C_in, H, W) (or (C_in, H, W)) in ``output``'s dtype.
    """
    y = _as_compute(output)
    if bias is not None:
        y = y - bias.to(y.dtype)[:, None, None]
    size = tuple(y.shape[-2:])
    K = layer_transfer_matrix(weight.to(y.dtype), size, groups, dilation)  # (H, W, Co, Ci)
    if eps == 0:
        U, S, Vh = torch.linalg.svd(K, full_matrices=False)
        if rcond is None:
            rcond = default_rcond(size, y.dtype)
        keep = S > rcond * S.max()
        Sinv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
        G = Vh.mH @ (Sinv.unsqueeze(-1).to(U.dtype) * U.mH)
    else:
        Kh = K.mH
        eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
        G = torch.linalg.solve(Kh @ K + eps * eye, Kh)
    Y = torch.fft.fft2(y).movedim(-3, -1).unsqueeze(-1)
    X = (G @ Y).squeeze(-1).movedim(-1, -3)
    return torch.fft.ifft2(X).real.to(output.dtype)


def conv2d_svdvals(weight: torch.Tensor, input_size: Tuple[int, int], groups: int = 1,
                   dilation=1) -> torch.Tensor:
    """All singular values of the circular conv operator, sorted descending (1D)."""
    K = layer_transfer_matrix(weight.to(compute_dtype(weight.dtype)), tuple(input_size), groups,
                              dilation)
    return torch.linalg.svdvals(K).flatten().sort(descending=True).values
