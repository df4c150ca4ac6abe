"""Fused pad, its adjoint, and crop.

* ``pad``: writes the image, extended by a boundary rule, straight into the
  (fast-FFT-sized) buffer, casting float16/bfloat16 to float32 on the way;
* ``pad_backward``: the exact adjoint of ``pad``, a gather (every input pixel
  sums the output pixels copied from it), so it is deterministic and needs
  no atomics;
* ``crop``: reads a window of the inverse FFT's output and casts it to the
  requested dtype, in one pass.

Same names, signatures and index rules as ``csrc/pad_crop.cpp``
(``source_index``): ``reflect`` and ``symmetric`` are periodic, so any pad
width is valid, as in numpy. Layout: kernels first, then the launchers.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _interpret  # noqa: F401  (must precede the @triton.jit definitions)
from ._layout import (MAX_LEAD, at_offset, coalesce, needs_int64, next_pow2, on_device,
                      split_outer)

import triton
import triton.language as tl

__all__ = ["pad", "pad_backward", "crop"]

# Boundary rules: constexpr globals for the kernels (compiled kernels may only
# read constexpr globals), plain ints for the launchers.
ZEROS, REFLECT, SYMMETRIC, REPLICATE, CIRCULAR = (tl.constexpr(i) for i in range(5))
_Z, _REF, _SYM, _REP, _CIRC = (c.value for c in (ZEROS, REFLECT, SYMMETRIC, REPLICATE, CIRCULAR))
_MODES = {"zeros": _Z, "constant": _Z, "reflect": _REF, "symmetric": _SYM, "replicate": _REP,
          "circular": _CIRC}


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _pos_mod(a, m):
    # Written for either sign convention of %: C (truncating) on GPUs.
    r = a % m
    return tl.where(r < 0, r + m, r)


@triton.jit
def _source_index(e, n, MODE: tl.constexpr):
    """Index in [0, n) that extended index ``e`` copies, or -1 for a zero
    (``source_index`` in csrc/pad_crop.cpp; reflect with n == 1 arrives as
    REPLICATE)."""
    if MODE == ZEROS:
        s = tl.where((e >= 0) & (e < n), e, -1)
    elif MODE == REPLICATE:
        s = tl.minimum(tl.maximum(e, 0), n - 1)
    elif MODE == CIRCULAR:
        s = _pos_mod(e, n)
    elif MODE == REFLECT:
        p = 2 * (n - 1)
        m = _pos_mod(e, p)
        s = tl.where(m < n, m, p - m)
    else:  # SYMMETRIC
        p = 2 * n
        m = _pos_mod(e, p)
        s = tl.where(m < n, m, p - 1 - m)
    return s


@triton.jit
def _to_bf16_rne(v):
    """float32 -> the float32 value of the nearest bfloat16 (ties to even).

    Done by hand so that every backend (the interpreter truncates) rounds as
    the C++ kernel does; the store then converts exactly.
    """
    u = v.to(tl.uint32, bitcast=True)
    u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    r = u.to(tl.float32, bitcast=True)
    return tl.where(v != v, v, r)  # NaN stays NaN


@triton.jit
def _wide(x, INT64: tl.constexpr):
    """``x`` in 64 bits when INT64: every product of an index then is.
    (An addition, not ``.to``: an argument equal to 1 arrives as a constant.)"""
    if INT64:
        return tl.full((), 0, tl.int64) + x
    else:
        return x


@triton.jit
def _tile_coords(D1, D2, NBH, NBW, INT64: tl.constexpr):
    """``(i0, i1, i2, tile row, tile column)`` of this program: one BH x BW
    tile of one image plane (leading dims ``(D0, D1, D2)``, ``NBH x NBW``
    tiles per plane); all in int64 when INT64."""
    pid = _wide(tl.program_id(0), INT64)
    tc = pid % NBW
    rest = pid // NBW
    tr = rest % NBH
    plane = rest // NBH
    i2 = plane % D2
    rest = plane // D2
    i1 = rest % D1
    i0 = rest // D1
    return i0, i1, i2, tr, tc


@triton.jit
def _pad_kernel(out_ptr, x_ptr, top, left, h, w, OH, OW, D1, D2, NBH, NBW,
                sx0, sx1, sx2, sxh, sxw, so0, so1, so2, soh, sow,
                MODE_R: tl.constexpr, MODE_C: tl.constexpr, OUT_KIND: tl.constexpr,
                INT64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """out[p, i, j] = x[p, src(i - top), src(j - left)] (0 where src is -1), cast.

    OUT_KIND: 0 = store as is (the store casts), 1 = via float32 (a float64
    input to a half type, as C++ rounds), 2 = via float32 rounded to bfloat16.
    """
    i0, i1, i2, tr, tc = _tile_coords(D1, D2, NBH, NBW, INT64)
    rows = tr * BH + tl.arange(0, BH)
    cols = tc * BW + tl.arange(0, BW)
    sr = _source_index(rows - _wide(top, INT64), _wide(h, INT64), MODE_R)
    sc = _source_index(cols - _wide(left, INT64), _wide(w, INT64), MODE_C)
    out_mask = (rows < OH)[:, None] & (cols < OW)[None, :]
    in_mask = out_mask & (sr >= 0)[:, None] & (sc >= 0)[None, :]
    src = x_ptr + (i0 * sx0 + i1 * sx1 + i2 * sx2) + sr[:, None] * sxh + sc[None, :] * sxw
    v = tl.load(src, mask=in_mask, other=0.0)
    if OUT_KIND == 1:
        v = v.to(tl.float32)
    elif OUT_KIND == 2:
        v = _to_bf16_rne(v.to(tl.float32))
    dst = out_ptr + (i0 * so0 + i1 * so1 + i2 * so2) + rows[:, None] * soh + cols[None, :] * sow
    tl.store(dst, v.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _preimage(r, t, top, n, N, P, M0, MODE: tl.constexpr):
    """The t-th extended index i in [0, N) with source_index(i - top) == r.

    Returns (i, valid). Slots enumerate preimages in ascending i, so the
    gradient sums in the same order as the C++ kernel. P is the period
    (n for circular, 2(n-1) reflect, 2n symmetric) and M0 the first period
    that can reach [0, N); both are computed by the launcher.
    """
    if MODE == ZEROS:
        i = r + top + t * 0
        ok = t == 0
    elif MODE == CIRCULAR:
        i = r + top + (M0 + t) * P
        ok = r >= 0
    elif MODE == REPLICATE:
        # Row 0 takes every i <= top, row n - 1 every i >= top + n - 1 (from
        # i = 0 on when the image lies entirely above the window).
        lo = tl.where(r == 0, 0, tl.where(r == n - 1, tl.maximum(r + top, 0), r + top))
        hi = tl.where(r == n - 1, N - 1, r + top)
        i = lo + t
        ok = i <= hi
    else:  # REFLECT (n >= 2) or SYMMETRIC: two preimages per period
        odd = t % 2
        if MODE == REFLECT:
            mirror = P - r
            ok = (odd == 0) | ((r != 0) & (r != n - 1))  # r = 0 and n - 1 are their own mirror
        else:
            mirror = P - 1 - r
            ok = r >= 0
        i = tl.where(odd == 1, mirror, r) + top + (M0 + t // 2) * P
    return i, ok & (i >= 0) & (i < N)


@triton.jit
def _floor_div(a, b):
    """floor(a / b) for b > 0, whichever rounding ``//`` has (C truncates)."""
    q = a // b
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def _slot_range(r0, r1, top, n, N, P, M0, T, MODE: tl.constexpr):
    """The slots ``[lo, hi)`` of :func:`_preimage` that some row in
    ``[r0, r1)`` (``r1 <= n``) has a valid preimage in: the loop bounds of a
    tile. An interior tile copies once; a border tile folds its strip."""
    if MODE == ZEROS:
        lo = r0 * 0
        hi = tl.where((r1 - 1 + top >= 0) & (r0 + top <= N - 1), 1, 0) + lo
    elif MODE == REPLICATE:
        lo = r0 * 0
        first = tl.where(r0 == 0, tl.minimum(top, N - 1) + 1, 1)
        last = tl.where(r1 >= n, N - tl.maximum(top + n - 1, 0), 1)
        hi = tl.maximum(tl.maximum(first, last), 1)
        hi = tl.where(n == 1, N, hi)  # a single row takes every i
    elif MODE == CIRCULAR:
        # i = r + top + q P in [0, N) for some r in the tile.
        q_lo = -_floor_div(top + r1 - 1, P)
        q_hi = _floor_div(N - 1 - top - r0, P)
        lo = q_lo - M0
        hi = q_hi - M0 + 1
    else:
        c = P if MODE == REFLECT else P - 1
        # Even slots: i = r + top + q P; odd slots: i = c - r + top + q P.
        qe_lo = -_floor_div(top + r1 - 1, P)
        qe_hi = _floor_div(N - 1 - top - r0, P)
        qo_lo = -_floor_div(c + top - r0, P)
        qo_hi = _floor_div(N - 1 - c - top + r1 - 1, P)
        big = T + 2
        e_ok = qe_lo <= qe_hi
        o_ok = qo_lo <= qo_hi
        lo = tl.minimum(tl.where(e_ok, 2 * (qe_lo - M0), big), tl.where(o_ok, 2 * (qo_lo - M0) + 1, big))
        hi = tl.maximum(tl.where(e_ok, 2 * (qe_hi - M0) + 1, -big),
                        tl.where(o_ok, 2 * (qo_hi - M0) + 2, -big))
    return tl.maximum(lo, 0), tl.minimum(hi, T)


@triton.jit
def _pad_backward_kernel(out_ptr, g_ptr, top, left, h, w, GH, GW, D1, D2, NBH, NBW,
                         TR, TC, PR, PC, MR, MC,
                         sg0, sg1, sg2, sgh, sgw, so0, so1, so2, soh, sow,
                         MODE_R: tl.constexpr, MODE_C: tl.constexpr, ACC64: tl.constexpr,
                         INT64: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    """out[p, r, c] = sum of g[p, i, j] over source_index(i - top) == r and
    source_index(j - left) == c: each input pixel gathers its copies, over
    only the slots its tile needs (``_slot_range``)."""
    i0, i1, i2, tr, tc = _tile_coords(D1, D2, NBH, NBW, INT64)
    top = _wide(top, INT64)
    left = _wide(left, INT64)
    h = _wide(h, INT64)
    w = _wide(w, INT64)
    GH = _wide(GH, INT64)
    GW = _wide(GW, INT64)
    PR = _wide(PR, INT64)
    PC = _wide(PC, INT64)
    MR = _wide(MR, INT64)
    MC = _wide(MC, INT64)
    r0 = tr * BH
    c0 = tc * BW
    r = r0 + tl.arange(0, BH)
    c = c0 + tl.arange(0, BW)
    out_mask = (r < h)[:, None] & (c < w)[None, :]
    gbase = g_ptr + (i0 * sg0 + i1 * sg1 + i2 * sg2)
    if ACC64:
        acc = tl.full((BH, BW), 0.0, tl.float64)
    else:  # float16/bfloat16 gradients are summed in float32, as C++ after its cast
        acc = tl.full((BH, BW), 0.0, tl.float32)
    t_lo, t_hi = _slot_range(r0, tl.minimum(r0 + BH, h), top, h, GH, PR, MR, TR, MODE_R)
    s_lo, s_hi = _slot_range(c0, tl.minimum(c0 + BW, w), left, w, GW, PC, MC, TC, MODE_C)
    for t in range(t_lo, t_hi):
        i, iok = _preimage(r, t, top, h, GH, PR, MR, MODE_R)
        for s in range(s_lo, s_hi):
            j, jok = _preimage(c, s, left, w, GW, PC, MC, MODE_C)
            m = out_mask & iok[:, None] & jok[None, :]
            v = tl.load(gbase + i[:, None] * sgh + j[None, :] * sgw, mask=m, other=0.0)
            acc += v.to(acc.dtype)
    dst = out_ptr + (i0 * so0 + i1 * so1 + i2 * so2)
    tl.store(dst + r[:, None] * soh + c[None, :] * sow, acc, mask=out_mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _parse_mode(mode: str) -> int:
    if mode not in _MODES:
        raise RuntimeError(f"mode must be one of 'zeros', 'reflect', 'symmetric', 'replicate', "
                           f"'circular', got '{mode}'")
    return _MODES[mode]


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() < 2:
        raise RuntimeError(f"{name} must have at least 2 dims, got {x.dim()}")
    if x.dtype not in _FLOATS:
        raise RuntimeError(f"{name} must be a floating tensor, got {x.dtype}")


def _axis_mode(mode: int, n: int) -> int:
    # source_index: reflect of a single pixel repeats it, i.e. replicate.
    return _REP if mode == _REF and n == 1 else mode


#: (BH, BW, num_warps) forced for every launch, for tests (many tiles and
#: masked tails on tiny shapes) and tuning; None: automatic.
TILE_OVERRIDE: Optional[Tuple[int, int, int]] = None


def _tiles(oh: int, ow: int) -> Tuple[int, int, int]:
    """(BH, BW, num_warps): rows x columns of one program's tile."""
    if TILE_OVERRIDE is not None:
        return TILE_OVERRIDE
    if _interpret.INTERPRETED:
        # One program per plane where possible: the interpreter pays per program.
        return min(next_pow2(oh), 256), min(next_pow2(ow), 512), 4
    return min(8, next_pow2(oh)), min(256, max(32, next_pow2(ow))), 4


def _plane_launches(x: torch.Tensor, out: torch.Tensor):
    """Coalesce the leading dims of x and out; yield per launch
    (x view, out view, (D0, D1, D2), x leading strides, out leading strides, int64)."""
    lead = list(x.shape[:-2])
    shape, (sx, so) = coalesce(lead, [list(x.stride()[:-2]), list(out.stride()[:-2])])
    full_x = shape + list(x.shape[-2:])
    full_o = shape + list(out.shape[-2:])
    int64 = (needs_int64(full_x, [sx + list(x.stride()[-2:])])
             or needs_int64(full_o, [so + list(out.stride()[-2:])]))
    for offs, sh, (sxi, soi) in split_outer(shape, [sx, so], MAX_LEAD):
        yield at_offset(x, offs[0]), at_offset(out, offs[1]), sh, sxi, soi, int64


def _pad_into(out: torch.Tensor, x: torch.Tensor, top: int, left: int, mode_r: int, mode_c: int,
              out_kind: int) -> None:
    h, w = x.shape[-2:]
    oh, ow = out.shape[-2:]
    bh, bw, warps = _tiles(oh, ow)
    nbh, nbw = triton.cdiv(oh, bh), triton.cdiv(ow, bw)
    with on_device(x):
        for xv, ov, (D0, D1, D2), sx, so, int64 in _plane_launches(x, out):
            grid = (D0 * D1 * D2 * nbh * nbw,)
            _pad_kernel[grid](ov, xv, top, left, h, w, oh, ow, D1, D2, nbh, nbw,
                              *sx, x.stride(-2), x.stride(-1), *so, out.stride(-2),
                              out.stride(-1), MODE_R=mode_r, MODE_C=mode_c, OUT_KIND=out_kind,
                              INT64=int64, BH=bh, BW=bw, num_warps=warps)


def _out_kind(src: torch.dtype, dst: torch.dtype) -> int:
    if dst == torch.bfloat16:
        return 2
    if dst == torch.float16 and src == torch.float64:
        return 1
    return 0


def _check_same_device(a: torch.Tensor, name: str, b: torch.Tensor, other: str) -> None:
    if a.device != b.device:
        raise RuntimeError(f"{name} is on {a.device} but {other} is on {b.device}")


def pad(x: torch.Tensor, top: int, left: int, height: int, width: int, mode: str) -> torch.Tensor:
    """Extend ``x`` to ``(height, width)`` by a boundary rule, in one pass.

    Parameters
    ----------
    x : Tensor (..., h, w), float16/bfloat16/float32/float64, any strides
    top, left : int
        Where x's pixel (0, 0) lands in the output (may be negative).
    height, width : int >= 0
        The output's spatial size.
    mode : {"zeros", "constant", "reflect", "symmetric", "replicate", "circular"}
        ``reflect`` mirrors without repeating the edge pixel (numpy
        ``reflect``), ``symmetric`` repeats it; both are periodic, so pads
        wider than the image are valid.

    Returns
    -------
    Tensor (..., height, width), contiguous, float32 for half inputs, else x's dtype.
    """
    _check_image(x, "x")
    m = _parse_mode(mode)
    h, w = x.shape[-2:]
    if height < 0 or width < 0:
        raise RuntimeError(f"pad: output size must be >= 0, got {height}x{width}")
    if not ((h > 0 and w > 0) or x.numel() == 0):
        raise RuntimeError("pad: empty image plane")
    out = torch.empty((*x.shape[:-2], height, width), dtype=_compute_dtype(x.dtype),
                      device=x.device)
    if out.numel() == 0:
        return out
    _pad_into(out, x, int(top), int(left), _axis_mode(m, h), _axis_mode(m, w), 0)
    return out


def _axis_slots(mode: int, top: int, n: int, N: int) -> Tuple[int, int, int]:
    """(slots, period, first period) of the preimages of one axis (see _preimage).

    Extended indices e = i - top of the gradient's pixels lie in [-top, N - top).
    """
    if mode == _Z:
        return 1, 1, 0
    if mode == _REP:
        if n == 1:
            return max(1, N), 1, 0                   # every i lands on the one pixel
        first = max(0, min(top, N - 1) + 1)          # i in [0, top] land on r = 0
        last = max(0, N - max(top + n - 1, 0))       # i in [max(top + n - 1, 0), N) on r = n - 1
        return max(1, first, last), 1, 0
    period = {_CIRC: n, _REF: 2 * (n - 1), _SYM: 2 * n}[mode]
    span = n - 1 if mode == _CIRC else period  # largest base index within a period
    m0 = (-top - span) // period                  # floor division: first period reaching 0
    m1 = (N - 1 - top) // period
    periods = m1 - m0 + 1
    return (periods if mode == _CIRC else 2 * periods), period, m0


def pad_backward(grad: torch.Tensor, top: int, left: int, height: int, width: int,
                 mode: str) -> torch.Tensor:
    """The adjoint of :func:`pad`: fold the border back onto the image.

    Parameters
    ----------
    grad : Tensor (..., H, W), the gradient w.r.t. pad's output
    top, left, mode : as given to :func:`pad`
    height, width : int > 0, the size of pad's input

    Returns
    -------
    Tensor (..., height, width), contiguous, float32 for half inputs, else grad's dtype.
    """
    _check_image(grad, "grad")
    m = _parse_mode(mode)
    if height <= 0 or width <= 0:
        raise RuntimeError(f"pad_backward: input size must be > 0, got {height}x{width}")
    out = torch.empty((*grad.shape[:-2], height, width), dtype=_compute_dtype(grad.dtype),
                      device=grad.device)
    if out.numel() == 0:
        return out
    GH, GW = grad.shape[-2:]
    top, left = int(top), int(left)
    mr, mc = _axis_mode(m, height), _axis_mode(m, width)
    tr, pr, m0r = _axis_slots(mr, top, height, GH)
    tc, pc, m0c = _axis_slots(mc, left, width, GW)
    bh, bw, warps = _tiles(height, width)
    nbh, nbw = triton.cdiv(height, bh), triton.cdiv(width, bw)
    with on_device(grad):
        for gv, ov, (D0, D1, D2), sg, so, int64 in _plane_launches(grad, out):
            grid = (D0 * D1 * D2 * nbh * nbw,)
            _pad_backward_kernel[grid](ov, gv, top, left, height, width, GH, GW, D1, D2, nbh,
                                       nbw, tr, tc, pr, pc, m0r, m0c, *sg, grad.stride(-2),
                                       grad.stride(-1), *so, out.stride(-2), out.stride(-1),
                                       MODE_R=mr, MODE_C=mc,
                                       ACC64=out.dtype == torch.float64, INT64=int64, BH=bh, BW=bw,
                                       num_warps=warps)
    return out


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int,
         dtype: torch.dtype) -> torch.Tensor:
    """``x[..., top:top + height, left:left + width]`` cast to ``dtype``, one pass.

    Parameters
    ----------
    x : Tensor (..., H, W), floating, any strides
    top, left, height, width : int, a window inside (H, W)
    dtype : floating torch.dtype of the result (half types round to nearest
        even, from float64 via float32 as the C++ kernel does)

    Returns
    -------
    Tensor (..., height, width) of ``dtype``, contiguous.
    """
    _check_image(x, "x")
    if dtype not in _FLOATS:
        raise RuntimeError(f"crop: dtype must be floating, got {dtype}")
    H, W = x.shape[-2:]
    if not (top >= 0 and left >= 0 and height >= 0 and width >= 0 and top + height <= H
            and left + width <= W):
        raise RuntimeError(f"crop: window ({top}, {left}, {height}, {width}) does not fit in "
                           f"{H}x{W}")
    out = torch.empty((*x.shape[:-2], height, width), dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    # A crop is a pad whose window lies inside the image (as in C++).
    _pad_into(out, x, -int(top), -int(left), _Z, _Z, _out_kind(x.dtype, dtype))
    return out
