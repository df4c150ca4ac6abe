"""The per-frequency matrices of a conv layer: ``K(w)``, its inverse ``G(w)``, singular values.

A stride-1 ``F.conv2d`` layer with circular "same" padding, weight
``(C_out, C_in / groups, kh, kw)``, is block-diagonalised by the 2D DFT: at
every frequency ``w`` it multiplies the ``C_in`` input channels by a matrix
``K(w)`` of size ``C_out x C_in`` (block-diagonal over the ``groups``; each
block ``C_out/groups x C_in/groups``). Its Moore-Penrose pseudo-inverse, its
Tikhonov inverse, its singular values and its adjoint are all per-frequency
matrix operations on ``K(w)`` (Sedghi, Gupta & Long, ICLR 2019). This module computes ``K``, the filter ``G(w)`` that inverts it,
and applies either one to half spectra (``rfft2`` layout: real images, half the
work).

Layouts
-------
*planar* ``(groups, M, N, H, Wf)``: the layout of spectra (frequency fastest),
read by the fused C++ op ``torch.ops.deconv_ext.channel_mix``;
*matrix* ``(groups, H, Wf, M, N)``: one matrix per frequency, what
``torch.linalg`` and ``torch.matmul`` batch over. ``Wf = W // 2 + 1``.

Memory rule (stored filter vs. matrix-free)
-------------------------------------------
The filter ``G`` holds ``groups * (C_in/groups) * (C_out/groups) * H * Wf``
complex entries (8 bytes each in complex64, 16 in complex128): e.g. 64 -> 64
channels at 512 x 512 is 2.2 GB in complex64. A plan stores ``G`` when it takes
at most ``max_filter_bytes`` (default :data:`DEFAULT_MAX_FILTER_BYTES` = 1 GiB,
or the environment variable ``DECONV_EXT_MAX_FILTER_BYTES``); otherwise it is
*matrix-free*: it keeps only the weight (plus ``sigma_max``) and, on every
call, recomputes ``K`` for a block of frequency rows, solves for that block
(SVD for the pseudo-inverse, a Hermitian solve for Tikhonov) and applies it,
block by block, with a working set of at most :data:`CHUNK_BYTES` of per-
frequency matrices. Both modes give the same result; the matrix-free one pays
the filter computation on every call. Building a stored filter holds ``K`` and
(for the pseudo-inverse) the SVD factors transiently: about 3x the filter.

Applying ``G`` (or ``K``, ``K^H``): the fused C++ op when the device is the
CPU and both block sides are at most :data:`FUSED_MAX_CHANNELS` (= 8), where
``torch.matmul`` per frequency is dominated by call and layout overhead;
batched ``torch.matmul`` over frequencies otherwise (and on CUDA, until a
Triton kernel exists).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch

from .. import config, execution
from ..maths import spectral

__all__ = ["CHUNK_BYTES", "FUSED_MAX_CHANNELS", "layer_spectrum", "filter_from_spectrum",
           "apply_matrices", "filter_bytes", "svdvals", "opnorm", "planar_to_matrix",
           "matrix_to_planar", "pinv_from_svd", "row_blocks", "chunk_budget"]

#: Working set (bytes of per-frequency matrices) of one block of frequency rows
#: in the matrix-free mode and in the chunked singular-value computations.
CHUNK_BYTES = 64 << 20
#: Largest block side (C_in/groups and C_out/groups) applied by the fused C++ op.
FUSED_MAX_CHANNELS = 8


def filter_bytes(weight_shape, groups: int, size: Tuple[int, int], dtype: torch.dtype) -> int:
    """Bytes of the filter ``G`` (or of ``K``) of a layer: complex entries x itemsize."""
    c_out, c_in_g = weight_shape[:2]
    H, W = size
    item = 2 * torch.finfo(spectral.compute_dtype(dtype)).bits // 8
    return int(c_out * c_in_g * H * spectral.half_width(W) * item)


# ---------------------------------------------------------------------------
# The per-frequency matrices
# ---------------------------------------------------------------------------

def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex64 if dtype == torch.float32 else torch.complex128


def _phases(n: int, freqs: torch.Tensor, offsets: torch.Tensor, dtype, device) -> torch.Tensor:
    """``exp(-2 pi i f o / n)`` (len(freqs), len(offsets)), exact integer reduction first."""
    m = torch.remainder(freqs[:, None] * offsets[None, :], n).to(torch.float64)
    ang = m * (-2.0 * math.pi / n)
    return torch.polar(torch.ones_like(ang), ang).to(dtype=dtype, device=device)


def layer_spectrum(weight: torch.Tensor, size: Tuple[int, int], groups: int = 1,
                   dilation: Tuple[int, int] = (1, 1),
                   rows: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Half-spectrum transfer matrices ``K(w)`` of a conv layer, planar layout.

    ``K[g, o, i, h, w] = sum_{a, b} weight[g*Co + o, i, a, b]
    exp(-2 pi i (h s_a / H + w t_b / W))`` with ``s_a = D_h - 1 - a d_h - D_h // 2``
    (and ``t_b`` likewise): the ``rfft2`` of the image-convention PSF
    ``spectral.conv2d_kernel_as_psf(weight, dilation)`` (flipped, dilated,
    origin ``D // 2``), evaluated directly from the ``kh * kw`` taps as two
    small separable DFTs, so that a block of rows costs no FFT and no
    ``(H, W)`` zero-padded kernel.

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw), real
    size : (H, W)
    groups : int
    dilation : (dh, dw)
    rows : (r0, r1), optional
        Only the frequency rows ``r0 <= h < r1`` (default: all ``H``).

    Returns
    -------
    Tensor (groups, C_out/groups, C_in/groups, r1 - r0, W // 2 + 1), complex.
    """
    H, W = size
    c_out, c_in_g, kh, kw = weight.shape
    dh, dw = dilation
    Dh, Dw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    r0, r1 = (0, H) if rows is None else rows
    cdt = _complex_of(weight.dtype)
    dev = weight.device
    # Offset of tap a from the PSF origin after the flip: (Dh - 1 - a*dh) - Dh//2.
    s = (Dh - 1 - Dh // 2) - dh * torch.arange(kh, dtype=torch.int64)
    t = (Dw - 1 - Dw // 2) - dw * torch.arange(kw, dtype=torch.int64)
    Eh = _phases(H, torch.arange(r0, r1, dtype=torch.int64), s, cdt, dev)       # (R, kh)
    Ew = _phases(W, torch.arange(spectral.half_width(W), dtype=torch.int64), t, cdt, dev)  # (Wf, kw)
    wc = weight.to(cdt)
    T = wc @ Ew.transpose(0, 1)                                  # (Co, Ci, kh, Wf)
    K = torch.matmul(Eh, T)                                      # (Co, Ci, R, Wf)
    return K.reshape(groups, c_out // groups, c_in_g, r1 - r0, K.shape[-1])


def planar_to_matrix(K: torch.Tensor) -> torch.Tensor:
    """(groups, M, N, R, Wf) -> (groups, R, Wf, M, N) (a view)."""
    return K.permute(0, 3, 4, 1, 2)


def matrix_to_planar(G: torch.Tensor) -> torch.Tensor:
    """(groups, R, Wf, M, N) -> contiguous (groups, M, N, R, Wf)."""
    return G.permute(0, 3, 4, 1, 2).contiguous()


def filter_from_spectrum(K: torch.Tensor, eps: float,
                         thresh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The per-frequency inverse ``G(w)`` of ``K(w)``, batched over leading dims.

    Parameters
    ----------
    K : Tensor (..., M, N), complex, matrix layout (``M = C_out/groups``,
        ``N = C_in/groups``)
    eps : float >= 0
    thresh : 0-dim real Tensor
        Only for ``eps == 0``: the global threshold ``rcond * sigma_max``;
        singular values at or below it are dropped.

    Returns
    -------
    Tensor (..., N, M), complex:

    * ``eps == 0``: ``K^+ = V diag(1/s_k if s_k > thresh else 0) U^H`` from the
      SVD ``K = U diag(s) V^H`` -- one threshold for every frequency, so the
      blocks together form the pseudo-inverse of the whole operator;
    * ``eps > 0``: ``(K^H K + eps I)^-1 K^H`` when ``N <= M``, else the equal
      ``K^H (K K^H + eps I)^-1`` (the smaller Hermitian system).
    """
    return execution.batched_linalg(lambda k: _filter_math(k, eps, thresh), K)


def pinv_from_svd(U, S, Vh, thresh) -> torch.Tensor:
    """``V diag(1/s if s > thresh else 0) U^H`` (..., N, M)."""
    keep = S > thresh
    # Where a value is dropped, divide by 1 and zero the result: no inf/NaN.
    inv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    return ((Vh.mH * inv.to(U.dtype).unsqueeze(-2)) @ U.mH).resolve_conj()


def _filter_math(K: torch.Tensor, eps: float, thresh: Optional[torch.Tensor]) -> torch.Tensor:
    M, N = K.shape[-2:]
    if eps == 0:
        U, S, Vh = torch.linalg.svd(K, full_matrices=False)
        return pinv_from_svd(U, S, Vh, thresh)
    # A = K^H K + eps I (or K K^H + eps I) is Hermitian positive definite for
    # eps > 0, never singular: solve_ex without its error check, which on CUDA
    # is a host sync per call (per row block of a matrix-free plan).
    if N <= M:
        Kh = K.mH
        A = Kh @ K + eps * torch.eye(N, dtype=K.dtype, device=K.device)
        G = torch.linalg.solve_ex(A, Kh, check_errors=False)[0]
    else:
        A = K @ K.mH + eps * torch.eye(M, dtype=K.dtype, device=K.device)
        # K^H (K K^H + eps I)^-1 = ((K K^H + eps I)^-1 K)^H, the matrix being Hermitian.
        G = torch.linalg.solve_ex(A, K, check_errors=False)[0].mH
    return G.resolve_conj()


def apply_matrices(Y: torch.Tensor, A: torch.Tensor, adjoint: bool, fused: bool) -> torch.Tensor:
    """``A(w) Y(w)`` (or ``A(w)^H Y(w)``) per group and frequency.

    Parameters
    ----------
    Y : Tensor (..., groups * Q, R, Wf), complex (``Q = N``, or ``M`` if adjoint)
    A : Tensor, complex: planar (groups, M, N, R, Wf) if ``fused``, else
        matrix layout (groups, R, Wf, M, N)
    adjoint : bool
    fused : bool
        Use the C++ op ``channel_mix`` (CPU); else batched ``torch.matmul``.

    Returns
    -------
    Tensor (..., groups * P, R, Wf) with ``P = M`` (or ``N`` if adjoint).
    """
    if fused:
        return execution.channel_mix(Y, A, adjoint)
    groups, R, Wf, M, N = A.shape
    P, Q = (N, M) if adjoint else (M, N)
    lead = Y.shape[:-3]
    B = math.prod(lead)
    F = R * Wf
    # (B, groups*Q, R, Wf) -> (groups, F, Q, B): one (P x Q) @ (Q x B) product
    # per group and frequency, the batch as the columns.
    # Contiguous first: batched matmul on the strided view is ~10x slower.
    Yr = Y.reshape(B, groups, Q, F).permute(1, 3, 2, 0).contiguous()
    Am = A.reshape(groups, F, M, N)
    X = torch.matmul(Am.mH if adjoint else Am, Yr)               # (groups, F, P, B)
    return X.permute(3, 0, 2, 1).reshape(*lead, groups * P, R, Wf)


def row_blocks(H: int, bytes_per_row: int, budget: int) -> Iterator[Tuple[int, int]]:
    step = max(1, budget // max(1, bytes_per_row))
    for r0 in range(0, H, step):
        yield r0, min(H, r0 + step)


def chunk_budget(limit: Optional[int] = None) -> int:
    return CHUNK_BYTES if limit is None else max(1, min(CHUNK_BYTES, limit))


# ---------------------------------------------------------------------------
# Singular values
# ---------------------------------------------------------------------------

def _column_multiplicity(W: int, device) -> torch.Tensor:
    """How many full-spectrum frequencies each ``rfft2`` column stands for.

    Column ``w`` also stands for the mirrored column ``W - w`` (``K(-w) =
    conj(K(w))``: the same singular values), except the self-mirrored columns
    0 and, for even ``W``, ``W / 2``. The counts sum to ``W``.
    """
    m = torch.full((spectral.half_width(W),), 2, dtype=torch.int64, device=device)
    m[0] = 1
    if W % 2 == 0:
        m[-1] = 1
    return m


def svdvals(weight: torch.Tensor, size: Tuple[int, int], groups: int = 1,
            dilation: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Every singular value of the circular conv operator, sorted descending.

    ``H * W * groups * min(C_out/groups, C_in/groups)`` values (= the number of
    singular values of the dense ``(C_out H W) x (C_in H W)`` matrix): the
    singular values of every ``K(w)`` over the full spectrum, computed on the
    half spectrum with each non-self-mirrored column counted twice.
    """
    H, W = size
    per_row = filter_bytes(weight.shape, groups, (1, W), weight.dtype)
    mult = _column_multiplicity(W, weight.device)
    parts = []
    for r0, r1 in row_blocks(H, per_row, chunk_budget()):
        K = planar_to_matrix(layer_spectrum(weight, size, groups, dilation, rows=(r0, r1)))
        S = execution.batched_linalg(torch.linalg.svdvals, K)              # (g, R, Wf, k)
        S = S.permute(2, 0, 1, 3).reshape(S.shape[2], -1)        # (Wf, g*R*k)
        parts.append(torch.repeat_interleave(S, mult, dim=0).reshape(-1))
    return torch.cat(parts).sort(descending=True).values


def opnorm(weight: torch.Tensor, size: Tuple[int, int], groups: int = 1,
           dilation: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The operator 2-norm (largest singular value) of the layer, a 0-dim tensor.

    Computed block by block (working set :data:`CHUNK_BYTES`), never holding
    all ``K(w)`` at once.
    """
    H, W = size
    per_row = filter_bytes(weight.shape, groups, (1, W), weight.dtype)
    best = None
    for r0, r1 in row_blocks(H, per_row, chunk_budget()):
        K = planar_to_matrix(layer_spectrum(weight, size, groups, dilation, rows=(r0, r1)))
        m = execution.batched_linalg(torch.linalg.svdvals, K).amax()
        best = m if best is None else torch.maximum(best, m)
    return best


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------
