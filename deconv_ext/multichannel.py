"""Multi-channel convolution layers: one small complex matrix per frequency.

A stride-1 ``F.conv2d`` layer with circular "same" padding, weight
``(C_out, C_in / groups, kh, kw)``, is block-diagonalised by the 2D DFT: at
every frequency ``w`` it multiplies the ``C_in`` input channels by a matrix
``K(w)`` of size ``C_out x C_in`` (block-diagonal over the ``groups``; each
block ``C_out/groups x C_in/groups``). Its Moore-Penrose pseudo-inverse, its
Tikhonov inverse, its singular values and its adjoint are all per-frequency
matrix operations on ``K(w)`` (DESIGN.md section 1; Sedghi, Gupta & Long,
ICLR 2019). This module computes ``K``, the filter ``G(w)`` that inverts it,
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

import contextlib
import ctypes
import functools
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Tuple

import torch

from . import _ops
from . import _validate as V
from . import backend, reference, spectral
from .plan import DeconvPlan, to_args

__all__ = [
    "DEFAULT_MAX_FILTER_BYTES",
    "CHUNK_BYTES",
    "FUSED_MAX_CHANNELS",
    "MultiChannelPlan",
    "check_conv_weight",
    "layer_spectrum",
    "filter_from_spectrum",
    "batched_linalg",
    "apply_matrices",
    "filter_bytes",
    "max_filter_bytes",
    "svdvals",
    "opnorm",
]

#: Largest stored filter ``G`` (bytes) before a plan goes matrix-free.
DEFAULT_MAX_FILTER_BYTES = 1 << 30
#: Environment variable overriding :data:`DEFAULT_MAX_FILTER_BYTES` (an int, bytes).
MAX_FILTER_BYTES_ENV = "DECONV_EXT_MAX_FILTER_BYTES"
#: Working set (bytes of per-frequency matrices) of one block of frequency rows
#: in the matrix-free mode and in the chunked singular-value computations.
CHUNK_BYTES = 64 << 20
#: Largest block side (C_in/groups and C_out/groups) applied by the fused C++ op.
FUSED_MAX_CHANNELS = 8


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def check_conv_weight(weight, groups, dilation: Tuple[int, int],
                      size: Tuple[int, int]) -> Tuple[int, int]:
    """Check a conv weight against ``groups``, ``dilation`` and the input size.

    Returns
    -------
    (C_out, C_in)
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected 4 dims "
                         f"(C_out, C_in / groups, kh, kw)")
    if weight.dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"weight has dtype {weight.dtype}; expected a real floating dtype")
    c_out, c_in_g, kh, kw = weight.shape
    if min(c_out, c_in_g, kh, kw) < 1:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected every dim >= 1")
    if (isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1
            or c_out % groups):
        raise ValueError(f"groups={groups!r} is not valid for weight of shape "
                         f"{tuple(weight.shape)}; expected a positive int dividing C_out={c_out}")
    dh, dw = dilation
    Dh, Dw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if Dh > size[0] or Dw > size[1]:
        raise ValueError(f"input_size {size} is smaller than the dilated kernel ({Dh}x{Dw}, "
                         f"kernel {kh}x{kw}, dilation {dilation}); expected H >= {Dh} and "
                         f"W >= {Dw}")
    return c_out, c_in_g * int(groups)


def _scalar_eps(eps) -> float:
    if isinstance(eps, torch.Tensor):
        raise TypeError("eps must be a float >= 0 for multi-channel layers; a per-frequency "
                        "eps tensor is supported by deconvolve/DeconvPlan only")
    return V.eps(eps, (1, 1))


def max_filter_bytes() -> int:
    """The budget of the stored filter: ``$DECONV_EXT_MAX_FILTER_BYTES`` or 1 GiB."""
    raw = os.environ.get(MAX_FILTER_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILTER_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{MAX_FILTER_BYTES_ENV}={raw!r} is not valid; expected an int >= 0 "
                         f"(bytes)")
    return value


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


def _planar_to_matrix(K: torch.Tensor) -> torch.Tensor:
    """(groups, M, N, R, Wf) -> (groups, R, Wf, M, N) (a view)."""
    return K.permute(0, 3, 4, 1, 2)


def _matrix_to_planar(G: torch.Tensor) -> torch.Tensor:
    """(groups, R, Wf, M, N) -> contiguous (groups, M, N, R, Wf)."""
    return G.permute(0, 3, 4, 1, 2).contiguous()


@functools.lru_cache(maxsize=None)
def _omp_set_num_threads():
    """``omp_set_num_threads`` of the OpenMP runtime that torch's CPU ops use, or None.

    OpenMP's thread count (the ``nthreads-var`` ICV) belongs to the calling
    thread: setting it in a worker thread changes that worker only. That is
    the one knob that lets :func:`batched_linalg` run its workers single-
    threaded without touching any process-wide state. ``torch.set_num_threads``
    cannot be used for this: it also stores the process-wide default that
    every thread reads on its first torch call, so a thread started by the
    user while a plan is being built would run single-threaded for good (and
    restoring it afterwards clobbers a setting the user made in between).

    The symbol is looked up through ``libtorch_cpu`` (dlsym on a library
    handle searches its own dependencies first), so it is torch's own OpenMP
    runtime, not another one loaded by numpy or scipy. None when torch's
    parallel backend is not OpenMP or the lookup fails: then the workers run
    with the thread count they inherit (correct, somewhat slower).
    """
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
        libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
        names = [n for n in os.listdir(libdir)
                 if n.startswith(("libtorch_cpu.", "torch_cpu.")) and
                 n.endswith((".so", ".dylib", ".dll"))]
        if not names:
            return None
        fn = ctypes.CDLL(os.path.join(libdir, names[0])).omp_set_num_threads
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = None
    return fn


@contextlib.contextmanager
def _this_thread_single_threaded():
    """Run the body with one intra-op thread in the calling thread only.

    Nothing process-wide changes: other threads, threads started meanwhile and
    ``torch.set_num_threads`` calls made elsewhere are unaffected. Used only in
    worker threads that :func:`batched_linalg` owns.
    """
    setter = _omp_set_num_threads()
    if setter is None:
        yield
        return
    # torch initialises a thread's OpenMP count lazily on its first call (from
    # the process-wide default): trigger that first, so it cannot undo ours.
    prev = torch.get_num_threads()
    setter(1)
    try:
        yield
    finally:
        setter(prev)


def batched_linalg(fn, K: torch.Tensor):
    """``fn(K)`` for a batch of small matrices K (..., m, n), parallel over the batch.

    On the CPU, LAPACK called per matrix with a multi-threaded BLAS spends its
    time in thread synchronisation: a batched 64x64 complex SVD of 2112
    matrices took 1.0-1.5 s with one intra-op thread and 5-28 s with two on
    this project's 2-core machines. So for small matrices the batch is split
    into one contiguous slice per thread, each slice runs in a worker thread
    limited to a single intra-op thread (that worker's own OpenMP setting:
    see :func:`_omp_set_num_threads`; the process-wide ``torch.set_num_threads``
    value is never changed, so concurrent callers and other threads are not
    affected), and the results are concatenated. Elsewhere (CUDA, one
    thread, few or large matrices) ``fn(K)`` is called as is. Thread-safe.

    ``fn`` returns a tensor or a tuple of tensors, each with K's batch dims
    leading.
    """
    if torch.compiler.is_compiling():
        return fn(K)  # traced: the compiler schedules it; no Python threads in a graph
    threads = torch.get_num_threads()
    batch = K.shape[:-2]
    nb = math.prod(batch)
    if (K.device.type != "cpu" or threads <= 1 or nb < 4 * threads
            or max(K.shape[-2:]) > 256):
        return fn(K)
    flat = K.reshape(nb, *K.shape[-2:])
    bounds = [nb * i // threads for i in range(threads + 1)]
    grad = torch.is_grad_enabled()

    def run(i):
        with torch.set_grad_enabled(grad), _this_thread_single_threaded():
            return fn(flat[bounds[i]:bounds[i + 1]])

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(run, range(threads)))
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p).reshape(*batch, *p[0].shape[1:]) for p in zip(*parts))
    return torch.cat(parts).reshape(*batch, *parts[0].shape[1:])


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
    return batched_linalg(lambda k: _filter_math(k, eps, thresh), K)


def _pinv_from_svd(U, S, Vh, thresh) -> torch.Tensor:
    """``V diag(1/s if s > thresh else 0) U^H`` (..., N, M)."""
    keep = S > thresh
    # Where a value is dropped, divide by 1 and zero the result: no inf/NaN.
    inv = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    return ((Vh.mH * inv.to(U.dtype).unsqueeze(-2)) @ U.mH).resolve_conj()


def _filter_math(K: torch.Tensor, eps: float, thresh: Optional[torch.Tensor]) -> torch.Tensor:
    M, N = K.shape[-2:]
    if eps == 0:
        U, S, Vh = torch.linalg.svd(K, full_matrices=False)
        return _pinv_from_svd(U, S, Vh, thresh)
    if N <= M:
        Kh = K.mH
        A = Kh @ K + eps * torch.eye(N, dtype=K.dtype, device=K.device)
        G = torch.linalg.solve(A, Kh)
    else:
        A = K @ K.mH + eps * torch.eye(M, dtype=K.dtype, device=K.device)
        # K^H (K K^H + eps I)^-1 = ((K K^H + eps I)^-1 K)^H, the matrix being Hermitian.
        G = torch.linalg.solve(A, K).mH
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
        return _ops.ops.channel_mix(Y, A, adjoint)
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


def _row_blocks(H: int, bytes_per_row: int, budget: int) -> Iterator[Tuple[int, int]]:
    step = max(1, budget // max(1, bytes_per_row))
    for r0 in range(0, H, step):
        yield r0, min(H, r0 + step)


def _chunk_budget(limit: Optional[int] = None) -> int:
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
    for r0, r1 in _row_blocks(H, per_row, _chunk_budget()):
        K = _planar_to_matrix(layer_spectrum(weight, size, groups, dilation, rows=(r0, r1)))
        S = batched_linalg(torch.linalg.svdvals, K)              # (g, R, Wf, k)
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
    for r0, r1 in _row_blocks(H, per_row, _chunk_budget()):
        K = _planar_to_matrix(layer_spectrum(weight, size, groups, dilation, rows=(r0, r1)))
        m = batched_linalg(torch.linalg.svdvals, K).amax()
        best = m if best is None else torch.maximum(best, m)
    return best


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------

class MultiChannelPlan(DeconvPlan):
    """Reusable pseudo-inverse / Tikhonov inverse of one multi-channel conv layer.

    Forward model (layer convention, DESIGN.md section 1):
    ``output = F.conv2d(F.pad(input, pads, mode="circular"), weight, bias,
    dilation=dilation, groups=groups)`` with the padding of ``padding="same"``.
    Per frequency ``w`` (half spectrum) and group, with ``K(w)`` the
    ``C_out/groups x C_in/groups`` transfer matrix, the plan applies

    * ``eps == 0``: ``X = K(w)^+ (Y - b)``, the Moore-Penrose pseudo-inverse
      with singular values ``<= rcond * sigma_max`` dropped, ``sigma_max`` the
      largest singular value of the whole operator (all frequencies and
      groups): the same as ``torch.linalg.pinv(A, rtol=rcond)`` of the dense
      operator ``A``. ``C_out < C_in`` gives the minimum-norm solution,
      ``C_out > C_in`` the least-squares one.
    * ``eps > 0``: ``X = (K^H K + eps I)^-1 K^H (Y - b)`` (computed on the smaller
      side), the minimiser of ``||A x + b - y||^2 + eps ||x||^2``.

    ``b`` is the bias (a constant per output channel).

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw)
    image_size : (H, W)
    groups : int, dividing C_out
    dilation : int or (int, int)
    bias : Tensor (C_out,), optional
    eps : float >= 0
    rcond : float in [0, 1), optional
        Default ``spectral.default_rcond((H, W), dtype)``. Ignored if ``eps > 0``.
    max_filter_bytes : int, optional
        Budget of the stored filter (default :func:`max_filter_bytes`); a larger
        filter makes the plan matrix-free (see the module docstring).

    Attributes
    ----------
    mode : {"filter", "matrix_free"}
    fused : bool
        Whether ``G`` is applied by the C++ op (else ``torch.matmul``).
    filter : Tensor or None
        ``G``: planar (groups, C_in/g, C_out/g, H, Wf) if ``fused``, else
        (groups, H, Wf, C_in/g, C_out/g); None when matrix-free.

    Notes
    -----
    Costs per call: one ``rfft2`` of the output, one ``G`` application
    (``C_in C_out / groups`` complex multiply-adds per frequency and sample),
    one ``irfft2``. ``blur`` and ``adjoint`` cache ``K`` (same size as ``G``)
    on first use in the stored mode.
    """

    def __init__(self, weight: torch.Tensor, image_size, groups: int = 1, dilation=1,
                 bias: Optional[torch.Tensor] = None, eps: float = 0.0,
                 rcond: Optional[float] = None, *, max_filter_bytes: Optional[int] = None):
        size = V.size2("image_size", image_size)
        dil = V.pair("dilation", dilation)
        c_out, c_in = check_conv_weight(weight, groups, dil, size)
        eps = _scalar_eps(eps)
        rcond = V.rcond(rcond)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (c_out,):
                raise ValueError(f"bias must be a tensor of shape ({c_out},), got "
                                 f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else bias!r}")
            if bias.dtype not in V.FLOAT_DTYPES:
                raise TypeError(f"bias has dtype {bias.dtype}; expected a real floating dtype")
            V.same_device("bias", bias, "weight", weight)
        if max_filter_bytes is not None and (isinstance(max_filter_bytes, bool) or not isinstance(
                max_filter_bytes, numbers.Integral) or max_filter_bytes < 0):
            raise ValueError(f"max_filter_bytes={max_filter_bytes!r} is not valid; expected an "
                             f"int >= 0 (bytes) or None")
        self.image_size: Tuple[int, int] = size
        self.groups = int(groups)
        self.dilation = dil
        self.c_out, self.c_in = c_out, c_in
        self.dtype = spectral.compute_dtype(weight.dtype)
        self.method = "pinv" if eps == 0 else "tikhonov"
        self.eps = eps
        self.rcond = rcond
        self.max_filter_bytes = max_filter_bytes
        self.weight = weight.to(self.dtype)
        self.bias = bias.to(self.dtype) if bias is not None else None
        self._build()

    # -- construction -------------------------------------------------------
    def _build(self) -> None:
        size, dtype, w = self.image_size, self.dtype, self.weight
        M, N = self.c_out // self.groups, self.c_in // self.groups
        self.fused = (w.device.type == "cpu" and max(M, N) <= FUSED_MAX_CHANNELS
                      and _ops.available() and backend.selected() != "triton")
        budget = max_filter_bytes() if self.max_filter_bytes is None else self.max_filter_bytes
        nbytes = filter_bytes(w.shape, self.groups, size, dtype)
        self.mode = "filter" if nbytes <= budget else "matrix_free"
        self._chunk = _chunk_budget(budget)
        self._K = None
        self.filter = None
        self.thresh = None
        rcond = spectral.default_rcond(size, dtype) if self.rcond is None else self.rcond
        if self.mode == "filter":
            K = _planar_to_matrix(layer_spectrum(w, size, self.groups, self.dilation))
            if self.eps == 0:
                # One SVD serves both the global threshold and the filter.
                U, S, Vh = batched_linalg(lambda k: torch.linalg.svd(k, full_matrices=False), K)
                # The threshold selects which singular values to keep: not differentiated.
                self.thresh = rcond * S.detach().amax()
                G = _pinv_from_svd(U, S, Vh, self.thresh)           # (g, H, Wf, N, M)
            else:
                G = filter_from_spectrum(K, self.eps, None)
            self.filter = _matrix_to_planar(G) if self.fused else G.contiguous()
        elif self.eps == 0:
            with torch.no_grad():
                self.thresh = rcond * opnorm(w.detach(), size, self.groups, self.dilation)

    @classmethod
    def for_conv2d(cls, weight, image_size, groups=1, dilation=1, bias=None, eps=0.0, rcond=None):
        return cls(weight, image_size, groups=groups, dilation=dilation, bias=bias, eps=eps,
                   rcond=rcond)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "MultiChannelPlan":
        """A copy of the plan on another device and/or computation dtype (rebuilt);
        called like ``Tensor.to`` (see :meth:`DeconvPlan.to`)."""
        device, dtype = to_args(device, dtype)
        new = object.__new__(type(self))
        new.__dict__.update(self.__getstate__())
        new.dtype = dtype or self.dtype
        new.weight = self.weight.to(device=device, dtype=new.dtype)
        new.bias = self.bias.to(device=device, dtype=new.dtype) if self.bias is not None else None
        new._build()
        return new

    # G and K are derived; DeconvPlan's __getstate__/__setstate__ store these.
    _STATE_KEYS = ("image_size", "groups", "dilation", "c_out", "c_in", "dtype", "method", "eps",
                   "rcond", "max_filter_bytes", "weight", "bias")

    def __repr__(self) -> str:
        return (f"MultiChannelPlan(weight={tuple(self.weight.shape)}, image_size={self.image_size}, "
                f"groups={self.groups}, dilation={self.dilation}, eps={self.eps}, "
                f"rcond={self.rcond}, mode={self.mode!r}, fused={self.fused}, "
                f"dtype={self.dtype}, device={self.weight.device})")

    # -- checks -------------------------------------------------------------
    def _check_mc(self, x: torch.Tensor, name: str, channels: int) -> None:
        V.image(x, name)
        if x.dim() < 3 or x.shape[-3] != channels:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (..., {channels}, "
                             f"{self.image_size[0]}, {self.image_size[1]})")
        V.plan_input(x, name, self.image_size, self.weight, self.dtype)

    def _out_shape(self, x: torch.Tensor, channels: int):
        return (*x.shape[:-3], channels, *self.image_size)

    # -- per-frequency matrices on demand -------------------------------------
    def _blocks(self):
        per_row = filter_bytes(self.weight.shape, self.groups, (1, self.image_size[1]),
                               self.dtype)
        return _row_blocks(self.image_size[0], per_row, self._chunk)

    def _K_stored(self) -> torch.Tensor:
        if self._K is None:
            K = layer_spectrum(self.weight, self.image_size, self.groups, self.dilation)
            self._K = K.contiguous() if self.fused else _planar_to_matrix(K).contiguous()
        return self._K

    def _K_block(self, r0: int, r1: int) -> torch.Tensor:
        K = layer_spectrum(self.weight, self.image_size, self.groups, self.dilation, rows=(r0, r1))
        return K.contiguous() if self.fused else _planar_to_matrix(K)

    def _G_block(self, r0: int, r1: int) -> torch.Tensor:
        K = _planar_to_matrix(layer_spectrum(self.weight, self.image_size, self.groups,
                                             self.dilation, rows=(r0, r1)))
        G = filter_from_spectrum(K, self.eps, self.thresh)
        return _matrix_to_planar(G) if self.fused else G

    def _mix(self, Y: torch.Tensor, which: str, adjoint: bool) -> torch.Tensor:
        if self.mode == "filter":
            A = self.filter if which == "G" else self._K_stored()
            return apply_matrices(Y, A, adjoint, self.fused)
        block = self._G_block if which == "G" else self._K_block
        parts = [apply_matrices(Y[..., r0:r1, :], block(r0, r1), adjoint, self.fused)
                 for r0, r1 in self._blocks()]
        return torch.cat(parts, dim=-2)

    # -- application --------------------------------------------------------
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Solve for the layer input given its ``output`` (..., C_out, H, W).

        Returns
        -------
        Tensor (..., C_in, H, W), ``image``'s dtype.
        """
        self._check_mc(image, "output", self.c_out)
        if image.numel() == 0:
            return image.new_empty(self._out_shape(image, self.c_in))
        if backend.selected() == "torch":
            return reference.conv2d_pinv(image, self.weight, self.bias, groups=self.groups,
                                         dilation=self.dilation, eps=self.eps,
                                         rcond=self.rcond).to(image.dtype)
        y = image.to(self.dtype)
        if self.bias is not None:
            y = y - self.bias[:, None, None]
        X = self._mix(torch.fft.rfft2(y), "G", adjoint=False)
        return torch.fft.irfft2(X, s=self.image_size).to(image.dtype)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """The forward model: the layer applied to ``x`` (..., C_in, H, W) -> (..., C_out, H, W)."""
        self._check_mc(x, "x", self.c_in)
        if x.numel() == 0:
            return x.new_empty(self._out_shape(x, self.c_out))
        xc = x.to(self.dtype)
        if backend.selected() == "torch":
            out = reference.conv2d_forward(xc, self.weight, None, self.groups, self.dilation)
        else:
            out = torch.fft.irfft2(self._mix(torch.fft.rfft2(xc), "K", adjoint=False),
                                   s=self.image_size)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of the layer's linear part (..., C_out, H, W) -> (..., C_in, H, W)."""
        self._check_mc(y, "y", self.c_out)
        if y.numel() == 0:
            return y.new_empty(self._out_shape(y, self.c_in))
        yc = y.to(self.dtype)
        if backend.selected() == "torch":
            K = reference.layer_transfer_matrix(self.weight, self.image_size, self.groups,
                                                self.dilation)
            Y = torch.fft.fft2(yc).movedim(-3, -1).unsqueeze(-1)
            out = torch.fft.ifft2((K.mH @ Y).squeeze(-1).movedim(-1, -3)).real
        else:
            out = torch.fft.irfft2(self._mix(torch.fft.rfft2(yc), "K", adjoint=True),
                                   s=self.image_size)
        return out.to(y.dtype)
