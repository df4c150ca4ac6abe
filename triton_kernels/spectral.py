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
import functools
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from . import _interpret  # noqa: F401  (must precede the @triton.jit definitions)
from ._layout import (MAX_LEAD, at_offset, broadcast_strides, contiguous_strides, loop_dims,
                      loop_space, needs_int64, next_pow2, on_device, split_outer, split_samples)

import triton
import triton.language as tl

__all__ = ["spectral_solve", "spectral_solve_", "spectral_mul", "spectral_solve_backward", "spectral_mul_grad_k"]


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
#
# Iteration space (see _layout): NS samples looped over inside a program (the
# dims along which the kernel spectrum and the regulariser are broadcast), up
# to three leading dims (D0, D1, D2) and the vectorised last dim L, split into
# blocks of BLOCK. A program id is (i0, i1, i2, block, chunk) with the chunk
# of SPB samples fastest: programs that share a spectrum block are adjacent.
# With INT64 every index is computed in 64 bits from the program id on.


@triton.jit
def _coords(D1, D2, NBLK, NS, SPB, NCH, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """``(i0, i1, i2, chunk, first sample, samples, first column, columns)``."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    ch = pid % NCH
    rest = pid // NCH
    blk = rest % NBLK
    row = rest // NBLK
    i2 = row % D2
    rest = row // D2
    i1 = rest % D1
    i0 = rest // D1
    start = blk * BLOCK
    cols = start + tl.arange(0, BLOCK)
    s0 = ch * SPB
    ns = tl.minimum(NS - s0, SPB)
    return i0, i1, i2, ch, s0, ns, start, cols


@triton.jit
def _pair_offset(base, start, ALIGNED: tl.constexpr):
    """Float offset of complex element ``base + start``; ALIGNED: the launcher
    proved it a multiple of 4 floats (16 bytes for complex64), which lets
    the compiler emit 16-byte accesses whatever the row length."""
    off = (base + start) * 2
    if ALIGNED:
        off = tl.multiple_of(off, 4)
    return off


@triton.jit
def _load_pair(ptr, base, start, cols, s3, L, FLAT: tl.constexpr, MASKED: tl.constexpr,
               ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """(re, im) of the complex elements ``base + cols * s3`` (complex units).

    FLAT (unit stride): the block's pairs are ``2 * BLOCK`` consecutive
    floats, loaded flat (16-byte vector accesses) and split in registers.
    Otherwise one ``[BLOCK, 2]`` load with the float offset written as
    ``2 * element + (0, 1)``, so each pair is provably 8-byte aligned.
    MASKED only for the last block of a row: full blocks carry no mask, so
    their accesses stay 16 bytes wide for any L.
    """
    if FLAT:
        j = tl.arange(0, 2 * BLOCK)
        p = ptr + _pair_offset(base, start, ALIGNED) + j
        if MASKED:
            v = tl.load(p, mask=j < (L - start) * 2, other=0.0)
        else:
            v = tl.load(p)
        return tl.split(tl.reshape(v, [BLOCK, 2]))
    else:
        offs = ((base + cols * s3) * 2)[:, None] + tl.arange(0, 2)[None, :]
        if MASKED:
            return tl.split(tl.load(ptr + offs, mask=(cols < L)[:, None], other=0.0))
        else:
            return tl.split(tl.load(ptr + offs))


@triton.jit
def _store_pair(ptr, base, start, cols, s3, L, re, im, FLAT: tl.constexpr, MASKED: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    if FLAT:
        j = tl.arange(0, 2 * BLOCK)
        v = tl.reshape(tl.join(re, im), [2 * BLOCK])
        p = ptr + _pair_offset(base, start, ALIGNED) + j
        if MASKED:
            tl.store(p, v, mask=j < (L - start) * 2)
        else:
            tl.store(p, v)
    else:
        offs = ((base + cols * s3) * 2)[:, None] + tl.arange(0, 2)[None, :]
        if MASKED:
            tl.store(ptr + offs, tl.join(re, im), mask=(cols < L)[:, None])
        else:
            tl.store(ptr + offs, tl.join(re, im))


@triton.jit
def _load_real(ptr, base, cols, s3, L, CONST: tl.constexpr, MASKED: tl.constexpr):
    """Real element ``base + cols * s3``; CONST: s3 == 0 (one value for the
    whole block, e.g. the per-sample threshold), read as a scalar."""
    if CONST:
        return tl.load(ptr + base)
    elif MASKED:
        return tl.load(ptr + base + cols * s3, mask=cols < L, other=0.0)
    else:
        return tl.load(ptr + base + cols * s3)


@triton.jit
def _store_real(ptr, base, cols, s3, L, v, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + base + cols * s3, v, mask=cols < L)
    else:
        tl.store(ptr + base + cols * s3, v)


@triton.jit
def _power(kr, ki, r_ptr, eps, rbase, cols, sr3, L, HAS_REG: tl.constexpr, MASKED: tl.constexpr,
           BLOCK: tl.constexpr):
    """``(|K|^2, p, p > 0)`` as ``solve_one`` in csrc/spectral.cpp, with
    p = eps * reg (or eps); the sample-independent part of the solve."""
    # eps arrives as a float64 scalar; C++ casts it to the compute type first.
    e = tl.full((), eps, tl.float64).to(kr.dtype)
    if HAS_REG:
        p = e * _load_real(r_ptr, rbase, cols, sr3, L, False, MASKED)
    else:
        p = tl.full([BLOCK], 0.0, kr.dtype) + e
    return kr * kr + ki * ki, p, p > 0.0


@triton.jit
def _reciprocal(num, x, F32: tl.constexpr):
    """num / x; in float32 IEEE-rounded (div_rn), like the CPU."""
    if F32:
        return tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32) * num, x)
    else:
        return num / x


@triton.jit
def _solve_block(out_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps, scale, i0, i1, i2, s0, ns, start, cols, L,
                 so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                 st0, st1, st2, st3, sr0, sr1, sr2, sr3, sos, sys, sts,
                 HAS_REG: tl.constexpr, F32: tl.constexpr, T_CONST: tl.constexpr,
                 K_CONJ: tl.constexpr, FLAT: tl.constexpr, MASKED: tl.constexpr,
                 ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    # The spectrum and the regulariser: read once for the program's samples.
    kr, ki = _load_pair(k_ptr, i0 * sk0 + i1 * sk1 + i2 * sk2, start, cols, sk3, L, FLAT, MASKED,
                        ALIGNED, BLOCK)
    if K_CONJ:  # k is a lazy conjugate: its memory holds conj(K)
        ki = -ki
    k2, p, tik = _power(kr, ki, r_ptr, eps, i0 * sr0 + i1 * sr1 + i2 * sr2, cols, sr3, L,
                        HAS_REG, MASKED, BLOCK)
    den = tl.where(tik, k2 + p, k2)
    c = tl.full((), scale, tl.float64).to(kr.dtype)
    ybase = i0 * sy0 + i1 * sy1 + i2 * sy2
    obase = i0 * so0 + i1 * so1 + i2 * so2
    tbase = i0 * st0 + i1 * st1 + i2 * st2
    for s in range(s0, s0 + ns):
        thr2 = _load_real(t_ptr, tbase + s * sts, cols, st3, L, T_CONST, MASKED)
        # !(k2 > thr2) drops a frequency, as C++: NaN drops it too.
        keep = tik | (k2 > thr2)
        # Never divide by a dropped (possibly zero) denominator.
        inv = _reciprocal(c, tl.where(keep, den, 1.0), F32)
        yr, yi = _load_pair(y_ptr, ybase + s * sys, start, cols, sy3, L, FLAT, MASKED, ALIGNED,
                            BLOCK)
        xr = tl.where(keep, (kr * yr + ki * yi) * inv, 0.0)
        xi = tl.where(keep, (kr * yi - ki * yr) * inv, 0.0)
        _store_pair(out_ptr, obase + s * sos, start, cols, so3, L, xr, xi, FLAT, MASKED, ALIGNED,
                    BLOCK)


@triton.jit
def _solve_kernel(out_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps: tl.float64, scale: tl.float64,
                  D1, D2, L, NBLK, NS, SPB, NCH,
                  so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                  st0, st1, st2, st3, sr0, sr1, sr2, sr3, sos, sys, sks, sts, srs,
                  HAS_REG: tl.constexpr, F32: tl.constexpr, T_CONST: tl.constexpr,
                  K_CONJ: tl.constexpr, FLAT: tl.constexpr, ALIGNED: tl.constexpr,
                  INT64: tl.constexpr, BLOCK: tl.constexpr):
    """X = scale conj(K) Y / (|K|^2 + p) where p = eps * reg > 0, else
    scale Y / K where |K|^2 > thresh, else 0 (``solve_one`` in
    csrc/spectral.cpp; scale = 1 there). k and reg have stride 0 along the
    samples (sks, srs: unused, kept for a uniform launch)."""
    i0, i1, i2, ch, s0, ns, start, cols = _coords(D1, D2, NBLK, NS, SPB, NCH, BLOCK, INT64)
    if start + BLOCK <= L:
        _solve_block(out_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps, scale, i0, i1, i2, s0, ns, start,
                     cols, L, so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                     st0, st1, st2, st3, sr0, sr1, sr2, sr3, sos, sys, sts,
                     HAS_REG, F32, T_CONST, K_CONJ, FLAT, False, ALIGNED, BLOCK)
    else:
        _solve_block(out_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps, scale, i0, i1, i2, s0, ns, start,
                     cols, L, so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                     st0, st1, st2, st3, sr0, sr1, sr2, sr3, sos, sys, sts,
                     HAS_REG, F32, T_CONST, K_CONJ, FLAT, True, ALIGNED, BLOCK)


@triton.jit
def _mul_block(out_ptr, y_ptr, k_ptr, scale, i0, i1, i2, s0, ns, start, cols, L,
               so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3, sos, sys,
               CONJ: tl.constexpr, SCALED: tl.constexpr, FLAT: tl.constexpr,
               MASKED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    kr, ki = _load_pair(k_ptr, i0 * sk0 + i1 * sk1 + i2 * sk2, start, cols, sk3, L, FLAT, MASKED,
                        ALIGNED, BLOCK)
    if CONJ:
        ki = -ki
    if SCALED:  # the scale folds into K once: scale * (K Y)
        c = tl.full((), scale, tl.float64).to(kr.dtype)
        kr = kr * c
        ki = ki * c
    ybase = i0 * sy0 + i1 * sy1 + i2 * sy2
    obase = i0 * so0 + i1 * so1 + i2 * so2
    for s in range(s0, s0 + ns):
        yr, yi = _load_pair(y_ptr, ybase + s * sys, start, cols, sy3, L, FLAT, MASKED, ALIGNED,
                            BLOCK)
        # (a + bi)(c + di) = (ac - bd) + (ad + bc)i with a + bi = K, as c10::complex.
        _store_pair(out_ptr, obase + s * sos, start, cols, so3, L, kr * yr - ki * yi,
                    kr * yi + ki * yr, FLAT, MASKED, ALIGNED, BLOCK)


@triton.jit
def _mul_kernel(out_ptr, y_ptr, k_ptr, scale: tl.float64,
                D1, D2, L, NBLK, NS, SPB, NCH,
                so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3, sos, sys, sks,
                CONJ: tl.constexpr, SCALED: tl.constexpr, FLAT: tl.constexpr,
                ALIGNED: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """K * Y, or conj(K) * Y (``mul_kernel`` in csrc/spectral.cpp), times
    ``scale`` when SCALED."""
    i0, i1, i2, ch, s0, ns, start, cols = _coords(D1, D2, NBLK, NS, SPB, NCH, BLOCK, INT64)
    if start + BLOCK <= L:
        _mul_block(out_ptr, y_ptr, k_ptr, scale, i0, i1, i2, s0, ns, start, cols, L,
                   so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3, sos, sys,
                   CONJ, SCALED, FLAT, False, ALIGNED, BLOCK)
    else:
        _mul_block(out_ptr, y_ptr, k_ptr, scale, i0, i1, i2, s0, ns, start, cols, L,
                   so0, so1, so2, so3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3, sos, sys,
                   CONJ, SCALED, FLAT, True, ALIGNED, BLOCK)


@triton.jit
def _solve_backward_block(gk_ptr, gp_ptr, g_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps, i0, i1, i2, ch,
                          s0, ns, start, cols, L,
                          so0, so1, so2, so3, sq0, sq1, sq2, sq3,
                          sg0, sg1, sg2, sg3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                          st0, st1, st2, st3, sr0, sr1, sr2, sr3, soc, sqc, sgs, sys, sts,
                          HAS_REG: tl.constexpr, F32: tl.constexpr, T_CONST: tl.constexpr,
                          FLAT: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr,
                          BLOCK: tl.constexpr):
    kr, ki = _load_pair(k_ptr, i0 * sk0 + i1 * sk1 + i2 * sk2, start, cols, sk3, L, FLAT, MASKED,
                        ALIGNED, BLOCK)
    k2, p, tik = _power(kr, ki, r_ptr, eps, i0 * sr0 + i1 * sr1 + i2 * sr2, cols, sr3, L,
                        HAS_REG, MASKED, BLOCK)
    d = tl.where(tik, k2 + p, k2)
    one = tl.full((), 1.0, kr.dtype)
    gbase = i0 * sg0 + i1 * sg1 + i2 * sg2
    ybase = i0 * sy0 + i1 * sy1 + i2 * sy2
    tbase = i0 * st0 + i1 * st1 + i2 * st2
    # The samples share k and reg: their gradients are summed in registers.
    akr = tl.full([BLOCK], 0.0, kr.dtype)
    aki = tl.full([BLOCK], 0.0, kr.dtype)
    ap = tl.full([BLOCK], 0.0, kr.dtype)
    for s in range(s0, s0 + ns):
        thr2 = _load_real(t_ptr, tbase + s * sts, cols, st3, L, T_CONST, MASKED)
        live = tik | (k2 > thr2)
        inv2 = _reciprocal(one, tl.where(live, d * d, 1.0), F32)
        gr, gi = _load_pair(g_ptr, gbase + s * sgs, start, cols, sg3, L, FLAT, MASKED, ALIGNED,
                            BLOCK)
        yr, yi = _load_pair(y_ptr, ybase + s * sys, start, cols, sy3, L, FLAT, MASKED, ALIGNED,
                            BLOCK)
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
        akr += tl.where(live, gkr, 0.0)
        aki += tl.where(live, gki, 0.0)
        ap += tl.where(live, -cr * inv2, 0.0)
    _store_pair(gk_ptr, i0 * so0 + i1 * so1 + i2 * so2 + ch * soc, start, cols, so3, L, akr, aki,
                FLAT, MASKED, ALIGNED, BLOCK)
    _store_real(gp_ptr, i0 * sq0 + i1 * sq1 + i2 * sq2 + ch * sqc, cols, sq3, L, ap, MASKED)


@triton.jit
def _solve_backward_kernel(gk_ptr, gp_ptr, g_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps: tl.float64,
                           D1, D2, L, NBLK, NS, SPB, NCH,
                           so0, so1, so2, so3, sq0, sq1, sq2, sq3,
                           sg0, sg1, sg2, sg3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                           st0, st1, st2, st3, sr0, sr1, sr2, sr3,
                           sos, sqs, sgs, sys, sks, sts, srs, soc, sqc,
                           HAS_REG: tl.constexpr, F32: tl.constexpr, T_CONST: tl.constexpr,
                           FLAT: tl.constexpr, ALIGNED: tl.constexpr, INT64: tl.constexpr,
                           BLOCK: tl.constexpr):
    """Per-element gradients of X = conj(K) Y / d, d = |K|^2 + p (PyTorch's
    complex convention), as ``solve_backward_kernel`` in csrc/spectral.cpp:

    dL/dK = (-(g K conj(Y)) K + conj(g) Y p) / d^2,  dL/dp = -Re(g K conj(Y)) / d^2,
    zero where the pseudo-inverse threshold drops the frequency; summed over
    the program's samples (along which k and reg are broadcast) and written
    to chunk ``ch`` of the partial sums (strides soc, sqc).
    """
    i0, i1, i2, ch, s0, ns, start, cols = _coords(D1, D2, NBLK, NS, SPB, NCH, BLOCK, INT64)
    if start + BLOCK <= L:
        _solve_backward_block(gk_ptr, gp_ptr, g_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps, i0, i1, i2, ch,
                              s0, ns, start, cols, L, so0, so1, so2, so3, sq0, sq1, sq2, sq3,
                              sg0, sg1, sg2, sg3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                              st0, st1, st2, st3, sr0, sr1, sr2, sr3, soc, sqc, sgs, sys, sts,
                              HAS_REG, F32, T_CONST, FLAT, False, ALIGNED, BLOCK)
    else:
        _solve_backward_block(gk_ptr, gp_ptr, g_ptr, y_ptr, k_ptr, t_ptr, r_ptr, eps, i0, i1, i2, ch,
                              s0, ns, start, cols, L, so0, so1, so2, so3, sq0, sq1, sq2, sq3,
                              sg0, sg1, sg2, sg3, sy0, sy1, sy2, sy3, sk0, sk1, sk2, sk3,
                              st0, st1, st2, st3, sr0, sr1, sr2, sr3, soc, sqc, sgs, sys, sts,
                              HAS_REG, F32, T_CONST, FLAT, True, ALIGNED, BLOCK)


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
            raise RuntimeError(f"{name} is on {t.device} but y is on {y.device}; expected all "
                               f"tensors of the call on one device")




def _spec_strides(t: torch.Tensor, shape: Sequence[int]) -> List[int]:
    """Strides of a complex tensor broadcast to ``shape``, in complex elements."""
    return broadcast_strides(t, shape)


#: (BLOCK, num_warps) forced for every launch, for tests (many blocks and
#: masked tails on tiny shapes) and tuning (benchmarks/bench_gpu.py); None: automatic.
BLOCK_OVERRIDE: Optional[Tuple[int, int]] = None
#: Samples per program forced for every launch (tests: several chunks of
#: looped samples on tiny shapes); None: automatic.
SAMPLES_OVERRIDE: Optional[int] = None
#: Programs per streaming multiprocessor the sample split aims at: enough
#: resident warps to saturate DRAM with 4-warp programs.
PROGRAMS_PER_SM = 16


def _block(L: int, dtype: torch.dtype) -> Tuple[int, int]:
    """(BLOCK complex elements, num_warps) for a last dim of ``L``."""
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE
    if _interpret.INTERPRETED:
        # The interpreter's cost is per program: few, large blocks.
        return min(next_pow2(L), 1 << 14), 4
    block = 1024 if dtype == torch.float32 else 512
    return min(block, max(128, next_pow2(L))), 4


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """Programs worth launching before samples are split over programs."""
    if device.type != "cuda":
        return 1  # the interpreter: one program per block, all samples in it
    return PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None
                                       else torch.cuda.current_device())


class LaunchPlan(NamedTuple):
    """Everything a launch needs, derived from shapes and strides alone (so
    the offset arithmetic can be checked at sizes no test machine holds)."""

    ns: int                      # samples looped over in registers
    loop: List[int]              # each operand's stride along them
    spb: int                     # samples per program
    nch: int                     # chunks of samples (programs per block)
    block: int
    warps: int
    int64: bool                  # 64-bit index arithmetic
    aligned: bool                # every complex row start is 16-byte aligned (complex64)
    launches: List[Tuple[List[int], List[int], List[List[int]], int, int]]
    # per launch: (operand offsets, (D0, D1, D2, L), strides, blocks per row, grid)


def plan_launch(shape: Sequence[int], strides: Sequence[List[int]], is_pair: Sequence[bool],
                shared: Sequence[int], dtype: torch.dtype, target: int,
                chunk: Optional[Sequence[int]] = None, loop: Optional[Sequence[int]] = None
                ) -> LaunchPlan:
    """Plan the launches over the iteration space ``shape`` (y's shape).

    ``strides[i]`` addresses operand ``i`` (complex elements where
    ``is_pair[i]``); the ``shared`` operands (stride 0 along the looped
    samples) are read once per block of samples; ``chunk[i]`` is operand
    ``i``'s stride between chunks of samples (the partial-sum buffers of the
    backward, 0 for the others); ``loop``: the dims to loop over (default
    :func:`loop_dims`).
    """
    if loop is None:
        loop = loop_dims(shape, strides, shared)
    ns, loop_st, sh, st = loop_space(shape, strides, loop, shared)
    chunk = list(chunk) if chunk is not None else [0] * len(strides)
    inner = list(split_outer(sh, st, MAX_LEAD + 1))
    D0, D1, D2, L = inner[0][1]
    block, warps = _block(L, dtype)
    nblk = triton.cdiv(L, block)
    spb, nch = split_samples(ns, D0 * D1 * D2 * nblk, target, SAMPLES_OVERRIDE)
    twice = lambda s, pair: [2 * x for x in s] if pair else list(s)  # noqa: E731  (float units)
    int64 = needs_int64([ns, nch] + list(sh),
                        [twice([ls, c] + list(s), pair)
                         for ls, c, s, pair in zip(loop_st, chunk, st, is_pair)], extra=1)
    launches = []
    aligned = True
    for offs, shape_in, st_in in inner:
        grid = shape_in[0] * shape_in[1] * shape_in[2] * nblk * nch
        launches.append((offs, shape_in, st_in, nblk, grid))
        for o, s, ls, c, pair in zip(offs, st_in, loop_st, chunk, is_pair):
            if pair and any(x % 2 for x in [o, ls, c] + list(s[:-1])):
                aligned = False
    return LaunchPlan(ns, loop_st, spb, nch, block, warps, int64, aligned, launches)


def _launch(kernel, plan: LaunchPlan, ptrs: Sequence[torch.Tensor], is_pair: Sequence[bool],
            scalars: Sequence, thresh_at: Optional[int] = None, chunk: Sequence[int] = (),
            **constexprs) -> None:
    """Launch ``kernel`` as ``plan`` says; ``ptrs[i]`` is addressed with the
    plan's strides, in complex elements for the spectra (``is_pair[i]``)."""
    for offs, (D0, D1, D2, L), st_in, nblk, grid in plan.launches:
        args = [at_offset(p, 2 * o if pair else o) for p, o, pair in zip(ptrs, offs, is_pair)]
        # Every spectrum contiguous along the vectorised dim: flat 16-byte accesses.
        unit = all(s[-1] == 1 for s, pair in zip(st_in, is_pair) if pair)
        strides_flat = [s for op in st_in for s in op]
        if thresh_at is not None:  # a threshold constant along the block: scalar read
            constexprs["T_CONST"] = st_in[thresh_at][-1] == 0
        # enable_fp_fusion=False: products are rounded before they are
        # summed, as in the C++ kernels and the reference, so |K|^2 > thresh
        # decides exact ties alike (an FMA keeps kr * kr unrounded).
        kernel[(grid,)](*args, *scalars, D1, D2, L, nblk, plan.ns, plan.spb, plan.nch,
                        *strides_flat, *plan.loop, *chunk, FLAT=unit,
                        ALIGNED=unit and plan.aligned, INT64=plan.int64, BLOCK=plan.block,
                        num_warps=plan.warps, enable_fp_fusion=False, **constexprs)


def _run_solve(out: torch.Tensor, y: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor],
               eps: float, thresh: torch.Tensor, scale: float) -> None:
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
    plan = plan_launch(shape, strides, _SOLVE_PAIRS, (2, 4), real, _target_programs(y.device))
    with on_device(y):
        _launch(_solve_kernel, plan, (o, yv, kv, thresh, r), _SOLVE_PAIRS,
                (float(eps), float(scale)), 3, HAS_REG=reg is not None, F32=real == torch.float32,
                K_CONJ=k_conj)


def spectral_solve(y: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor], eps: float,
                   thresh: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
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
    scale : float
        Multiplies X (folded into the reciprocal: ``scale / den``). Not part
        of the op's schema: the CUDA pipeline passes ``1 / (H W)`` so that
        its inverse FFT needs no normalisation pass.

    Returns
    -------
    complex Tensor (..., H, Wf), new and contiguous.
    """
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device) if isinstance(y, torch.Tensor) else y
    _run_solve(out, y, k, reg, eps, thresh, scale)
    return out


def spectral_solve_(y: torch.Tensor, k: torch.Tensor, reg: Optional[torch.Tensor], eps: float,
                    thresh: torch.Tensor, scale: float = 1.0) -> None:
    """In-place :func:`spectral_solve`: overwrites ``y`` with ``X``
    (``torch.ops.deconv_ext.spectral_solve_``); saves a spectrum-sized buffer.

    Parameters
    ----------
    y : complex Tensor (..., H, Wf), written in place
        Any strides without internal overlap; not lazily conjugated.
    k, reg, eps, thresh, scale : as for :func:`spectral_solve`
    """
    if isinstance(y, torch.Tensor) and y.is_conj():
        raise RuntimeError("spectral_solve_: y must not carry a lazy conjugate bit")
    if isinstance(y, torch.Tensor) and any(n > 1 and s == 0 for n, s in zip(y.shape, y.stride())):
        raise RuntimeError("spectral_solve_: y has internal overlap (a broadcast/expanded "
                           "tensor); every element must have its own memory")
    _run_solve(y, y, k, reg, eps, thresh, scale)


def spectral_mul(y: torch.Tensor, k: torch.Tensor, conj: bool, scale: float = 1.0) -> torch.Tensor:
    """``K * Y`` (the forward blur) or ``conj(K) * Y`` (its adjoint), one pass.

    Parameters
    ----------
    y : complex Tensor (..., H, Wf)
    k : complex Tensor broadcastable to y, same dtype
    conj : bool
    scale : float
        Multiplies the product (not in the op's schema; see :func:`spectral_solve`).

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
    pairs = (True, True, True)
    plan = plan_launch(shape, strides, pairs, (2,), _REAL[y.dtype], _target_programs(y.device))
    with on_device(y):
        _launch(_mul_kernel, plan, (torch.view_as_real(out), torch.view_as_real(y),
                                    torch.view_as_real(k)), pairs, (float(scale),),
                CONJ=bool(conj), SCALED=float(scale) != 1.0)
    return out


def spectral_solve_backward(grad: torch.Tensor, y: torch.Tensor, k: torch.Tensor,
                            reg: Optional[torch.Tensor], eps: float, thresh: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`spectral_solve` w.r.t. ``k`` and ``reg``.

    The dims along which both k and reg are broadcast (the samples sharing a
    spectrum) are summed inside the kernel, into partial sums of y's size
    over those samples (k's size when k is shared by whole samples); only
    the rare remainder (k or reg broadcast where the other is not, or along
    dims that do not coalesce with the looped ones) is summed by torch, on
    those partial sums.

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
    shape = list(y.shape)
    if y.numel() == 0:
        gk = torch.zeros(k.shape, dtype=k.dtype, device=y.device)
        greg = (torch.zeros(reg.shape, dtype=real, device=y.device) if reg is not None
                else torch.zeros((), dtype=real, device=y.device))
        return gk, greg
    grad, y, k = grad.resolve_conj(), y.resolve_conj(), k.resolve_conj()
    kst = _spec_strides(k, shape)
    rst = broadcast_strides(reg, shape) if reg is not None else [0] * len(shape)
    ins = [_spec_strides(grad, shape), _spec_strides(y, shape), kst,
           broadcast_strides(thresh, shape), rst]
    loop = loop_dims(shape, ins, (2, 4))
    # The partial sums: y's shape with the looped dims summed away, one per chunk.
    part = [1 if d in loop else n for d, n in enumerate(shape)]
    pst = [0 if n == 1 else s for n, s in zip(part, contiguous_strides(part))]
    numel = math.prod(part)
    pairs = _BACKWARD_PAIRS
    strides = [pst, pst] + ins
    plan = plan_launch(shape, strides, pairs, (0, 1, 4, 6), real, _target_programs(y.device),
                       chunk=[numel, numel, 0, 0, 0, 0, 0], loop=loop)
    if plan.ns != math.prod(shape[d] for d in loop):  # the buffers assume exactly these
        raise AssertionError(f"looped samples {plan.ns} != dims {loop} of {shape}")
    gk_part = torch.empty((plan.nch, *part), dtype=y.dtype, device=y.device)
    gp_part = torch.empty((plan.nch, *part), dtype=real, device=y.device)
    r = reg if reg is not None else thresh
    ptrs = (torch.view_as_real(gk_part), gp_part, torch.view_as_real(grad), torch.view_as_real(y),
            torch.view_as_real(k), thresh, r)
    with on_device(y):
        _launch(_solve_backward_kernel, plan, ptrs, pairs, (float(eps),), 5, chunk=(numel, numel),
                HAS_REG=reg is not None, F32=real == torch.float32)
    gk_full = gk_part[0] if plan.nch == 1 else gk_part.sum(0)
    gp_full = gp_part[0] if plan.nch == 1 else gp_part.sum(0)
    gk = _sum_to(gk_full, k.shape)
    if reg is not None:
        greg = (_sum_to(gp_full, reg.shape) * eps).contiguous()
    else:
        greg = gp_full.sum()
    return gk, greg


def _sum_to(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``t.sum_to_size(shape)``, contiguous; a reshape when nothing is left to sum."""
    if t.numel() == math.prod(shape):
        return t.reshape(shape).contiguous()
    return t.sum_to_size(list(shape)).contiguous()


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
