"""Images larger than memory: the deconvolution solved tile by tile.

Semantics
---------
For a non-circular ``boundary`` the result is defined as **the observation
extended by the boundary rule far enough for the inverse filter (its reach),
solved circularly, and cropped**. With ``FAST_PAD_MODE`` the extension rule of
the padded fast path (``deconv_ext.plans.padded``), that is::

    x = crop( circ_solve_N( pad_rule(y, >= reach on each side) ) )

:func:`deconvolve_tiled` computes exactly this up to the inverse filter's tail:
each tile (the interior it writes) is solved on a buffer that holds the tile
plus at least ``overlap`` pixels of the *extended* image on each side (real
neighbouring pixels inside the image, the image's own border extended by the
rule outside it), and only the interior is kept. Why this is the reference and
not ``deconvolve(y, psf, boundary=b)``: that padded path pads by the PSF's half
size only, so within the inverse filter's reach of an edge its result depends on
the far side of the image (the circular wrap-around); a tiled solve cannot (and
should not) reproduce that, and differs there by O(1) for small ``eps``.

Error bound
-----------
Both the tiled and the reference solve apply (periodised copies of) the same
infinite-domain impulse response ``h`` of the filter
``G = conj(K) / (|K|^2 + eps |R|^2)`` to buffers that agree on the box of half
size ``overlap`` around every interior pixel, and whose values all lie within
``[min y, max y]``. Hence, per pixel::

    |x_tiled - x_ref| <= tail(overlap) * (max y - min y)

with ``tail(m)`` the L1 mass of ``h`` outside the box ``[-m_h, m_h] x [-m_w,
m_w]``. ``overlap="auto"`` picks, per axis, the smallest margin whose tail
carries less than ``tol`` of ``h``'s L1 mass (:func:`filter_reach`), and
``return_info=True`` reports the resulting bound (``TiledInfo.seam_bound``).

Memory: one tile buffer (``(..., tile + 2 overlap)`` rounded up to a fast FFT
size) and the plan's spectrum at that size, whatever the image size; inputs
and outputs may be ``numpy.memmap`` / ``tifffile.memmap`` arrays, read and
written one window at a time.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import threading
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from . import validation as V
from .maths import padding, spectral
from .plans import DeconvPlan
from .plans.padded import FAST_PAD_MODE

__all__ = ["DEFAULT_TILE", "DEFAULT_TOL", "Reach", "TiledInfo", "filter_reach",
           "impulse_response", "tail_mass", "extension_index", "tile_geometry",
           "deconvolve_tiled", "deconvolve_tiff"]

# Chosen from benchmarks/bench_tiles.py (8192^2 float32, Gaussian sigma=3,
# eps=1e-2, 2-core CPU, RESULTS.md "tiled solve"): 2048^2 tiles had the highest
# throughput (1.9x the one-shot untiled solve; 1024: 1.0x, 512: 0.4x, where
# the margin and per-tile overheads dominate; 4096: 1.6x) and cost ~0.1 GiB.
DEFAULT_TILE = (2048, 2048)
# Tail of the inverse filter's L1 mass left outside the overlap. With the
# bound ``tail * range(y)`` and ||h||_1 of at most a few hundred for
# eps >= 1e-4 this keeps seams near or below 1e-4 of the range even in the
# worst case; measured seams are far smaller (bench_tiles.py).
DEFAULT_TOL = 1e-6

# Largest periodic grid the reach is read on: 40 Mi pixels, about 16 bytes
# each at the peak of ``_folded_response`` (640 MiB), enough for 15 px motion
# blur at eps=1e-4 at any angle (45 degrees: 5600^2, 490 MiB). A filter that
# has not decayed by then (the hard cut-off of ``method="pinv"``, a tiny eps)
# needs an explicit overlap.
_MAX_RESPONSE_PIXELS = 40 << 20
_MAX_RESPONSE_SIDE = 1 << 16
# Reaches already computed in this process (one costs a few FFTs of up to
# the cap), keyed by the PSF's and regulariser's bytes and the parameters.
_MAX_CACHED_REACHES = 32
_reach_cache: dict = {}
_reach_lock = threading.Lock()


# ---------------------------------------------------------------------------
# The inverse filter's reach
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Reach:
    """How far the inverse filter reaches.

    Attributes
    ----------
    rows, cols : int
        Margins ``(m_h, m_w)``: the L1 mass of the impulse response outside
        ``[-m_h, m_h] x [-m_w, m_w]`` is ``tail`` (relative, ``<= tol``).
    tail : float
        Mass outside the box relative to ``l1`` (largest over the PSF's leading dims).
    l1 : float
        ``||h||_1``, the filter's worst-case gain (largest over the leading dims).
    response_size : (int, int)
        Size of the periodic grid the impulse response was computed on.
    """

    rows: int
    cols: int
    tail: float
    l1: float
    response_size: Tuple[int, int]

    @property
    def margin(self) -> Tuple[int, int]:
        return self.rows, self.cols

    @property
    def tail_abs(self) -> float:
        """The absolute mass outside the box: the seam bound per unit of range(y)."""
        return self.tail * self.l1


def _filter_args(plan_or_psf, eps, method, reg, rcond):
    """(psf, eps, method, reg, rcond) from a plan or from the arguments, validated."""
    if isinstance(plan_or_psf, DeconvPlan):
        p = plan_or_psf
        if not hasattr(p, "psf") or getattr(p, "method", None) is None:
            raise TypeError("filter_reach needs an element-wise DeconvPlan (not a conv2d plan)")
        psf, eps, method, reg, rcond = p.psf, p.eps, p.method, p.reg, p.rcond
    else:
        psf = plan_or_psf
    if not isinstance(psf, torch.Tensor):
        raise TypeError(f"psf must be a torch.Tensor or a DeconvPlan, got {type(psf).__name__}")
    V.kernel(psf, tuple(psf.shape), name="psf")
    V.choice("method", method, V.METHODS)
    if isinstance(eps, torch.Tensor):
        raise ValueError("a per-frequency (tensor) eps has no meaning on other FFT sizes; the "
                         "tiled solve needs a float eps")
    eps = V.eps(eps, tuple(psf.shape[-2:]))
    V.reg(reg, tuple(reg.shape) if isinstance(reg, torch.Tensor) else (1, 1))
    V.rcond(rcond)
    return psf, eps, method, reg, rcond


def impulse_response(psf: torch.Tensor, size: Tuple[int, int], eps: float = 1e-2,
                     method: str = "tikhonov", reg=None, rcond: Optional[float] = None
                     ) -> torch.Tensor:
    """Impulse response of the plan's inverse filter on an (Nh, Nw) periodic grid.

    The circular solve of a unit impulse at (0, 0) by ``DeconvPlan`` at
    ``size`` in float64: exactly the filter the tiles apply (PSF, eps,
    regulariser, pseudo-inverse threshold), periodised with period ``size``.

    Returns
    -------
    Tensor (..., Nh, Nw), float64, origin at (0, 0) (negative offsets wrap).
    """
    psf64 = psf.detach().to(torch.float64)
    plan = DeconvPlan(psf64, size, eps=eps, method=method, reg=reg, rcond=rcond,
                      dtype=torch.float64)
    delta = torch.zeros(*psf.shape[:-2], *size, dtype=torch.float64, device=psf.device)
    delta[..., 0, 0] = 1.0
    return plan(delta)


def tail_mass(h: torch.Tensor, margin: Tuple[int, int]) -> Tuple[float, float]:
    """(relative, absolute) L1 mass of ``h`` (..., Nh, Nw) outside the box ``margin``.

    Distances wrap (origin at (0, 0)); the largest over the leading dims.
    """
    Nh, Nw = h.shape[-2:]
    mh, mw = margin
    a = h.abs().reshape(-1, Nh, Nw)
    i = torch.arange(Nh, device=h.device)
    j = torch.arange(Nw, device=h.device)
    inside = ((torch.minimum(i, Nh - i) <= mh)[:, None] & (torch.minimum(j, Nw - j) <= mw)[None, :])
    l1 = a.sum((-2, -1))
    out = l1 - (a * inside).sum((-2, -1))
    k = int(torch.argmax(out / l1))
    return float(out[k] / l1[k]), float(out[k])


def filter_reach(plan_or_psf, eps: float = 1e-2, method: str = "tikhonov", reg=None,
                 rcond: Optional[float] = None, tol: float = DEFAULT_TOL) -> Reach:
    """Margin beyond which the inverse filter carries less than ``tol`` of its L1 mass.

    The impulse response ``h`` of ``conj(K) / (|K|^2 + eps |R|^2)`` (or the
    thresholded pseudo-inverse) is computed in float64 on a periodic grid,
    grown per axis until the tail is read where the periodisation cannot hide
    mass (Notes), and the margins are chosen per axis from the row and column
    marginals of ``|h|`` with a tail of ``tol / 2`` each, less the aliasing
    allowance (anisotropic PSFs such as motion blur get anisotropic margins).

    Parameters
    ----------
    plan_or_psf : DeconvPlan or Tensor (..., kh, kw)
        A plan (its PSF, eps, method, regulariser and rcond are used; its
        image size is not) or a PSF, with the other arguments as in
        :class:`deconv_ext.DeconvPlan`. A PSF with leading dims gets the
        largest margin over them.
    eps, method, reg, rcond : as in :class:`deconv_ext.DeconvPlan` (scalar eps)
    tol : float in (0, 1)

    Returns
    -------
    Reach
        ``tail`` is the observed tail outside the margins plus twice the
        estimated aliased mass: an upper estimate of the true tail.

    Raises
    ------
    ValueError
        If the filter does not decay to ``tol`` within the largest grid
        (:data:`_MAX_RESPONSE_PIXELS`), raised as soon as that is clear: a tail
        that does not fall as the grid grows (a hard cut-off), or a decay that
        predicts a grid well over the cap. Pass an explicit overlap, or use
        Tikhonov with a (larger) eps, or a larger tol.

    Notes
    -----
    *Aliasing.* The grid's response is the periodisation ``h_N = sum_k
    h(. + kN)``. Its mass outside the margins differs from the true one's
    inside the central period by at most ``A``, the true mass beyond half the
    grid (the copies' total there), so the true tail is at most the observed
    one plus ``2 A``. The grid is accepted per axis when the band
    ``(7N/16, N/2]`` nearest the wrap carries at most ``tol / 16`` and decays
    over its own width ``N/16`` by at least half at the rate seen between the
    margin and the band; ``A`` is then estimated as the band's mass continued
    geometrically at that rate (at most the band's own mass). The margin is
    below ``7N/16``, so the grid is about 2.3x the margin plus a few decay
    lengths, not 4x as with a quarter-grid rule (which for 45-degree motion
    blur at eps=1e-4 needs a 9000^2 grid, against 5600^2 here).

    *Why a geometric continuation.* For ``eps |R|^2 > 0`` the filter is a
    rational function of ``e^{i w}`` without poles on the real frequencies,
    analytic in a strip around them, so ``h`` decays exponentially (Paley-
    Wiener) at a rate set by the distance of the nearest complex zero of
    ``|K|^2 + eps |R|^2`` from the real axis (about ``sqrt(eps) / |K'|`` at
    a zero of K); the tail is asymptotically geometric. A proven bound from
    a contour shift, ``|h(n)| <= e^{-a|n|} mean|G(w + i a)|``, is not used:
    it needs that zero located in 2D and, summed over the other axis, costs a
    factor ``1/a`` (hundreds of pixels of margin at eps=1e-4). The estimate
    is checked against grids twice as large in the tests; the rate also
    predicts the next grid (from the decay between N/4 and 3N/8, which
    aliasing only slows, so the prediction errs large), bounded to 1.25x ..
    4x per step. A band at the float64 rounding floor of the FFT counts as
    decayed.

    *Precision and memory.* float64: tails of 1e-6 of the L1 mass and below
    are far under float32's rounding of a grid of millions of pixels (an L1
    error of about ``sqrt(N) log2(N) 6e-8 ||h||_2``, N the pixel count). The
    response is never held whole: one complex half spectrum (8 bytes per
    pixel) is turned into the filter, then into ``h`` one axis and one block
    at a time, each block folded into the (N/2)^2 distance histogram as it is
    made (:func:`_folded_response`).

    Results are kept per process (the last 32 parameter sets), so repeated
    tiled or Dask calls with one PSF compute the reach once.
    """
    psf, eps, method, reg, rcond = _filter_args(plan_or_psf, eps, method, reg, rcond)
    tol = _tol(tol)
    key = _reach_key(psf, eps, method, reg, rcond, tol)
    with _reach_lock:
        if key in _reach_cache:
            return _reach_cache[key]
    reach = _compute_reach(psf, eps, method, reg, rcond, tol)
    with _reach_lock:
        _reach_cache[key] = reach
        while len(_reach_cache) > _MAX_CACHED_REACHES:
            _reach_cache.pop(next(iter(_reach_cache)))
    return reach


def _reach_key(psf, eps, method, reg, rcond, tol):
    def content(t):
        # resolve_neg: .numpy() refuses a lazily negated view (torch._neg_view).
        b = t.detach().resolve_neg().cpu().to(torch.float64).contiguous().numpy().tobytes()
        return (hashlib.sha1(b).hexdigest(), tuple(t.shape), str(t.dtype))

    r = content(reg) if isinstance(reg, torch.Tensor) else reg
    return (content(psf), eps, method, r, rcond, tol)


def _fast_at_most(n: int) -> int:
    """The largest FFT size ``next_fast_size`` gives that is at most ``n`` (n >= 2)."""
    m = n
    while spectral.next_fast_size(m) > n:
        m -= 1
    return spectral.next_fast_size(m)


@dataclass(frozen=True)
class _Folded:
    """``|h|`` of each plane folded to wrapped distances from the origin, on one grid.

    ``mass[p, i, j]`` is the mass of plane ``p`` at row distance ``i`` and
    column distance ``j`` (``0 <= i <= Nh // 2``, ``0 <= j <= Nw // 2``);
    ``l1[p]`` its total. ``floor``: the float64 rounding of the inverse FFT
    summed over the grid, relative to l1 (largest over the planes): tails
    below it are rounding, not response.
    """

    mass: torch.Tensor
    l1: torch.Tensor
    size: Tuple[int, int]
    floor: float


    def tails(self, axis: int) -> torch.Tensor:
        """``t[p, m]``: mass at distance > m along ``axis`` (0: rows), relative to l1."""
        prof = self.mass.sum(2 - axis)
        rev = torch.flip(torch.cumsum(torch.flip(prof, (1,)), 1), (1,))
        t = torch.cat([rev[:, 1:], rev.new_zeros(rev.shape[0], 1)], 1)
        return t / self.l1[:, None]

    def outside(self, margin: Tuple[int, int]) -> torch.Tensor:
        """Mass outside the box ``margin`` per plane, relative (summed small to large)."""
        mh, mw = margin
        return (self.mass[:, mh + 1:].sum((1, 2)) + self.mass[:, :mh + 1, mw + 1:].sum((1, 2))
                ) / self.l1


def _folded_response(psf, size, eps, method, reg, rcond) -> _Folded:
    """The impulse response's folded mass (:class:`_Folded`) on an (Nh, Nw) periodic grid.

    The same response as :func:`impulse_response`, in one complex half
    spectrum instead of five grid-sized arrays: the plan's filter overwrites
    its own spectrum row block by row block (the plan is discarded), the
    inverse FFT runs one axis at a time in blocks (columns, then rows) in
    place, and each block of rows of ``h`` is folded as soon as it is made,
    so ``h`` itself is never whole. Peak: the spectrum (8 bytes per grid
    pixel), its threshold's transient ``|K|^2`` (4 bytes, ``|R|^2`` too with
    a regulariser), the folded mass (2 bytes) and 16 MiB blocks.
    """
    Nh, Nw = size
    plan = DeconvPlan(psf.detach().to(torch.float64), size, eps=eps, method=method, reg=reg,
                      rcond=rcond, dtype=torch.float64)
    spec = plan.spectrum.reshape(-1, Nh, Nw // 2 + 1)
    planes, _, Wh = spec.shape
    block = 1 << 20  # complex128 elements per block: 16 MiB
    step = max(1, block // (planes * Wh))
    for r in range(0, Nh, step):
        g = plan.filter_spectrum(slice(r, r + step))
        spec[:, r:r + step] = g.reshape(planes, -1, Wh)
    del plan, g
    step = max(1, block // (planes * Nh))
    for c in range(0, Wh, step):
        spec[:, :, c:c + step] = torch.fft.ifft(spec[:, :, c:c + step], dim=1)
    di = torch.arange(Nh, device=spec.device)
    dj = torch.arange(Nw, device=spec.device)
    di, dj = torch.minimum(di, Nh - di), torch.minimum(dj, Nw - dj)
    mass = torch.zeros(planes, Nh // 2 + 1, Nw // 2 + 1, dtype=torch.float64, device=spec.device)
    sq = torch.zeros(planes, dtype=torch.float64, device=spec.device)
    step = max(1, block // (planes * Wh))
    for r in range(0, Nh, step):
        a = torch.fft.irfft(spec[:, r:r + step], n=Nw, dim=2).abs_()
        sq += (a * a).sum((1, 2))
        cols = a.new_zeros(planes, a.shape[1], Nw // 2 + 1).index_add_(2, dj, a)
        mass.index_add_(1, di[r:r + step], cols)
    del spec
    l1 = mass.sum((1, 2))
    # An FFT of n points errs by about eps * log2(n) of its output's L2 norm
    # (||h||_2), spread over n pixels: an L1 error of sqrt(n) times that; 8x.
    n = Nh * Nw
    floor = 8 * torch.finfo(torch.float64).eps * math.log2(n) * math.sqrt(n) * sq.sqrt() / l1
    return _Folded(mass, l1, (Nh, Nw), float(floor.max()))


#: The reach is read where the periodic response is faithful: the band
#: (_BAND N, N/2] nearest the wrap must carry at most _BAND_TAIL tol, decaying
#: (Notes of filter_reach).
_BAND = 7 / 16
_BAND_TAIL = 1 / 16


def _aliased_tail(t: torch.Tensor, n: int, ref: int, floor: float) -> Tuple[float, float]:
    """(band tail, aliased tail) of one axis' relative tail profile ``t[m]`` on a grid of n.

    The band tail is ``t[7n/16]``, the mass in the band ``(7n/16, n/2]``
    nearest the wrap. The aliased tail estimates the true mass beyond
    ``n/2`` (what the periodisation folds back): the band's mass continued
    geometrically, ``t_b q / (1 - q)``, with ``q`` the decay over one band
    width at the rate seen between ``ref`` and the band (inf where the
    profile does not decay there). A band at the rounding ``floor`` has no
    rate to read: the response has vanished there, and the aliased tail is
    taken as the band's own.
    """
    b = int(_BAND * n)
    tb = float(t[b])
    if tb <= floor:
        return tb, tb
    ref = min(ref, b - 1)
    rate = math.log(float(t[ref]) / tb) / (b - ref)
    q = math.exp(-rate * (n // 2 - b)) if rate > 0 else 1.0
    return tb, (tb * q / (1 - q) if q < 1 else math.inf)


def _predicted_size(t: torch.Tensor, n: int, tol: float) -> float:
    """Grid size for one axis whose band is not faithful yet, from the decay seen (or inf).

    The decay rate between n/4 and 3n/8 (slightly aliased, which only slows
    it: the prediction errs large) continued to where the tail falls to
    ``tol / 32``; that distance is to lie at the band's start in the new grid.
    """
    d1, d2 = n // 4, (3 * n) // 8
    t1, t2 = float(t[d1]), float(t[d2])
    if t2 <= 0.0 or t1 <= t2:
        return math.inf
    rate = math.log(t1 / t2) / max(1, d2 - d1)
    return (d2 + max(0.0, math.log(t2 / (tol / 32))) / rate) / _BAND


def _compute_reach(psf, eps, method, reg, rcond, tol) -> Reach:
    kh, kw = psf.shape[-2:]
    size = [spectral.next_fast_size(max(256, 8 * kh)), spectral.next_fast_size(max(256, 8 * kw))]
    last = None  # (size, band tails) of the previous grid
    while True:
        f = _folded_response(psf, tuple(size), eps, method, reg, rcond)
        tails = [f.tails(d).amax(0) for d in range(2)]
        # ref: the last distance whose tail exceeds tol / 2 (the margin - 1).
        refs = [int(torch.count_nonzero(t > tol / 2)) - 1 for t in tails]
        band = [_aliased_tail(tails[d], size[d], max(refs[d], 0), f.floor) for d in range(2)]
        # Faithful: the band carries at most tol / 16 and decays over its own
        # width by at least half (then the aliased tail is at most the band's).
        ok = [tb <= _BAND_TAIL * tol and alias <= tb for tb, alias in band]
        if all(ok):
            alias = [a for _, a in band]
            m = [int(torch.nonzero(tails[d] <= tol / 2 - 2 * alias[d])[0]) for d in range(2)]
            rel = f.outside((m[0], m[1])) + 2 * (alias[0] + alias[1])
            k = int(torch.argmax(rel))
            return Reach(m[0], m[1], float(rel[k]), float(f.l1.max()), tuple(size))
        need = [size[d] if ok[d] else _predicted_size(tails[d], size[d], tol) for d in range(2)]
        # A grid far too small shows a flat, aliased profile whose rate says
        # little: growth is bounded to 1.25x .. 4x per step.
        want = [size[d] if ok[d] else int(min(4 * size[d], max(1.25 * size[d], need[d])))
                for d in range(2)]
        new = _fit_cap(size, want)
        # Fail fast. No decay: an axis at least 1024 that grew 2x and more
        # without its band tail halving (a hard cut-off spreads its mass
        # evenly, at any size). Or a decay whose predicted grid is over
        # 1.5x the largest allowed (the prediction errs large, not 1.5x).
        flat = last is not None and any(
            not ok[d] and last[0][d] >= 1024 and size[d] >= 2 * last[0][d]
            and band[d][0] > 0.5 * last[1][d] for d in range(2))
        far = min(size) >= 1024 and need[0] * need[1] > 1.5 * _MAX_RESPONSE_PIXELS
        if new is None or flat or far:
            b = [int(_BAND * s) for s in size]
            why = ("its tail does not decay as the grid grows" if flat else
                   f"its decay predicts a grid of about {need[0]:.0f}x{need[1]:.0f}" if far else
                   "it has not decayed on the largest grid allowed")
            raise ValueError(
                f"filter_reach(psf, eps={eps!r}, method={method!r}, reg={reg!r}, rcond={rcond!r}, "
                f"tol={tol}): {why}; beyond {b[0]}x{b[1]} px of a {size[0]}x{size[1]} grid "
                f"it still carries {band[0][0]:.1e} (rows) and {band[1][0]:.1e} (cols) of its "
                f"L1 mass, where at most {_BAND_TAIL * tol:.1e} is needed (grids are capped at "
                f"{_MAX_RESPONSE_PIXELS} pixels of float64). A hard spectral cut-off "
                f"(method='pinv', or eps=0, where the PSF's spectrum nearly vanishes) decays "
                f"only algebraically. Pass an explicit overlap=, or use method='tikhonov' with "
                f"eps > 0, a larger eps or a larger tol")
        last = (list(size), [tb for tb, _ in band])
        size = new
        del f


def _fit_cap(size, want) -> Optional[list]:
    """``want`` as FFT sizes, its growing axes shrunk to the grid caps; None if none can grow."""
    new = [min(spectral.next_fast_size(w), _fast_at_most(_MAX_RESPONSE_SIDE)) for w in want]
    while new[0] * new[1] > _MAX_RESPONSE_PIXELS:
        grow = [d for d in range(2) if new[d] > size[d]]
        if not grow:
            return None
        # Shrink the growing axis that asks most over its current size, 10 % a step.
        d = max(grow, key=lambda a: new[a] / size[a])
        new[d] = max(size[d], _fast_at_most(int(new[d] * 0.9)))
    return new if any(new[d] > size[d] for d in range(2)) else None


def _tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0 < float(tol) < 1):
        raise ValueError(f"tol={tol!r} is not valid; expected a float in (0, 1)")
    return float(tol)


# ---------------------------------------------------------------------------
# Geometry: which pixels of the extended image each tile's buffer holds
# ---------------------------------------------------------------------------

def extension_index(start: int, length: int, n: int, mode: str) -> np.ndarray:
    """Source index in [0, n) of the extended indices ``start .. start + length - 1``.

    ``mode`` as in :data:`deconv_ext.plans.padded.FAST_PAD_MODE` values: "reflect"
    (``dcb|abcd|cba``), "symmetric" (``cba|abcd|dcb``), "replicate"; any
    distance from the image (several reflections if needed).
    """
    if mode not in ("reflect", "symmetric", "replicate"):
        raise ValueError(f"mode={mode!r} is not valid; expected 'reflect', 'symmetric' or "
                         f"'replicate'")
    # The one statement of the extension rules (the pad op's, in pure torch).
    return padding.index_map(length, -start, n, mode, "cpu").numpy()


@dataclass(frozen=True)
class _Axis:
    """One axis of the tiling: tile starts, tile length, buffer length and offset."""

    n: int
    tile: int
    margin: int
    buffer: int
    offset: int  # where the tile's first pixel sits in the buffer (>= margin)

    def starts(self):
        return range(0, self.n, self.tile)


def tile_geometry(size: Tuple[int, int], tile: Tuple[int, int], margin: Tuple[int, int]):
    """Per axis: the buffer ``next_fast_size(tile + 2 margin)`` and the tile's offset in it.

    The rounding slack goes to the margins (half each side), so every pixel
    of the buffer is a pixel of the extended image and the reach is at least
    ``margin`` on both sides of every interior pixel.
    """
    axes = []
    for n, t, m in zip(size, tile, margin):
        t = min(t, n)
        b = spectral.next_fast_size(t + 2 * m)
        axes.append(_Axis(n, t, m, b, m + (b - t - 2 * m) // 2))
    return tuple(axes)


# ---------------------------------------------------------------------------
# Array access (torch tensors, numpy arrays, memory maps)
# ---------------------------------------------------------------------------

_NP_FLOAT = (np.float16, np.float32, np.float64)


def _is_numpy(a) -> bool:
    return isinstance(a, np.ndarray)


def _check_image(image):
    if isinstance(image, torch.Tensor):
        V.image(image)
        return spectral.compute_dtype(image.dtype), image.dtype
    if not _is_numpy(image):
        raise TypeError(f"image must be a torch.Tensor or a numpy array (numpy.memmap, "
                        f"tifffile.memmap), got {type(image).__name__}")
    if image.ndim < 2:
        raise ValueError(f"image has shape {image.shape}; expected at least 2 dims (..., H, W)")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise TypeError(f"image has dtype {image.dtype}; expected a real integer or floating dtype")
    compute = torch.float64 if image.dtype == np.float64 else torch.float32
    result = image.dtype if image.dtype.type in _NP_FLOAT else np.dtype(np.float32)
    return compute, result


def _same_memory(a, b) -> bool:
    if _is_numpy(a) and _is_numpy(b):
        return bool(np.may_share_memory(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.device != b.device or a.numel() == 0 or b.numel() == 0:
            return False
        a0 = a.untyped_storage().data_ptr()
        b0 = b.untyped_storage().data_ptr()
        return a0 < b0 + b.untyped_storage().nbytes() and b0 < a0 + a.untyped_storage().nbytes()
    return False


def _check_out(out, image, result_dtype):
    shape = tuple(image.shape)
    if isinstance(image, torch.Tensor):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor for a tensor image, got {type(out).__name__}")
        if out.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"out has dtype {out.dtype}; expected a real floating dtype")
        if out.device != image.device:
            raise ValueError(f"out is on {out.device} but image is on {image.device}; expected "
                             f"the same device")
    else:
        if not _is_numpy(out):
            raise TypeError(f"out must be a numpy array (or numpy/tifffile memmap) for a numpy "
                            f"image, got {type(out).__name__}")
        if out.dtype.type not in _NP_FLOAT:
            raise TypeError(f"out has dtype {out.dtype}; expected float16, float32 or float64")
        if not out.flags.writeable:
            raise ValueError("out is read-only (e.g. a memmap opened with mode='r'); expected a "
                             "writeable array (mode='r+' or 'w+')")
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected the image's shape {shape}")
    if _same_memory(out, image):
        raise ValueError("out shares memory with image; the tiles read neighbouring input pixels "
                         "after earlier tiles were written, so pass a separate output array")
    return out


def _read_window(image, rows: np.ndarray, cols: np.ndarray, dtype: torch.dtype,
                 device) -> torch.Tensor:
    """``image[..., rows][..., cols]`` as a contiguous tensor in ``dtype``.

    Only the bounding box of the indices is read (for a memory map: only
    those pages), then re-indexed where the window leaves the image.
    """
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    block = image[..., r0:r1, c0:c1]
    if isinstance(block, torch.Tensor):
        t = block.to(dtype)
    else:
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        arr = np.ascontiguousarray(block, dtype=np_dtype)
        if not arr.flags.writeable:
            # A read-only map already contiguous in the right dtype comes back
            # uncopied; torch warns on (and must never write to) such memory.
            arr = arr.copy()
        t = torch.from_numpy(arr)
    t = t.to(device)
    if len(rows) != r1 - r0 or not np.array_equal(rows, np.arange(r0, r1)):
        t = t.index_select(-2, torch.from_numpy(rows - r0).to(t.device))
    if len(cols) != c1 - c0 or not np.array_equal(cols, np.arange(c0, c1)):
        t = t.index_select(-1, torch.from_numpy(cols - c0).to(t.device))
    return t.contiguous()


def _write(out, sl, x: torch.Tensor) -> None:
    if isinstance(out, torch.Tensor):
        out[sl].copy_(x)
    else:
        out[sl] = x.cpu().numpy().astype(out.dtype, copy=False)


# ---------------------------------------------------------------------------
# The tiled solve
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TiledInfo:
    """What :func:`deconvolve_tiled` did and how close it is to the untiled solve.

    Attributes
    ----------
    tile : (th, tw), the interior each solve wrote (clipped to the image)
    overlap : (m_h, m_w), the margin of extended-image pixels on each side (at least)
    fft_size : (Nh, Nw), the buffer and plan size of every tile solve
    n_tiles : int
    tol : float or None, the tail tolerance of ``overlap="auto"``
    tail : float, the filter's L1 mass outside the overlap box, relative
    l1 : float, ``||h||_1``
    value_range : float, ``max(y) - min(y)`` over the image
    seam_bound : float
        ``tail * l1 * value_range``: no pixel differs from the border-correct
        untiled solve (module docstring) by more, up to floating-point rounding.
    """

    tile: Tuple[int, int]
    overlap: Tuple[int, int]
    fft_size: Tuple[int, int]
    n_tiles: int
    tol: Optional[float]
    tail: float
    l1: float
    value_range: float
    seam_bound: float


def _overlap_arg(overlap) -> Optional[Tuple[int, int]]:
    if isinstance(overlap, str):
        if overlap != "auto":
            raise ValueError(f"overlap={overlap!r} is not valid; expected 'auto', an int >= 0 or "
                             f"a pair of them")
        return None
    v = (overlap, overlap) if isinstance(overlap, numbers.Integral) else overlap
    if (isinstance(overlap, bool) or not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) and a >= 0
                       for a in v)):
        raise ValueError(f"overlap={overlap!r} is not valid; expected 'auto', an int >= 0 or a "
                         f"pair of them")
    return int(v[0]), int(v[1])


def _explicit_reach(psf, eps, method, reg, rcond, margin) -> Reach:
    """The tail of an explicit margin, read as :func:`filter_reach` reads its own.

    On a grid that puts the margin inside its faithful 3/8 (capped: a margin
    beyond the cap's 3/8 is read there, which overstates its tail), the
    observed tail plus twice the aliased tail, at most 1 (the trivial bound).
    """
    size = [spectral.next_fast_size(max(256, 8 * k, math.ceil((m + 2) / _BAND)))
            for m, k in zip(margin, psf.shape[-2:])]
    side = _fast_at_most(_MAX_RESPONSE_SIDE)
    size = [min(s, side) for s in size]
    while size[0] * size[1] > _MAX_RESPONSE_PIXELS:
        d = 0 if size[0] >= size[1] else 1
        size[d] = _fast_at_most(int(size[d] * 0.9))
    f = _folded_response(psf, tuple(size), eps, method, reg, rcond)
    m = tuple(min(a, int(_BAND * s)) for a, s in zip(margin, size))
    alias = [_aliased_tail(f.tails(d).amax(0), size[d], min(m[d], size[d] // 4), f.floor)[1]
             for d in range(2)]
    rel = min(1.0, float((f.outside(m) + 2 * (alias[0] + alias[1])).max()))
    return Reach(margin[0], margin[1], rel, float(f.l1.max()), tuple(size))


def deconvolve_tiled(image, psf: torch.Tensor, eps: float = 1e-2, method: str = "tikhonov",
                     reg=None, boundary: str = "reflect", rcond: Optional[float] = None, *,
                     tile=DEFAULT_TILE, overlap: Union[str, int, Tuple[int, int]] = "auto",
                     tol: float = DEFAULT_TOL, out=None, progress: bool = False,
                     return_info: bool = False):
    """Deconvolve an image tile by tile, with peak memory set by the tile, not the image.

    Each tile (the ``tile`` interior it writes) is solved on a buffer of the
    tile plus ``overlap`` pixels of real neighbours on each side, the image's
    own border being extended by the boundary rule; one circular
    :class:`~deconv_ext.DeconvPlan` at the buffer size serves every tile
    (edge tiles are filled to the same size by the rule). The result is the
    border-correct solve described in the module docstring: the observation
    extended by the rule by the filter's reach, solved and cropped.

    Parameters
    ----------
    image : Tensor, numpy array, numpy.memmap or tifffile.memmap (..., H, W)
        Leading dims are solved together in each tile. numpy integer images
        compute in float32, float64 ones in float64.
    psf : Tensor (kh, kw) or (..., kh, kw), broadcasting to the leading dims
    eps : float >= 0
    method : {"tikhonov", "pinv"}
    reg : None, "laplacian" or Tensor
    boundary : {"reflect", "symmetric", "replicate", "zeros"}, default "reflect"
        How the image is extended past its edges (the rule of the padded fast
        path, ``deconv_ext.plans.padded.FAST_PAD_MODE``: "zeros" is extended by
        "replicate"). "circular" is rejected: a tile has no periodic
        neighbour to wrap to.
    rcond : float, optional; the pseudo-inverse threshold (see DeconvPlan).
    tile : int or (th, tw), keyword-only, default :data:`DEFAULT_TILE`
        Interior written per solve; at least the PSF's size. Clipped to the image.
    overlap : "auto", int >= 0 or (int, int), keyword-only
        Margin per side. "auto": :func:`filter_reach` at ``tol``.
    tol : float in (0, 1), keyword-only
        Tail of the inverse filter's L1 mass allowed outside the margin.
    out : same kind as ``image``, shape (..., H, W), floating, writeable, optional
        Written tile by tile (a memory map keeps the output out of RAM).
        Default: a new tensor (image's dtype) or numpy array (float dtype of
        the image, float32 for integers).
    progress : bool, keyword-only; a tqdm progress bar over the tiles.
    return_info : bool, keyword-only; also return a :class:`TiledInfo`.

    Returns
    -------
    ``out`` (..., H, W), or ``(out, TiledInfo)``.

    Raises
    ------
    ValueError, TypeError
        For any invalid argument, before anything is written to ``out``.
    """
    compute_dtype, result_dtype = _check_image(image)
    if isinstance(psf, np.ndarray):
        psf = torch.from_numpy(psf)
    if not isinstance(psf, torch.Tensor):
        raise TypeError(f"psf must be a torch.Tensor, got {type(psf).__name__}")
    shape = tuple(image.shape)
    H, W = shape[-2:]
    V.kernel(psf, shape)
    device = image.device if isinstance(image, torch.Tensor) else psf.device
    if isinstance(image, torch.Tensor):
        V.same_device("psf", psf, "image", image)
    V.choice("boundary", boundary, V.BOUNDARIES)
    if boundary == "circular":
        raise ValueError("boundary='circular' has no meaning for a tiled solve (a tile has no "
                         "periodic neighbour); expected 'reflect', 'symmetric', 'replicate' or "
                         "'zeros' (or deconvolve the whole image with boundary='circular')")
    psf, eps, method, reg, rcond = _filter_args(psf, eps, method, reg, rcond)
    tile = V.pair("tile", tile)
    kh, kw = psf.shape[-2:]
    if tile[0] < kh or tile[1] < kw:
        raise ValueError(f"tile={tile} is smaller than the PSF ({kh}x{kw}); expected each tile "
                         f"side >= the PSF's")
    margin = _overlap_arg(overlap)
    tol = _tol(tol)
    if out is not None:
        _check_out(out, image, result_dtype)
    if margin is None:
        reach = filter_reach(psf, eps, method, reg, rcond, tol)
        margin = reach.margin
    else:
        reach = _explicit_reach(psf, eps, method, reg, rcond, margin) if return_info else None
    if out is None:
        if isinstance(image, torch.Tensor):
            out = torch.empty(shape, dtype=image.dtype, device=image.device)
        else:
            out = np.empty(shape, dtype=result_dtype)

    ax_r, ax_c = tile_geometry((H, W), tile, margin)
    plan = DeconvPlan(psf.to(device=device, dtype=compute_dtype), (ax_r.buffer, ax_c.buffer),
                      eps=eps, method=method, reg=reg, rcond=rcond, dtype=compute_dtype)
    mode = FAST_PAD_MODE[boundary]
    starts = [(i, j) for i in ax_r.starts() for j in ax_c.starts()]
    lo, hi = math.inf, -math.inf
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc="tiles", unit="tile")
    lead = (slice(None),) * (len(shape) - 2)
    for i0, j0 in starts:
        rows = extension_index(i0 - ax_r.offset, ax_r.buffer, H, mode)
        cols = extension_index(j0 - ax_c.offset, ax_c.buffer, W, mode)
        buf = _read_window(image, rows, cols, compute_dtype, device)
        th, tw = min(ax_r.tile, H - i0), min(ax_c.tile, W - j0)
        if return_info:
            inner = buf[..., ax_r.offset:ax_r.offset + th, ax_c.offset:ax_c.offset + tw]
            lo, hi = min(lo, float(inner.min())), max(hi, float(inner.max()))
        x = plan(buf)
        _write(out, lead + (slice(i0, i0 + th), slice(j0, j0 + tw)),
               x[..., ax_r.offset:ax_r.offset + th, ax_c.offset:ax_c.offset + tw])
        del buf, x
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if not return_info:
        return out
    rng = float(hi - lo) if starts else 0.0
    info = TiledInfo(tile=(ax_r.tile, ax_c.tile), overlap=tuple(margin),
                     fft_size=(ax_r.buffer, ax_c.buffer), n_tiles=len(starts),
                     tol=tol if overlap == "auto" else None, tail=reach.tail, l1=reach.l1,
                     value_range=rng, seam_bound=reach.tail * reach.l1 * rng)
    return out, info


def deconvolve_tiff(src: str, dst: str, psf: torch.Tensor, eps: float = 1e-2,
                    method: str = "tikhonov", reg=None, boundary: str = "reflect",
                    rcond: Optional[float] = None, *, tile=DEFAULT_TILE,
                    overlap: Union[str, int, Tuple[int, int]] = "auto",
                    tol: float = DEFAULT_TOL, dtype: str = "float32", progress: bool = False,
                    return_info: bool = False):
    """Deconvolve an uncompressed TIFF into a new TIFF, tile by tile, through memory maps.

    ``src`` is opened with ``tifffile.memmap(src, mode="r")`` (an
    uncompressed, contiguous TIFF: tifffile raises ``ValueError`` otherwise),
    ``dst`` is created with ``tifffile.memmap(dst, shape=..., dtype=dtype)``
    and filled by :func:`deconvolve_tiled`; neither image is ever wholly in
    memory. Arguments as in :func:`deconvolve_tiled`.

    Returns
    -------
    None, or the :class:`TiledInfo` with ``return_info=True``.
    """
    try:
        import tifffile
    except ImportError as e:  # pragma: no cover - tifffile is a dev requirement
        raise ImportError('deconvolve_tiff needs tifffile: pip install tifffile') from e
    if np.dtype(dtype).type not in _NP_FLOAT:
        raise TypeError(f"dtype={dtype!r} is not valid; expected 'float16', 'float32' or 'float64'")
    image = tifffile.memmap(src, mode="r")
    existed = os.path.exists(dst)
    out = tifffile.memmap(dst, shape=image.shape, dtype=np.dtype(dtype))
    try:
        res = deconvolve_tiled(image, psf, eps, method, reg, boundary, rcond, tile=tile,
                               overlap=overlap, tol=tol, out=out, progress=progress,
                               return_info=return_info)
        out.flush()
    except BaseException:
        del out
        if not existed:
            # A failed argument check must not leave an empty output behind.
            os.remove(dst)
        raise
    del out
    return res[1] if return_info else None
