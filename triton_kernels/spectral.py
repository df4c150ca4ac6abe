"""Fused per-frequency kernels: the regularised spectral solve, the spectral
multiply (forward blur / adjoint) and their gradients.

Same names, signatures and per-element maths as the C++ ops of
``csrc/spectral.cpp`` (``torch.ops.deconv_ext.*``). Complex tensors are read
through ``torch.view_as_real`` as interleaved (re, im) float pairs, loaded as
``[BLOCK, 2]`` tiles and split in registers: each input is read once and the
output written once, with full-width memory transactions. The kernel
spectrum, regulariser and threshold are broadcast over the spectrum's leading
dims by stride-0 index arithmetic, never materialised.

Layout: kernels first, then the launchers (Liger-Kernel style).
"""
from typing import List, Optional, Sequence, Tuple

import torch

from . import _interpret  # noqa: F401  (must precede the @triton.jit definitions)
from ._layout import (MAX_LEAD, at_offset, broadcast_strides, coalesce, needs_int64, next_pow2,
                      on_device, split_outer)

import triton
import triton.language as tl

__all__ = ["spectral_solve", "spectral_solve_", "spectral_mul", "spectral_solve_backward", "spectral_mul_grad_k"]


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _coords(D1, D2, NBLK, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """This program's leading coordinates (i0, i1, i2), the first column of its
    block of the last dim, and the block's columns."""
    pid = tl.program_id(0)
    row = pid // NBLK
    blk = pid % NBLK
    i2 = row % D2
    rest = row // D2
    i1 = rest % D1
    i0 = rest // D1
    start = blk * BLOCK
    cols = start + tl.arange(0, BLOCK)
    if INT64:
        # Offsets beyond 2**31 elements: the scalar coordinates are promoted
        # by the stride products below; the vector part needs it explicitly.
        cols = cols.to(tl.int64)
        start = start.to(tl.int64)
        i0 = i0.to(tl.int64)
        i1 = i1.to(tl.int64)
        i2 = i2.to(tl.int64)
    return i0, i1, i2, start, cols


@triton.jit
def _load_pair(ptr, base, start, cols, s3, mask, L, FLAT: tl.constexpr, BLOCK: tl.constexpr):
    """(re, im) of the complex elements ``base + cols * s3`` (complex units).

    FLAT (unit stride): the block's pairs are ``2 * BLOCK`` consecutive
    floats, loaded flat (16-byte vector accesses) and split in registers.
    Otherwise one ``[BLOCK, 2]`` load with the float offset written as
    ``2 * element + (0, 1)``, so each pair is provably 8-byte aligned.
    """
    if FLAT:
        j = tl.arange(0, 2 * BLOCK)
        v = tl.load(ptr + (base + start) * 2 + j, mask=j < (L - start) * 2, other=0.0)
        return tl.split(tl.reshape(v, [BLOCK, 2]))
    else:
        offs = ((base + cols * s3) * 2)[:, None] + tl.arange(0, 2)[None, :]
        return tl.split(tl.load(ptr + offs, mask=mask[:, None], other=0.0))


@triton.jit
def _store_pair(ptr, base, start, cols, s3, mask, L, re, im, FLAT: tl.constexpr,
                BLOCK: tl.constexpr):
    if FLAT:
        j = tl.arange(0, 2 * BLOCK)
        v = tl.reshape(tl.join(re, im), [2 * BLOCK])
        tl.store(ptr + (base + start) * 2 + j, v, mask=j < (L - start) * 2)
    else:
        offs = ((base + cols * s3) * 2)[:, None] + tl.arange(0, 2)[None, :]
        tl.store(ptr + offs, tl.join(re, im), mask=mask[:, None])


@triton.jit
def _load_real(ptr, base, cols, s3, mask, CONST: tl.constexpr):
    """Real element ``base + cols * s3``; CONST: s3 == 0 (one value for the
    whole block, e.g. the per-sample threshold), read as a scalar."""
    if CONST:
        return tl.load(ptr + base)
    else:
        return tl.load(ptr + base + cols * s3, mask=mask, other=0.0)


@triton.jit
def _regularised_power(t_ptr, r_ptr, eps, i0, i1, i2, st0, st1, st2, st3, sr0, sr1, sr2, sr3,
                       cols, mask, kr, ki, HAS_REG: tl.constexpr, T_CONST: tl.constexpr,
                       BLOCK: tl.constexpr):
    """``(|K|^2, p, p > 0, kept)`` for the solve and its backward, as
    ``solve_one`` in csrc/spectral.cpp: p = eps * reg (or eps); a frequency is
    kept where Tikhonov applies (p > 0) or |K|^2 > thresh -- written as C++'s
    !(k2 > thr2), so NaN drops it."""
    thr2 = _load_real(t_ptr, i0 * st0 + i1 * st1 + i2 * st2, cols, st3, mask, T_CONST)
    # eps arrives as a float64 scalar; C++ casts it to the compute type first.
    e = tl.full((), eps, tl.float64).to(kr.dtype)
    if HAS_REG:
        reg = _load_real(r_ptr, i0 * sr0 + i1 * sr1 + i2 * sr2, cols, sr3, mask, False)
        p = e * reg
    else:
        p = tl.full([BLOCK], 0.0, kr.dtype) + e
    k2 = kr * kr + ki * ki
    tik = p > 0.0
    return k2, p, tik, tik | (k2 > thr2)


@triton.jit
def _reciprocal(x, F32: tl.constexpr):
    """1 / x; in float32 IEEE-rounded (div_rn), like the CPU."""
    if F32:
        return tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), x)
    else:
        return 1.0 / x


@triton.jit
def _solve_kernel(out_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps: tl.float64,
                  D1, D2, L, NBLK,
                  so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                  st0, st1, st2, st3, sr0, sr1, sr2, sr3,
                  HAS_REG: tl.constexpr, F32: tl.constexpr, T_CONST: tl.constexpr,
                  K_CONJ: tl.constexpr, FLAT: tl.constexpr, INT64: tl.constexpr,
                  BLOCK: tl.constexpr):
    """X = conj(K) Y / (|K|^2 + p) where p = eps * reg > 0, else Y / K where
    |K|^2 > thresh, else 0 (``solve_one`` in csrc/spectral.cpp)."""
    i0, i1, i2, start, cols = _coords(D1, D2, NBLK, BLOCK, INT64)
    mask = cols < L
    yr, yi = _load_pair(y_ptr, i0 * sy0 + i1 * sy1 + i2 * sy2, start, cols, sy3,
                        mask, L, FLAT, BLOCK)
    kr, ki = _load_pair(k_ptr, i0 * sk0 + i1 * sk1 + i2 * sk2, start, cols, sk3,
                        mask, L, FLAT, BLOCK)
    if K_CONJ:  # k is a lazy conjugate: its memory holds conj(K)
        ki = -ki
    k2, p, tik, keep = _regularised_power(t_ptr, r_ptr, eps, i0, i1, i2, st0, st1, st2, st3,
                                          sr0, sr1, sr2, sr3, cols, mask, kr, ki,
                                          HAS_REG, T_CONST, BLOCK)
    den = tl.where(tik, k2 + p, k2)
    den = tl.where(keep, den, 1.0)  # never divide by a dropped (possibly zero) denominator
    inv = _reciprocal(den, F32)
    xr = tl.where(keep, (kr * yr + ki * yi) * inv, 0.0)
    xi = tl.where(keep, (kr * yi - ki * yr) * inv, 0.0)
    _store_pair(out_ptr, i0 * so0 + i1 * so1 + i2 * so2, start, cols, so3, mask, L, xr, xi,
                FLAT, BLOCK)


@triton.jit
def _mul_kernel(out_ptr, y_ptr, k_ptr,
                D1, D2, L, NBLK,
                so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                CONJ: tl.constexpr, FLAT: tl.constexpr, INT64: tl.constexpr,
                BLOCK: tl.constexpr):
    """K * Y, or conj(K) * Y (``mul_kernel`` in csrc/spectral.cpp)."""
    i0, i1, i2, start, cols = _coords(D1, D2, NBLK, BLOCK, INT64)
    mask = cols < L
    yr, yi = _load_pair(y_ptr, i0 * sy0 + i1 * sy1 + i2 * sy2, start, cols, sy3,
                        mask, L, FLAT, BLOCK)
    kr, ki = _load_pair(k_ptr, i0 * sk0 + i1 * sk1 + i2 * sk2, start, cols, sk3,
                        mask, L, FLAT, BLOCK)
    if CONJ:
        ki = -ki
    # (a + bi)(c + di) = (ac - bd) + (ad + bc)i with a + bi = K, as c10::complex.
    _store_pair(out_ptr, i0 * so0 + i1 * so1 + i2 * so2, start, cols, so3, mask, L,
                kr * yr - ki * yi, kr * yi + ki * yr, FLAT, BLOCK)


@triton.jit
def _solve_backward_kernel(gk_ptr, gp_ptr, g_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps: tl.float64,
                           D1, D2, L, NBLK,
                           so0, so1, so2, so3, sq0, sq1, sq2, sq3,
                           sg0, sg1, sg2, sg3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                           st0, st1, st2, st3, sr0, sr1, sr2, sr3,
                           HAS_REG: tl.constexpr, F32: tl.constexpr, T_CONST: tl.constexpr,
                           FLAT: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """Per-element gradients of X = conj(K) Y / d, d = |K|^2 + p (PyTorch's
    complex convention), as ``solve_backward_kernel`` in csrc/spectral.cpp:

    dL/dK = (-(g K conj(Y)) K + conj(g) Y p) / d^2,  dL/dp = -Re(g K conj(Y)) / d^2,
    zero where the pseudo-inverse threshold drops the frequency.
    """
    i0, i1, i2, start, cols = _coords(D1, D2, NBLK, BLOCK, INT64)
    mask = cols < L
    gr, gi = _load_pair(g_ptr, i0 * sg0 + i1 * sg1 + i2 * sg2, start, cols, sg3,
                        mask, L, FLAT, BLOCK)
    yr, yi = _load_pair(y_ptr, i0 * sy0 + i1 * sy1 + i2 * sy2, start, cols, sy3,
                        mask, L, FLAT, BLOCK)
    kr, ki = _load_pair(k_ptr, i0 * sk0 + i1 * sk1 + i2 * sk2, start, cols, sk3,
                        mask, L, FLAT, BLOCK)
    k2, p, tik, live = _regularised_power(t_ptr, r_ptr, eps, i0, i1, i2, st0, st1, st2, st3,
                                          sr0, sr1, sr2, sr3, cols, mask, kr, ki,
                                          HAS_REG, T_CONST, BLOCK)
    d = tl.where(tik, k2 + p, k2)
    d2 = tl.where(live, d * d, 1.0)
    inv2 = _reciprocal(d2, F32)
    # gky = (g * k) * conj(y), in the operation order of the C++ code.
    ar = gr * kr - gi * ki
    ai = gr * ki + gi * kr
    cr = ar * yr + ai * yi
    ci = ai * yr - ar * yi
    # -gky * k + conj(g) * y * p
    ur = gr * yr + gi * yi
    ui = gr * yi - gi * yr
    gkr = (ci * ki - cr * kr + ur * p) * inv2
    gki = (-(cr * ki) - ci * kr + ui * p) * inv2
    gkr = tl.where(live, gkr, 0.0)
    gki = tl.where(live, gki, 0.0)
    gp = tl.where(live, -cr * inv2, 0.0)
    _store_pair(gk_ptr, i0 * so0 + i1 * so1 + i2 * so2, start, cols, so3, mask, L, gkr, gki,
                FLAT, BLOCK)
    tl.store(gp_ptr + (i0 * sq0 + i1 * sq1 + i2 * sq2) + cols * sq3, gp, mask=mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
# Which kernel operands are complex (float pairs): out, y, k, thresh, reg / gk, gp, g, y, k, ...
_SOLVE_PAIRS = (True, True, True, False, False)
_BACKWARD_PAIRS = (True, False, True, True, True, False, False)


def _check_spectrum(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in _REAL:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise RuntimeError(f"{name} must be complex64 or complex128, got {got}")


def _check_broadcasts(t: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if t.dim() > y.dim():
        raise RuntimeError(f"{name} has more dims ({t.dim()}) than y ({y.dim()})")
    for i in range(1, t.dim() + 1):
        if t.shape[-i] not in (1, y.shape[-i]):
            raise RuntimeError(f"{name} of shape {tuple(t.shape)} does not broadcast to y of "
                               f"shape {tuple(y.shape)}")


def _check_device(y: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    """A mixed-device call is a clear error here, not a fault inside a kernel."""
    for name, t in others.items():
        if t is not None and t.device != y.device:
            raise ValueError(f"{name} is on {t.device} but y is on {y.device}; expected all "
                             f"tensors of the call on one device")




def _spec_strides(t: torch.Tensor, shape: Sequence[int]) -> List[int]:
    """Strides of a complex tensor broadcast to ``shape``, in complex elements."""
    return broadcast_strides(t, shape)


#: (BLOCK, num_warps) forced for every launch, for tests (many blocks and
#: masked tails on tiny shapes) and tuning (benchmarks/bench_gpu.py); None: automatic.
BLOCK_OVERRIDE: Optional[Tuple[int, int]] = None


def _block(L: int, dtype: torch.dtype) -> Tuple[int, int]:
    """(BLOCK complex elements, num_warps) for a last dim of ``L``."""
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE
    if _interpret.INTERPRETED:
        # The interpreter's cost is per program: few, large blocks.
        return min(next_pow2(L), 1 << 14), 4
    block = 1024 if dtype == torch.float32 else 512
    return min(block, max(128, next_pow2(L))), 4


def _launch(kernel, y: torch.Tensor, ptrs: Sequence[torch.Tensor], strides: Sequence[List[int]],
            is_pair: Sequence[bool], scalars: Sequence, real_dtype: torch.dtype,
            thresh_at: Optional[int] = None, **constexprs) -> None:
    """Coalesce the iteration space of ``y.shape`` and launch ``kernel`` on it.

    ``ptrs[i]`` is addressed with ``strides[i]``, in complex elements for
    the spectra (``is_pair[i]``; their float offsets are twice that, plus 1)
    and in elements for the real operands.
    """
    shape, st = coalesce(list(y.shape), strides)
    int64 = needs_int64(shape, [[2 * x for x in s] if pair else s for s, pair in zip(st, is_pair)],
                        extra=1)
    for offs, sh, st_in in split_outer(shape, st, MAX_LEAD + 1):
        D0, D1, D2, L = sh
        block, warps = _block(L, real_dtype)
        nblk = triton.cdiv(L, block)
        grid = (D0 * D1 * D2 * nblk,)
        args = [at_offset(p, 2 * o if pair else o) for p, o, pair in zip(ptrs, offs, is_pair)]
        # Every spectrum contiguous along the vectorised dim: flat 16-byte accesses.
        unit = all(s[-1] == 1 for s, pair in zip(st_in, is_pair) if pair)
        strides_flat = [s for op in st_in for s in op]
        if thresh_at is not None:  # a threshold constant along the block: scalar read
            constexprs["T_CONST"] = st_in[thresh_at][-1] == 0
        kernel[grid](*args, *scalars, D1, D2, L, nblk, *strides_flat, FLAT=unit, INT64=int64,
                     BLOCK=block, num_warps=warps, **constexprs)


def _run_solve(out: torch.Tensor, y: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor],
               eps: float, thresh: torch.Tensor) -> None:
    """Check the operands (as ``run_solve`` in C++) and solve into ``out``,
    which is a new tensor or ``y`` itself (element-wise, so in place is safe)."""
    _check_spectrum(y, "y")
    _check_spectrum(k, "k")
    if k.dtype != y.dtype:
        raise RuntimeError(f"k dtype {k.dtype} differs from y dtype {y.dtype}")
    _check_broadcasts(k, y, "k")
    real = _REAL[y.dtype]
    if thresh.dtype != real:
        raise RuntimeError(f"thresh must be {real}, got {thresh.dtype}")
    _check_broadcasts(thresh, y, "thresh")
    if not eps >= 0.0:
        raise RuntimeError(f"eps must be >= 0, got {eps}")
    if reg is not None:
        if reg.dtype != real:
            raise RuntimeError(f"reg must be {real}, got {reg.dtype}")
        _check_broadcasts(reg, y, "reg")
    _check_device(y, k=k, reg=reg, thresh=thresh)
    if y.numel() == 0:
        return
    # Raw reads ignore a lazy conjugate bit (they would read a lazily conjugated tensor as not conjugated). y is
    # materialised (it is output-sized anyway); the broadcast k is read raw
    # through k.conj() (a view of the same memory, without the bit) and
    # conjugated in registers: a shared spectrum is never expanded.
    k_conj = k.is_conj()
    if k_conj:
        k = k.conj()
    if out is not y:
        y = y.resolve_conj()
    shape = list(y.shape)
    o = torch.view_as_real(out)
    yv = o if out is y else torch.view_as_real(y)
    kv = torch.view_as_real(k)
    r = reg if reg is not None else thresh  # an unused, valid pointer
    strides = [_spec_strides(out, shape), _spec_strides(y, shape), _spec_strides(k, shape),
               broadcast_strides(thresh, shape),
               broadcast_strides(reg, shape) if reg is not None else [0] * len(shape)]
    with on_device(y):
        _launch(_solve_kernel, y, (o, yv, kv, thresh, r), strides, _SOLVE_PAIRS, (float(eps),), real, 3,
                HAS_REG=reg is not None, F32=real == torch.float32, K_CONJ=k_conj)


def spectral_solve(y: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor], eps: float,
                   thresh: torch.Tensor) -> torch.Tensor:
    """Fused regularised solve, one pass: ``torch.ops.deconv_ext.spectral_solve``.

    Per frequency, with ``p = eps * reg`` (``eps`` where ``reg`` is None):
    ``X = conj(K) Y / (|K|^2 + p)`` where ``p > 0``; elsewhere the
    pseudo-inverse ``Y / K`` where ``|K|^2 > thresh``, else 0.

    Parameters
    ----------
    y : complex Tensor (..., H, Wf)
        The observation's spectrum (complex64 or complex128, any strides).
    k : complex Tensor broadcastable to y, same dtype
        The kernel's transfer function; lazily conjugated tensors are fine.
    reg : real Tensor broadcastable to y, or None
        ``|R|^2`` (or ``e(w) |R|^2``); None means 1.
    eps : float >= 0
    thresh : real Tensor broadcastable to y
        The threshold on ``|K|^2``, ``(rcond * sigma_max)^2``.

    Returns
    -------
    complex Tensor (..., H, Wf), new and contiguous.
    """
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device) if isinstance(y, torch.Tensor) else y
    _run_solve(out, y, k, reg, eps, thresh)
    return out


def spectral_solve_(y: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor], eps: float,
                    thresh: torch.Tensor) -> None:
    """In-place :func:`spectral_solve`: overwrites ``y`` with ``X``
    (``torch.ops.deconv_ext.spectral_solve_``); saves a spectrum-sized buffer.

    Parameters
    ----------
    y : complex Tensor (..., H, Wf), written in place
        Any strides without internal overlap; not lazily conjugated.
    k, reg, eps, thresh : as for :func:`spectral_solve`
    """
    if isinstance(y, torch.Tensor) and y.is_conj():
        raise RuntimeError("spectral_solve_: y must not carry a lazy conjugate bit")
    if isinstance(y, torch.Tensor) and any(n > 1 and s == 0 for n, s in zip(y.shape, y.stride())):
        raise RuntimeError("spectral_solve_: y has internal overlap (a broadcast/expanded "
                           "tensor); every element must have its own memory")
    _run_solve(y, y, k, reg, eps, thresh)


def spectral_mul(y: torch.Tensor, k: torch.Tensor, conj: bool) -> torch.Tensor:
    """``K * Y`` (the forward blur) or ``conj(K) * Y`` (its adjoint), one pass.

    Parameters
    ----------
    y : complex Tensor (..., H, Wf)
    k : complex Tensor broadcastable to y, same dtype
    conj : bool

    Returns
    -------
    complex Tensor (..., H, Wf), new and contiguous.
    """
    _check_spectrum(y, "y")
    _check_spectrum(k, "k")
    if k.dtype != y.dtype:
        raise RuntimeError(f"k dtype {k.dtype} differs from y dtype {y.dtype}")
    _check_broadcasts(k, y, "k")
    _check_device(y, k=k)
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if out.numel() == 0:
        return out
    # Raw reads ignore the conjugate bit: y is materialised, a lazily
    # conjugated k is read raw and conjugated in registers (never expanded).
    y = y.resolve_conj()
    if k.is_conj():
        k, conj = k.conj(), not conj
    shape = list(y.shape)
    strides = [_spec_strides(out, shape), _spec_strides(y, shape), _spec_strides(k, shape)]
    with on_device(y):
        _launch(_mul_kernel, y, (torch.view_as_real(out), torch.view_as_real(y),
                                 torch.view_as_real(k)), strides,
                (True, True, True), (), _REAL[y.dtype], CONJ=bool(conj))
    return out


def spectral_solve_backward(grad: torch.Tensor, y: torch.Tensor, k: torch.Tensor,
                            reg: Optional[torch.Tensor], eps: float, thresh: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`spectral_solve` w.r.t. ``k`` and ``reg``.

    Parameters
    ----------
    grad : complex Tensor, y's shape
        dL/dX.
    y, k, reg, eps, thresh : as for :func:`spectral_solve`

    Returns
    -------
    grad_k : complex Tensor, k's shape (summed over the dims k was broadcast along)
    grad_reg : real Tensor, reg's shape (``eps * dL/dp`` summed likewise), or,
        when ``reg`` is None, the 0-dim ``dL/dp`` summed over everything,
        i.e. dL/deps.
    """
    _check_spectrum(grad, "grad")
    _check_spectrum(y, "y")
    _check_spectrum(k, "k")
    if tuple(grad.shape) != tuple(y.shape):
        raise RuntimeError(f"grad shape {tuple(grad.shape)} != y shape {tuple(y.shape)}")
    _check_broadcasts(k, y, "k")
    _check_broadcasts(thresh, y, "thresh")
    if reg is not None:
        _check_broadcasts(reg, y, "reg")
    _check_device(y, grad=grad, k=k, reg=reg, thresh=thresh)
    real = _REAL[y.dtype]
    if grad.dtype != y.dtype or k.dtype != y.dtype or thresh.dtype != real or (
            reg is not None and reg.dtype != real):
        raise RuntimeError(f"spectral_solve_backward: dtypes differ (grad {grad.dtype}, y {y.dtype}, "
                           f"k {k.dtype}, thresh {thresh.dtype}"
                           f"{'' if reg is None else f', reg {reg.dtype}'})")
    gk_full = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    gp_full = torch.empty(y.shape, dtype=real, device=y.device)
    if y.numel() > 0:
        shape = list(y.shape)
        r = reg if reg is not None else thresh
        grad, y, k = grad.resolve_conj(), y.resolve_conj(), k.resolve_conj()
        ptrs = (torch.view_as_real(gk_full), gp_full, torch.view_as_real(grad), torch.view_as_real(y),
                torch.view_as_real(k),
                thresh, r)
        strides = [_spec_strides(gk_full, shape), broadcast_strides(gp_full, shape),
                   _spec_strides(grad, shape), _spec_strides(y, shape), _spec_strides(k, shape),
                   broadcast_strides(thresh, shape),
                   broadcast_strides(reg, shape) if reg is not None else [0] * len(shape)]
        with on_device(y):
            _launch(_solve_backward_kernel, y, ptrs, strides, _BACKWARD_PAIRS, (float(eps),), real, 5,
                    HAS_REG=reg is not None, F32=real == torch.float32)
    else:
        gk_full.zero_()
        gp_full.zero_()
    # The broadcast dims are reduced by torch (a reduction, not per-element
    # maths), exactly as the C++ op does with at::sum_to.
    gk = gk_full.sum_to_size(k.shape).contiguous()
    if reg is not None:
        greg = (gp_full.sum_to_size(reg.shape) * eps).contiguous()
    else:
        greg = gp_full.sum()
    return gk, greg


def spectral_mul_grad_k(grad: torch.Tensor, y: torch.Tensor, k_shape: Sequence[int],
                        conj: bool) -> torch.Tensor:
    """Gradient of :func:`spectral_mul` w.r.t. ``k``, summed to ``k_shape``.

    ``s = K Y`` gives ``dL/dK = g conj(Y)``; ``s = conj(K) Y`` gives its conjugate.

    Parameters
    ----------
    grad, y : complex Tensors of one shape (..., H, Wf)
    k_shape : the kernel spectrum's shape (broadcastable to y)
    conj : as passed to :func:`spectral_mul`

    Returns
    -------
    complex Tensor of shape ``k_shape``, contiguous.
    """
    _check_spectrum(grad, "grad")
    _check_spectrum(y, "y")
    if tuple(grad.shape) != tuple(y.shape):
        raise RuntimeError(f"grad shape {tuple(grad.shape)} != y shape {tuple(y.shape)}")
    prod = spectral_mul(grad, y, True)
    out = prod.sum_to_size(list(k_shape))
    return (out.conj_physical() if conj else out).contiguous()
