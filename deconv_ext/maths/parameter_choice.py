"""Choosing the Tikhonov weight eps from the data, in closed form on the spectrum.

For a circulant blur ``K`` and regulariser ``R`` the Tikhonov solution is, per
frequency ``w`` of the ``rfft2`` half spectrum,
``X = conj(K) Y / (|K|^2 + eps |R|^2)``, and everything a parameter-choice
rule needs is a sum over frequencies of the powers ``|K|^2``, ``|R|^2`` and
``|Y|^2``: one candidate eps costs one pass over three real arrays and no FFT.

Notation (per plane of ``N = H W`` pixels, unnormalised FFT)::

    f(w) = |K|^2 / (|K|^2 + eps |R|^2)          filter factor, in [0, 1]
    g(w) = 1 - f = eps |R|^2 / (|K|^2 + eps |R|^2)
    sum_w  = sum over the half spectrum with weight c(w): 1 for the
             self-mirrored columns 0 and (even W) W / 2, 2 for the others,
             so that sum_w c(w) = N (the full spectrum)
    ||y - A x||^2 = sum_w g^2 |Y|^2 / N               (Parseval)
    trace(A A_eps^+) = sum_w f,  N - trace = sum_w g
    ||R x||^2 = sum_w |R|^2 |K|^2 |Y|^2 / (|K|^2 + eps |R|^2)^2 / N

Where ``|K|^2 + eps |R|^2 = 0`` the solve keeps nothing (``f = 0``), as the
pseudo-inverse does for a dropped frequency; where ``eps |R|^2 = 0`` and
``|K|^2 > 0`` (the Laplacian at DC) it keeps the frequency (``f = 1``).

Rules (``choose_eps(..., rule=...)``):

``"gcv"``
    Generalised cross-validation (Golub, Heath & Wahba 1979): minimise
    ``N ||y - A x||^2 / (N - trace)^2``. Needs no noise level; assumes white
    noise and a correct forward model. Estimates the *predictive* risk
    ``||A (x_eps - x)||^2``.
``"upre"``
    Unbiased predictive risk estimator (Mallows' C_L, 1973): minimise
    ``||y - A x||^2 - 2 s^2 (N - trace)``. Needs the noise level ``s``.
``"risk"``
    Unbiased estimate of the *solution* risk ``||x_eps - x||^2`` (what PSNR
    measures), up to a constant independent of eps: with
    ``E|Y|^2 = |K|^2 |X|^2 + N s^2``,
    ``E||x_eps - x||^2 = const + sum_w (2 s^2 - (1 + g) |Y|^2 / N) / (|K|^2 + eps |R|^2)``.
    Needs the noise level; valid for the circulant model (every frequency
    observed with the same noise power).
``"discrepancy"``
    Morozov's discrepancy principle (1966): the eps with
    ``||y - A x||^2 = tau N s^2`` (the residual is increasing in eps, so the
    root is unique). ``tau`` is :data:`DISCREPANCY_TAU` (1.3, Morozov's
    safety factor ``tau > 1``) on the circulant model and for layers, 1 on
    the padded path. With an *estimated* ``s`` the rule tends to pick eps
    too small, by the estimate's own error and by the signal left in the
    frequencies it reads; the safety factor absorbs that (measured: see the
    constant).
``"lcurve"``
    Hansen & O'Leary (1993): the eps of maximum curvature of the curve
    ``(log ||y - A x||, log ||R x||)``; the curvature is computed from
    closed-form derivatives in ``t = log eps``
    (``d f / dt = -f g``, ``d g / dt = f g``). Needs no noise level; known to
    be unreliable for smooth solutions and large N (Hanke 1996; Vogel 1996).
``"auto"``
    :data:`AUTO_RULE`, by observation model and regulariser: on the circular
    model GCV with a smoothness prior (``reg="laplacian"``) and the
    discrepancy principle with the identity (``reg=None``); on the padded path
    of a non-circular boundary the minimiser of the edge-aware risk
    (:data:`EDGE_RISK`, below). Chosen on ``benchmarks/bench_eps.py`` (six
    scikit-image test images, Gaussian / motion / disk / box blurs, noise
    1e-3 to 5e-2, 72 cases per row): the rule with the smallest gaps in each
    row (``benchmarks/RESULTS.md``). GCV with the identity picks eps too
    small (median gap 2.7 dB circular).

Non-circular boundaries: the padded fast path extends the observation into a
larger buffer and solves circularly there. The extended data is not the blur
of any scene near the seams (where the blur of ``y`` saw a scene the extension
does not reproduce, and where the buffer wraps around), nor wherever the blur
is not symmetric under the extension (a mirrored motion blur is another
blur). A noise-only rule on the buffer fits that inconsistency with a far
too small eps, and the solve rings on it. So (:func:`choose_padded_from_bins`):

1. the noise level and a signal prior are fitted on the *observed region*
   only, made periodic by a Tukey window (:func:`window_spectrum`): the
   prior is ``1 / |L|^2`` (``L`` the Laplacian) scaled by GCV with the
   Laplacian on the window (:func:`edge_prior`);
2. the inconsistency ``E`` of the padded data is measured
   (:func:`consistency_spectrum`: the buffer minus the blur of the extended
   crop of a solve at the prior's best eps, or at the least eps that
   amplifies no frequency more than :data:`EDGE_GAIN` times);
3. eps minimises the edge-aware risk (:func:`_edge_risk`): the prior's bias,
   the noise and the ringing ``f^2 |E|^2 / |K|^2`` the filter makes of
   ``E``, weighted by :data:`EDGE_WEIGHT` (the part that lands in the image).

``"auto"`` is that minimiser; a named rule runs on the window (step 1's
spectrum) and its eps is multiplied by the factor step 3 asks for over the
prior's own minimiser. Three FFTs of the buffer more than the solve's own
(the window's and the inconsistency's two; the buffer's spectrum is shared).

Noise level: rules that need it take ``noise_std``; when it is None they
estimate it from the spectrum (:func:`~deconv_ext.maths.noise.estimate_noise_spectrum`);
given the image, :func:`~deconv_ext.maths.noise.estimate_noise` is better.

Minimisation: eps is searched in log space over the range where the filter
changes, ``[max(q_min / 100, 1e-12 q_max), 100 q_max]`` with
``q = |K|^2 / |R|^2`` over the frequencies where both are positive (outside
it ``f`` is within 1 % of 0 or 1 at every frequency and no objective moves).
A grid of :data:`POINTS_PER_DECADE` points per decade brackets the global
minimum of each plane, then nested grids (each level one vectorised
evaluation over all planes) refine it to ``rtol`` in eps; the discrepancy
equation's root is bracketed the same way. Objectives are evaluated in
float64 whatever the input dtype. A plane whose objective is
flat over the whole range (e.g. a constant image: every eps gives the same
solution) gets :data:`FALLBACK_EPS` and a warning.

References
----------
G. H. Golub, M. Heath and G. Wahba, "Generalized cross-validation as a method
for choosing a good ridge parameter", Technometrics 21(2), 215-223, 1979.

V. A. Morozov, "On the solution of functional equations by the method of
regularization", Soviet Math. Dokl. 7, 414-417, 1966.

P. C. Hansen and D. P. O'Leary, "The use of the L-curve in the
regularization of discrete ill-posed problems", SIAM J. Sci. Comput. 14(6),
1487-1503, 1993.

C. L. Mallows, "Some comments on C_p", Technometrics 15(4), 661-675, 1973.

C. R. Vogel, "Computational Methods for Inverse Problems", SIAM, 2002,
chapter 7 (UPRE, GCV, discrepancy and L-curve for Tikhonov filters).
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch

from .padding import pad as pad_extend
from .spectral import laplacian_power
from .noise import damped_indices, estimate_noise, estimate_noise_spectrum, noise_from_power

__all__ = [
    "RULES",
    "FALLBACK_EPS",
    "SpectralTerms",
    "EpsChoice",
    "RuleBins",
    "bin_sums",
    "search",
    "choose_from_bins",
    "resolve",
    "half_spectrum_weights",
    "spectral_terms",
    "rule_objective",
    "choose_eps",
    "svd_power",
    "choose_eps_svd",
    "svd_bins",
    "svd_spectra",
    "choose_svd_from_bins",
    "rule_objective_svd",
    "tukey_window",
    "default_taper",
    "window_spectrum",
    "consistency_spectrum",
    "RuleKernels",
    "tikhonov_spectrum",
    "power_bins",
    "choose_padded_from_bins",
    "padded_bins",
    "edge_prior",
    "minimise_edge_risk",
    "choose_eps_padded",
    "EDGE_WEIGHT",
    "AUTO_RULE",
    "EDGE_RISK",
    "DISCREPANCY_TAU",
]

RULES = ("auto", "gcv", "upre", "risk", "discrepancy", "lcurve")
#: What "auto" runs on the padded path of a non-circular boundary: the
#: minimiser of the edge-aware risk (module docstring, "Non-circular boundaries").
EDGE_RISK = "edge-risk"
#: The rule "auto" runs: {(model, smoothness prior): rule}, model "circular"
#: (the circulant model, and layers) or "padded" (the fast path of a
#: non-circular boundary); module docstring, "auto".
AUTO_RULE = {("circular", True): "gcv", ("circular", False): "discrepancy",
             ("padded", True): EDGE_RISK, ("padded", False): EDGE_RISK}
NEEDS_NOISE = ("upre", "risk", "discrepancy")
#: Morozov's safety factor: the discrepancy rule matches the residual to
#: ``tau N s^2``. The theory asks for tau > 1 (Engl, Hanke & Neubauer 1996,
#: ch. 4). On the circulant model, reg=None, 1.3 was chosen on images
#: bench_eps.py does not use (chelsea, coffee, rocket, grass, clock, cell; gaps
#: median / p90 / worst 0.34 / 1.53 / 3.32 dB at tau = 1, 0.19 / 1.10 / 2.99 at
#: 1.1, 0.25 / 0.92 / 2.46 at 1.3) and checked on its own (0.30 / 1.03 / 2.08,
#: 0.25 / 0.94 / 1.57, 0.22 / 0.86 / 1.78): with an estimated noise level the
#: rule picks eps too small on smooth images. Layers use it too (a one-channel
#: layer is the circulant model). A named rule on the padded path keeps 1:
#: the ringing term raises its eps already, and 1.1 there doubled the gaps.
DISCREPANCY_TAU = 1.3
# Weight of the ringing term in the padded path's edge-aware risk: the
# fraction of the ringing's energy (summed over the buffer) that lands in the
# image. Measured directly it is 1/5 to 1/100 (the rest is in the padding and
# is cropped), larger for small eps; 0.5 was chosen on images bench_eps.py does
# not use (chelsea, coffee, rocket, grass, clock, cell) and checked on its own.
EDGE_WEIGHT = 0.5
# The padded data's inconsistency is measured from a solve x0 (its crop an
# estimate of the scene near the edges); one that amplifies some frequency
# more than this many times is mostly its own ringing there (on a noise-free
# image the prior's eps is ~1e-12), and the inconsistency measured from it
# is 1e4 times too large. x0's eps is at least the one that bounds the gain so.
# Measured on the images of EDGE_WEIGHT: 30 against 10 to 300.
EDGE_GAIN = 30.0
# What a flat objective falls back to: deconvolve's default eps.
FALLBACK_EPS = 1e-2
POINTS_PER_DECADE = 3
# Bins per decade of q for the refinement, and the grid's bins are COARSEN of them.
# At 1/80 decade a bin's midpoint error is ~1e-4 of a filter factor's sum, far
# below what rtol resolves: bench_eps.py gave the same gaps as with 160 (whose
# search cost twice as much).
FINE_PER_DECADE = 80
COARSEN = 8
RANGE_DECADES = 14.0
# q more than this many decades below the largest share the lowest bin.
SPAN_DECADES = RANGE_DECADES + 4.0
_PERS = ("plane", "sample")
# Grid memory budget (float64 elements per temporary) for the vectorised search.
_CHUNK_ELEMS = 1 << 22


# ---------------------------------------------------------------------------
# The objectives on flattened spectra
# ---------------------------------------------------------------------------

class _Spectra(NamedTuple):
    """One row per system (plane or sample), float64, over the frequencies
    whose filter factor moves with eps (``|K|^2 > 0`` and ``|R|^2 > 0``); the
    others are folded into constants: ``|K|^2 = 0`` gives ``g = 1`` for every
    eps, ``|R|^2 = 0 < |K|^2`` gives ``g = 0``. Inactive entries have zero
    weight (and ``q = 1``), so rows with different masks stay one tensor."""

    q: torch.Tensor          # (B, F) |K|^2 / |R|^2
    wa: torch.Tensor         # (B, F) half-spectrum weight c(w), 0 where inactive
    wy: torch.Tensor         # (B, F) c(w) |Y|^2 / n_pix
    wr: torch.Tensor         # (B, F) c(w) / |R|^2 (solution risk)
    wry: torch.Tensor        # (B, F) c(w) |Y|^2 / (|R|^2 n_pix)
    n_pix: float             # pixels per plane (Parseval's normaliser)
    n_data: float            # observations per system
    dof_extra: torch.Tensor  # (B,) N - trace that no eps changes
    res_extra: torch.Tensor  # (B,) residual that no eps changes
    energy: torch.Tensor     # (B,) ||y||^2


def _compress(k2, r2, y2, w, n_pix: float, n_data: float, dof_extra: float = 0.0,
              res_extra=None) -> _Spectra:
    """Build :class:`_Spectra` from (B, F) float64 powers and the (F,) weights."""
    active = (k2 > 0) & (r2 > 0)
    dead = k2 == 0                      # g = 1 for every eps
    wf = w.expand_as(k2)
    zero = torch.zeros_like(k2)
    q = torch.where(active, k2 / torch.where(active, r2, torch.ones_like(r2)), torch.ones_like(k2))
    wa = torch.where(active, wf, zero)
    wy = wa * y2 / n_pix
    wr = torch.where(active, wf / torch.where(active, r2, torch.ones_like(r2)), zero)
    wry = wr * y2 / n_pix
    dof = torch.where(dead, wf, zero).sum(-1) + dof_extra
    res = torch.where(dead, wf * y2, zero).sum(-1) / n_pix
    if res_extra is not None:
        res = res + res_extra
    energy = (wf * y2).sum(-1) / n_pix + (0 if res_extra is None else res_extra)
    return _Spectra(q, wa, wy, wr, wry, float(n_pix), float(n_data), dof, res, energy)


def bin_sums(idx: torch.Tensor, v: torch.Tensor, nbins: int, fdims: int) -> torch.Tensor:
    """Sum of ``v`` per bin of ``idx`` over the ``fdims`` trailing dims, float64.

    ``idx`` int64 in [0, nbins), broadcastable to ``v``: (..., *F) -> (..., nbins).
    """
    lead = v.shape[:-fdims]
    flat_i = idx.expand(v.shape).flatten(-fdims)
    out = torch.zeros(*lead, nbins, dtype=torch.float64, device=v.device)
    return out.scatter_add_(-1, flat_i, v.to(torch.float64).flatten(-fdims))


def power_bins(Z: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor,
               nbins: int) -> torch.Tensor:
    """``sum weights |Z|^2`` per bin of ``idx`` over the last two dims, float64:
    (..., H, Wf) complex -> (..., nbins) (the reference of the C++ ``bin_power``)."""
    return bin_sums(idx, _power(Z) * weights, nbins, 2)


class RuleKernels(NamedTuple):
    """The steps of a rule's choice whose cost grows with the image or the
    bins, as callables: this module's torch code by default (:data:`REFERENCE`,
    any device); the execution layer passes its routed ones (C++ on the CPU),
    which follow it to rounding."""

    search: Callable            # as search()
    edge_search: Callable       # as minimise_edge_risk()
    bin_power: Callable         # as power_bins()
    solve: Callable             # as tikhonov_spectrum()
    rfft2: Callable             # (x, s) -> torch.fft.rfft2(x, s=s)
    irfft2: Callable            # (X, s) -> torch.fft.irfft2(X, s=s); may overwrite X


def _rfft2(x: torch.Tensor, s: Tuple[int, int]) -> torch.Tensor:
    return torch.fft.rfft2(x, s=s)


def _irfft2(X: torch.Tensor, s: Tuple[int, int]) -> torch.Tensor:
    return torch.fft.irfft2(X, s=s)


def tikhonov_spectrum(Y: torch.Tensor, spectrum: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """``conj(K) Y / (|K|^2 + reg)``, 0 where ``|K|^2 + reg = 0`` (the pseudo-inverse
    keeps nothing there): a new tensor like ``Y`` (the reference of the routed
    fused solve)."""
    den = spectrum.real.square() + spectrum.imag.square() + reg
    X = spectrum.conj() * Y / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, X, torch.zeros_like(X))


class RuleBins:
    """The operator's half of every rule sum, binned once; the data's half per call.

    Every objective is a sum over frequencies of ``c(w)`` times a smooth
    function of ``log q`` (``q = |K|^2 / |R|^2``), possibly times ``|Y|^2`` or
    ``1 / |R|^2``. A filter factor moves over about a decade of ``q``, so
    frequencies whose ``q`` falls in a narrow bin can share it: the sums run
    over :data:`FINE_PER_DECADE` bins per decade (the grid over :data:`COARSEN`
    times wider ones) with a relative error far below what the search
    resolves. The bin of
    each frequency depends only on the operator: a plan builds it once, and a
    call costs one weighted histogram of ``|Y|^2`` (no FFT) plus a search over
    a few thousand bins, whatever the image size.

    Two bins stand apart: ``|K|^2 = 0`` (``g = 1`` for every eps: residual
    and degrees of freedom that no eps changes) and ``|R|^2 = 0 < |K|^2`` (the
    Laplacian's DC: ``g = 0``, kept as the pseudo-inverse keeps it).

    Parameters
    ----------
    k2 : Tensor (..., *F), real >= 0
        ``|K|^2`` over the ``fdims`` trailing "frequency" dims ``F`` (the
        ``rfft2`` half spectrum (H, W // 2 + 1), or (H, W // 2 + 1, k) for
        per-frequency singular values); leading dims broadcast to the data's.
    r2 : Tensor broadcastable to k2, or None (identity)
    weights : Tensor broadcastable to ``F``
        How many full-spectrum frequencies each entry stands for (the
        half-spectrum weights ``c(w)``).
    n_pix : int
        Pixels per plane: Parseval's ``||y||^2 = sum c |Y|^2 / n_pix``.
    fdims : int, the number of trailing frequency dims (2 or 3)
    extra_dof : float
        Observations per plane that no entry stands for (an SVD's
        ``(n_out - k) H W``): residual dimensions no eps changes.
    """

    def __init__(self, k2: torch.Tensor, r2: Optional[torch.Tensor], weights: torch.Tensor, *,
                 n_pix: int, fdims: int = 2, extra_dof: float = 0.0, risk: bool = True,
                 prior_r2: Optional[torch.Tensor] = None, size: Optional[Tuple[int, int]] = None,
                 per_decade: int = None):
        per_decade = FINE_PER_DECADE if per_decade is None else per_decade
        shape = k2.shape if r2 is None else torch.broadcast_shapes(k2.shape, r2.shape)
        dev = k2.device
        k2 = k2.to(torch.float64).expand(shape)
        r2_is_identity = r2 is None
        r2 = (torch.ones((), dtype=torch.float64, device=dev) if r2 is None
              else r2.to(torch.float64)).expand(shape)
        self.fdims, self.n_pix, self.extra_dof = fdims, float(n_pix), float(extra_dof)
        self.shape = shape
        self.weights = weights.to(torch.float64).to(dev)
        active = (k2 > 0) & (r2 > 0)
        dead = k2 == 0
        one = torch.ones_like(k2)
        lq = torch.log(torch.where(active, k2, one) / torch.where(active, r2, one))
        any_active = bool(active.any())
        hi = float(lq[active].max()) if any_active else 0.0
        lo = float(lq[active].min()) if any_active else 0.0
        # Ratios more than SPAN_DECADES below the largest behave alike (g = 1
        # over the whole search range): clamp them into the lowest bin.
        lo = max(lo, hi - SPAN_DECADES * math.log(10.0))
        width = math.log(10.0) / per_decade
        nb = max(COARSEN, int(math.ceil((hi - lo) / width)) + 1)
        nb = -(-nb // COARSEN) * COARSEN
        lo = 0.5 * (hi + lo) - 0.5 * nb * width
        self.nb = nb
        self.log_q = lo + (torch.arange(nb, dtype=torch.float64, device=dev) + 0.5) * width
        idx = ((lq - lo) / width).floor().clamp(0, nb - 1).to(torch.int64)
        idx = torch.where(dead, torch.full_like(idx, nb), idx)
        self.idx = torch.where(active | dead, idx, torch.full_like(idx, nb + 1))
        #: Whether the regulariser vanishes where the blur does not (the
        #: Laplacian at DC): a smoothness prior, for "auto".
        self.smoothness_prior = bool((~(active | dead)).any())
        wf = self.weights.expand(shape)
        self.wa = self._hist(self.idx, wf)                      # (..., nb + 2), per kernel row
        # The rule "risk" also sums c / |R|^2 (None: built on first use).
        self._wr = self._wr_bins = None
        if risk:
            # The identity's c / |R|^2 is c itself: keep it (W // 2 + 1,), not (..., *F).
            self._risk_weights(None if r2_is_identity else torch.where(active, r2, one))
        # The damped frequencies of the spectral noise estimate.
        self._noise_idx = damped_indices(k2, dims=fdims)
        self.size = size
        # The edge-aware risk's prior (padded path): sum c / |L|^2 per bin, and q at DC.
        self.prior_w = self.dc_q = None
        self.gain_floor = 0.0
        if prior_r2 is not None:
            # The smallest eps at which no frequency is amplified more than
            # EDGE_GAIN times (|K| / (|K|^2 + eps |R|^2) <= EDGE_GAIN).
            kabs = torch.sqrt(k2)
            floor = torch.where(active, (kabs / EDGE_GAIN - k2) / torch.where(active, r2, one),
                                torch.zeros_like(k2))
            self.gain_floor = max(float(floor.max()) if floor.numel() else 0.0, 0.0)
            pr = prior_r2.to(torch.float64).expand(shape)
            self.prior_w = self._hist(self.idx, torch.where(
                active & (pr > 0), wf / torch.where(pr > 0, pr, one), torch.zeros_like(pr)))
            dc = (Ellipsis,) + (0,) * fdims
            self.dc_q = torch.where(active[dc], torch.exp(lq[dc]),
                                    torch.full_like(lq[dc], float("inf")))

    def grouped(self, hist: torch.Tensor, shape, gdims: int) -> torch.Tensor:
        """A per-kernel-row histogram (..., nb + 2) as one row per system of data of
        ``shape`` (summed over a system's planes): (B, nb)."""
        lead = shape[:-self.fdims]
        h = hist.expand(*lead, self.nb + 2)
        sum_dims = tuple(range(-1 - (gdims - self.fdims), -1))
        h = h.sum(dim=sum_dims) if sum_dims else h
        return h.reshape(-1, self.nb + 2)[:, :self.nb]

    def grouped_dc_q(self, shape, gdims: int) -> torch.Tensor:
        """q at DC per plane, one row per system of data of ``shape``: (B, planes)."""
        lead = shape[:-self.fdims]
        planes = math.prod(shape[-gdims:-self.fdims]) if gdims > self.fdims else 1
        return self.dc_q.expand(lead).reshape(-1, planes)

    def _risk_weights(self, r2: Optional[torch.Tensor]) -> None:
        self._wr = self.weights if r2 is None else self.weights / r2
        self._wr_bins = self._hist(self.idx, self._wr.expand(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held (what a plan cache counts)."""
        return sum(t.numel() * t.element_size() for t in
                   (self.idx, self.wa, self.log_q, self._noise_idx, self._wr, self._wr_bins)
                   if t is not None)

    def noise_std(self, y2: torch.Tensor, gdims: int, size: Tuple[int, int]) -> torch.Tensor:
        """:func:`~deconv_ext.maths.noise.estimate_noise_spectrum` per system, with
        the damped frequencies found once (they depend on the operator only)."""
        return noise_from_power(y2, self._noise_idx, size, dims=self.fdims,
                                group=gdims - self.fdims).reshape(-1)

    def _hist(self, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Sum of ``v`` per bin over the frequency dims: (..., *F) -> (..., nb + 2)."""
        return bin_sums(idx, v, self.nb + 2, self.fdims)

    @property
    def risk_weights(self) -> torch.Tensor:
        """``c / |R|^2`` (broadcastable to ``F``): the weights of the rule "risk"'s data sums."""
        if self._wr is None:
            raise ValueError("these bins were built with risk=False; the rule 'risk' needs "
                             "risk=True")
        return self._wr

    def data_hist(self, y2: torch.Tensor, risk: bool = False):
        """The data's half of the sums: ``sum c |Y|^2`` per bin (and, for
        ``risk``, ``sum c |Y|^2 / |R|^2``), (..., nb + 2) float64 each.

        What :meth:`spectra` bins; a caller with a faster binning of the
        same sums (one pass over the complex spectrum, the execution layer's
        ``bin_power``) passes its result to :meth:`spectra` as ``hist``.
        """
        y = y2.to(torch.float64)
        wy = self._hist(self.idx, y * self.weights)
        return wy, (self._hist(self.idx, y * self.risk_weights) if risk else None)

    def power_hist(self, Z: torch.Tensor, risk: bool, bin_power: Callable):
        """:meth:`data_hist` of ``|Z|^2`` from the complex half spectrum ``Z``
        (..., H, W // 2 + 1), binned by ``bin_power`` (a :class:`RuleKernels`
        entry: :func:`power_bins` or the execution layer's one-pass C++)."""
        nb = self.nb + 2
        return (bin_power(Z, self.idx, self.weights, nb),
                bin_power(Z, self.idx, self.risk_weights, nb) if risk else None)

    def spectra(self, y2: torch.Tensor, gdims: int, res_extra: Optional[torch.Tensor] = None,
                risk: bool = False, hist=None) -> Tuple["_Spectra", torch.Size]:
        """The binned sums of one batch of data, one row per system.

        Parameters
        ----------
        y2 : Tensor (..., *F), real >= 0: ``|Y|^2`` (unnormalised FFT); with
            ``hist`` given only its shape is read (it may be ``Y`` itself)
        gdims : int >= fdims; the trailing dims of one system (fdims: one
            per plane; fdims + 1: planes of dim -fdims-1 share eps)
        res_extra : Tensor (...), optional; residual no eps changes, per system
        risk : also the ``1 / |R|^2``-weighted sums (rule "risk")
        hist : optional, :meth:`data_hist` of ``y2`` computed by the caller

        Returns
        -------
        (_Spectra with B rows, the systems' shape ``y2.shape[:-gdims]``)
        """
        lead = y2.shape[:-gdims]
        B = int(torch.Size(lead).numel())
        wy_all, wry_all = self.data_hist(y2, risk) if hist is None else hist
        wa_all = self.wa.expand(*y2.shape[:-self.fdims], self.nb + 2)
        sum_dims = tuple(range(-1 - (gdims - self.fdims), -1))

        def group(h):
            return (h.sum(dim=sum_dims) if sum_dims else h).reshape(B, self.nb + 2)

        wy, wa = group(wy_all) / self.n_pix, group(wa_all)
        nb = self.nb
        planes = math.prod(y2.shape[-gdims:-self.fdims]) if gdims > self.fdims else 1
        if risk:
            wry = group(wry_all) / self.n_pix
            wr = group(self._wr_bins.expand(*y2.shape[:-self.fdims], nb + 2))
            wr, wry = wr[:, :nb], wry[:, :nb]
        else:
            wr = wry = torch.zeros_like(wy[:, :nb])
        dof_extra = wa[:, nb] + planes * self.extra_dof
        res = wy[:, nb]
        energy = wy.sum(-1)
        if res_extra is not None:
            re = res_extra.to(torch.float64).reshape(B)
            res, energy = res + re, energy + re
        n_data = float(wa[0].sum()) + planes * self.extra_dof if B else 1.0
        q = torch.exp(self.log_q).expand(B, nb)
        return _Spectra(q, wa[:, :nb], wy[:, :nb], wr, wry, self.n_pix, n_data, dof_extra, res,
                        energy), lead


def _coarsen(sp: "_Spectra", factor: int) -> "_Spectra":
    """The same sums over bins ``factor`` times wider (their geometric centres)."""
    B, nb = sp.q.shape
    if nb % factor:
        return sp

    def s(v):
        return v.reshape(B, nb // factor, factor).sum(-1)

    q = torch.exp(torch.log(sp.q).reshape(B, nb // factor, factor).mean(-1))
    return sp._replace(q=q, wa=s(sp.wa), wy=s(sp.wy), wr=s(sp.wr), wry=s(sp.wry))


def _bsum(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_f a[b, g, f] v[b, f] -> (B, G)."""
    return torch.bmm(a, v[:, :, None])[..., 0]


class SpectralTerms(NamedTuple):
    """What one eps gives, per system, float64 (shapes as the returned eps).

    residual : ``||y - A x||^2``
    dof : ``N - trace`` of the influence matrix ``A (A^H A + eps R^H R)^-1 A^H``
    seminorm : ``||R x||^2``
    gcv : ``N residual / dof^2``
    """

    residual: torch.Tensor
    dof: torch.Tensor
    seminorm: torch.Tensor
    gcv: torch.Tensor


class EpsChoice(NamedTuple):
    """What a parameter-choice rule chose, one entry per system (plane or sample).

    eps : Tensor (...), float64, the chosen Tikhonov weight
    objective : Tensor (...), float64, the rule's objective there (see
        :func:`choose_eps`, "Returns")
    rule : str, the rule that ran ("auto" resolved to its rule)
    noise_std : Tensor (...) float64 or None; the noise level the rule used
        (given or estimated), None for rules that need none
    per : {"plane", "sample"}, what one system is
    """

    eps: torch.Tensor
    objective: torch.Tensor
    rule: str
    noise_std: Optional[torch.Tensor]
    per: str


def _terms(sp: _Spectra, t: torch.Tensor, derivatives: bool = False):
    """Sums over frequencies for ``eps = exp(t)``, t (B, G) -> dict of (B, G)."""
    e = torch.exp(t)[..., None]                      # (B, G, 1)
    d = 1.0 / (sp.q[:, None, :] + e)                 # 1 / (q + eps) = |R|^2 / (|K|^2 + eps |R|^2)
    g = e * d
    f = 1.0 - g
    out = {}
    g2 = g * g
    out["res"] = _bsum(g2, sp.wy) + sp.res_extra[:, None]
    out["dof"] = _bsum(g, sp.wa) + sp.dof_extra[:, None]
    # ||R x||^2 = sum c |R|^2 f^2 |Y|^2 / |K|^2 / N = sum c |Y|^2 q / (q + eps)^2 / N
    qd2 = f * d
    out["semi"] = _bsum(qd2, sp.wy)
    if derivatives:
        fg2 = f * g2
        out["res1"] = 2 * _bsum(fg2, sp.wy)
        out["res2"] = 2 * _bsum(fg2 * (2 * f - g), sp.wy)
        qg = qd2 * g
        out["semi1"] = -2 * _bsum(qg, sp.wy)
        out["semi2"] = -2 * _bsum(qg * (f - 2 * g), sp.wy)
    return out


def _risk(sp: _Spectra, t: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Unbiased solution-risk estimate (up to a constant), t (B, G), s2 (B,) noise variance.

    ``sum_w c (2 s^2 - (1 + g) |Y|^2 / N) / (|K|^2 + eps |R|^2)``; frequencies
    with ``|K|^2 = 0`` or ``|R|^2 = 0`` contribute a constant.
    """
    e = torch.exp(t)[..., None]
    d = 1.0 / (sp.q[:, None, :] + e)
    return _bsum(d, 2 * s2[:, None] * sp.wr - sp.wry) - _bsum(e * d * d, sp.wry)


def _objective(sp: _Spectra, rule: str, t: torch.Tensor, s2: Optional[torch.Tensor],
               tau: float) -> torch.Tensor:
    """Objective to minimise (or, for the discrepancy, the signed equation), (B, G)."""
    if rule == "risk":
        return _risk(sp, t, s2)
    d = _terms(sp, t, derivatives=(rule == "lcurve"))
    if rule == "gcv":
        dof = d["dof"]
        return torch.where(dof > 0, sp.n_data * d["res"] / (dof * dof).clamp(min=1e-300),
                           torch.full_like(dof, float("inf")))
    if rule == "upre":
        return d["res"] - 2 * s2[:, None] * d["dof"]
    if rule == "discrepancy":
        target = tau * sp.n_data * s2[:, None]
        return d["res"] - target
    # lcurve: minus the curvature of (log ||r||^2, log ||R x||^2) in t.
    R, S = d["res"], d["semi"]
    tiny = 1e-300
    Rs, Ss = R.clamp(min=tiny), S.clamp(min=tiny)
    r1, s1 = d["res1"] / Rs, d["semi1"] / Ss
    r2_ = d["res2"] / Rs - r1 * r1
    s2_ = d["semi2"] / Ss - s1 * s1
    kappa = (r1 * s2_ - r2_ * s1) / (r1 * r1 + s1 * s1).clamp(min=tiny) ** 1.5
    kappa = torch.where((R > tiny) & (S > tiny) & torch.isfinite(kappa), kappa,
                        torch.full_like(kappa, -float("inf")))
    return -kappa


def _chunked(sp: _Spectra, rule, t, s2, tau) -> torch.Tensor:
    """:func:`_objective` over a (B, G) grid in chunks of G that fit the budget."""
    B, G = t.shape
    per = max(1, _CHUNK_ELEMS // max(1, B * sp.q.shape[-1]))
    return torch.cat([_objective(sp, rule, t[:, i:i + per], s2, tau) for i in range(0, G, per)],
                     dim=1)


# ---------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------

def _log_range(sp: _Spectra, eps_range) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-system [lo, hi] in log eps where the filter factors move."""
    B = sp.q.shape[0]
    dev = sp.q.device
    if eps_range is not None:
        lo, hi = (math.log(float(v)) for v in eps_range)
        return (torch.full((B,), lo, dtype=torch.float64, device=dev),
                torch.full((B,), hi, dtype=torch.float64, device=dev))
    ok = sp.wa > 0
    qmax = torch.where(ok, sp.q, torch.full_like(sp.q, -float("inf"))).amax(dim=-1)
    qmin = torch.where(ok, sp.q, torch.full_like(sp.q, float("inf"))).amin(dim=-1)
    valid = torch.isfinite(qmax) & torch.isfinite(qmin)
    qmax = torch.where(valid, qmax, torch.ones_like(qmax))
    qmin = torch.where(valid, qmin, torch.ones_like(qmin))
    # Two decades beyond the extreme ratios: there every filter factor is
    # within 1 % of 0 (or of 1), so no objective moves any more.
    hi = torch.log(qmax) + 2 * math.log(10.0)
    lo = torch.maximum(torch.log(qmin) - 2 * math.log(10.0), hi - RANGE_DECADES * math.log(10.0))
    # A range of (almost) one point: widen it by a decade each way.
    narrow = hi - lo < math.log(10.0)
    lo = torch.where(narrow, lo - math.log(10.0), lo)
    hi = torch.where(narrow, hi + math.log(10.0), hi)
    return lo, hi


def _grid(lo, hi) -> torch.Tensor:
    decades = float(((hi - lo) / math.log(10.0)).max())
    G = max(8, int(math.ceil(decades * POINTS_PER_DECADE)) + 1)
    u = torch.linspace(0, 1, G, dtype=torch.float64, device=lo.device)
    return lo[:, None] + (hi - lo)[:, None] * u[None, :]


#: Points per level of the nested grids that refine a bracket (see _refine).
REFINE_POINTS = 25


def _refine(fun, a, b, rtol: float):
    """argmin of ``fun`` on [a, b] (log eps, each (B,)) to ``rtol`` in eps.

    Nested grids of :data:`REFINE_POINTS`: each level evaluates the whole
    grid in one vectorised call and keeps the two cells around its minimum.
    A grid bracket of 1.5 (log eps) reaches rtol = 1e-2 in two levels, where
    a golden-section search takes eleven sequential calls (their Python
    overhead was most of the rule's cost at 512^2). Returns (t, fun(t)).
    """
    target = math.log1p(rtol)
    rows = torch.arange(a.shape[0], device=a.device)
    u = torch.linspace(0, 1, REFINE_POINTS, dtype=torch.float64, device=a.device)
    while True:
        x = a[:, None] + (b - a)[:, None] * u[None, :]
        v = fun(x)
        i = v.argmin(dim=1)
        spacing = float(((b - a) / (REFINE_POINTS - 1)).max())
        if spacing <= target:
            return x[rows, i], v[rows, i]
        a = x[rows, (i - 1).clamp(min=0)]
        b = x[rows, (i + 1).clamp(max=REFINE_POINTS - 1)]


def _flat(values: torch.Tensor) -> torch.Tensor:
    """Rows of a (B, G) grid of objective values that do not move (or are not finite)."""
    fin = torch.isfinite(values)
    big = torch.where(fin, values, torch.zeros_like(values)).abs().amax(dim=1)
    vmax = torch.where(fin, values, torch.full_like(values, -float("inf"))).amax(dim=1)
    vmin = torch.where(fin, values, torch.full_like(values, float("inf"))).amin(dim=1)
    return ~(fin.any(dim=1)) | ~(vmax - vmin > 1e-10 * big)


def search(fine: _Spectra, rule: str, s2, tau: float, eps_range, rtol: float):
    """The rule's log eps per system: (log eps (B,), objective (B,), fallback mask (B,),
    clipped mask (B,)); the reference the execution layer's C++ search follows."""
    return _search(fine, rule, s2, tau, eps_range, rtol)


def _search(fine: _Spectra, rule: str, s2, tau: float, eps_range, rtol: float,
            exact: Optional[_Spectra] = None):
    """log eps (B,), objective (B,), fallback mask (B,), clipped mask (B,).

    ``fine``: the binned sums (:class:`RuleBins`); the grid runs on bins
    :data:`COARSEN` times wider, the refinement on ``fine``; the objective is
    returned from ``exact`` (unbinned sums) when given, else from ``fine``.
    """
    final = fine if exact is None else exact
    lo, hi = _log_range(fine, eps_range)
    coarse = _coarsen(fine, COARSEN)
    # Fewer frequencies than bins (small images): search on the exact sums.
    if exact is not None and exact.q.shape[-1] <= fine.q.shape[-1]:
        coarse = fine = exact
    t = _grid(lo, hi)
    vals = _chunked(coarse, rule, t, s2, tau)
    # No data where the filter moves: every eps gives the same solution.
    energy = fine.wy.sum(-1)
    if rule == "discrepancy":
        return _root(final, fine, t, vals, s2, tau, energy, rtol)
    flat = _flat(vals) | ~(energy > 0)
    vals = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, float("inf")))
    i = vals.argmin(dim=1)
    G = t.shape[1]
    rows = torch.arange(t.shape[0], device=t.device)
    a = t[rows, (i - 1).clamp(min=0)]
    b = t[rows, (i + 1).clamp(max=G - 1)]

    def fun(x):
        v = _objective(fine, rule, x, s2, tau)
        return torch.where(torch.isfinite(v), v, torch.full_like(v, float("inf")))

    tb, fb = _refine(fun, a, b, rtol)
    clipped = torch.zeros_like(flat)
    # Keep the grid point if the refinement did not improve on it (a minimum at
    # the end of the range).
    tg = t[rows, i]
    better = fb <= fun(tg[:, None])[:, 0]
    tb = torch.where(better, tb, tg)
    return tb, _objective(final, rule, tb[:, None], s2, tau)[:, 0], flat, clipped


def _root(sp, fine, t, vals, s2, tau, energy, rtol):
    """Discrepancy: the root of the increasing ``res(t) - tau N s^2`` by bisection in t."""
    B, G = t.shape
    rows = torch.arange(B, device=t.device)
    above = vals >= 0
    # First grid point at or above the target; the root is in (t[j-1], t[j]].
    j = torch.where(above.any(dim=1), above.to(torch.int64).argmax(dim=1),
                    torch.full((B,), G, dtype=torch.int64, device=t.device))
    low_end, high_end = j == 0, j == G
    a = t[rows, (j - 1).clamp(min=0, max=G - 1)]
    b = t[rows, j.clamp(max=G - 1)]
    # Nested grids, as _refine: the first point at or above the target, twice.
    u = torch.linspace(0, 1, REFINE_POINTS, dtype=torch.float64, device=t.device)
    while float((b - a).max()) > math.log1p(rtol):
        x = a[:, None] + (b - a)[:, None] * u[None, :]
        up = _objective(fine, "discrepancy", x, s2, tau) >= 0
        up[:, -1] = True          # b itself is at or above the target (or the range's end)
        k = up.to(torch.int64).argmax(dim=1)
        a, b = x[rows, (k - 1).clamp(min=0)], x[rows, k]
    tr = torch.where(low_end, t[:, 0], torch.where(high_end, t[:, -1], b))
    target = tau * sp.n_data * s2
    res = _objective(sp, "discrepancy", tr[:, None], s2, tau)[:, 0] + target
    ratio = res / torch.where(target > 0, target, torch.ones_like(target))
    # The residual does not move (nothing the filter changes carries data).
    flat = ~(energy > 0) | _flat(vals + target[:, None])
    return tr, ratio, flat, (low_end | high_end) & ~flat


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def _check_power(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.dtype.is_floating_point:
        raise TypeError(f"{name} has dtype {x.dtype}; expected a real floating power spectrum "
                        f"(|.|^2 of a complex one)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if bool((x < 0).any()):
        raise ValueError(f"{name} has negative entries (min {float(x.min()):.3g}); a power "
                         f"spectrum is >= 0")
    return x


def _check_rule(rule) -> str:
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"rule={rule!r} is not valid; expected one of "
                         f"{', '.join(map(repr, RULES))}")
    return rule


def _check_size(size) -> Tuple[int, int]:
    if (not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2
            or not all(isinstance(v, numbers.Integral) and v > 0 for v in size)):
        raise ValueError(f"size={size!r} is not valid; expected the image size (H, W), two "
                         f"positive ints")
    return int(size[0]), int(size[1])


def _check_positive(name: str, v, allow_none: bool = True):
    if v is None and allow_none:
        return None
    if isinstance(v, torch.Tensor):
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError(f"{name} must be finite and > 0, got {v}")
        return v.to(torch.float64)
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(float(v)) \
            or float(v) <= 0:
        raise ValueError(f"{name}={v!r} is not valid; expected a finite number > 0")
    return float(v)


def _check_common(rule, per, tau, rtol, eps_range, fallback_eps):
    _check_rule(rule)
    if per not in _PERS:
        raise ValueError(f"per={per!r} is not valid; expected one of "
                         f"{', '.join(map(repr, _PERS))}")
    _check_positive("tau", tau, allow_none=False)
    _check_positive("rtol", rtol, allow_none=False)
    _check_positive("fallback_eps", fallback_eps, allow_none=False)
    if eps_range is not None:
        if (not isinstance(eps_range, (tuple, list)) or len(eps_range) != 2):
            raise ValueError(f"eps_range={eps_range!r} is not valid; expected (lo, hi)")
        lo = _check_positive("eps_range[0]", eps_range[0], allow_none=False)
        hi = _check_positive("eps_range[1]", eps_range[1], allow_none=False)
        if not lo < hi:
            raise ValueError(f"eps_range={eps_range!r} is not valid; expected lo < hi")


def half_spectrum_weights(width: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Multiplicity of each ``rfft2`` column in the full spectrum, shape (W // 2 + 1,).

    1 for column 0 and (even ``width``) column ``W / 2``, which are their own
    mirror images; 2 for the columns 1 .. ceil(W / 2) - 1, which also stand for
    ``W - v`` (``|Y(-w)| = |Y(w)|`` for a real image). They sum to ``width``.
    """
    w = torch.full((width // 2 + 1,), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if width % 2 == 0:
        w[-1] = 1.0
    return w


# ---------------------------------------------------------------------------
# Public: circulant, single-channel
# ---------------------------------------------------------------------------

def _prepare(k2, r2, y2, size, per, noise_std, noise_scale=None):
    k2 = _check_power("k2", k2)
    y2 = _check_power("y2", y2)
    H, W = _check_size(size)
    if y2.dim() < 2 or tuple(y2.shape[-2:]) != (H, W // 2 + 1):
        raise ValueError(f"y2 has shape {tuple(y2.shape)}; expected (..., {H}, {W // 2 + 1}), "
                         f"the rfft2 half spectrum of a {H}x{W} image")
    if r2 is None:
        r2 = torch.ones((), dtype=torch.float64, device=y2.device)
    r2 = _check_power("r2", r2)
    try:
        k2b, r2b = (v.to(torch.float64).expand_as(y2) for v in (k2, r2))
    except RuntimeError:
        raise ValueError(f"k2 {tuple(k2.shape)} and r2 {tuple(r2.shape)} must broadcast to "
                         f"y2 {tuple(y2.shape)}") from None
    y2 = y2.to(torch.float64)
    if per == "sample" and y2.dim() < 3:
        raise ValueError(f"per='sample' groups dims -3.. (channels, H, W); y2 has shape "
                         f"{tuple(y2.shape)}")
    gdims = 2 if per == "plane" else 3
    lead = y2.shape[:-gdims]
    C = 1 if per == "plane" else y2.shape[-3]
    wcol = half_spectrum_weights(W, device=y2.device)
    w = wcol.expand(C, H, W // 2 + 1).reshape(-1)
    B = int(torch.Size(lead).numel())
    flat = lambda v: v.reshape(B, -1)  # noqa: E731
    sp = _compress(flat(k2b), flat(r2b), flat(y2), w, H * W, C * H * W)
    return sp, lead


def _noise_var(noise_std, rule, sp_shape_lead, est, device=None):
    """Noise variance per system (B,), from ``noise_std`` or the estimate ``est()``."""
    if rule not in NEEDS_NOISE:
        return None
    if noise_std is None:
        s = est()
    elif isinstance(noise_std, torch.Tensor):
        s = noise_std.to(torch.float64).expand(sp_shape_lead).reshape(-1)
    else:
        s = torch.full((int(torch.Size(sp_shape_lead).numel()),), float(noise_std),
                       dtype=torch.float64, device=device)
    return s * s


def _finish(tb, fb, flat, clipped, lead, rule, fallback_eps, what="objective"):
    eps = torch.exp(tb)
    n_clip = int(clipped.sum())
    if n_clip:
        warnings.warn(f"choose_eps(rule={rule!r}): no eps in the search range meets the "
                      f"discrepancy equation for {n_clip} of {clipped.numel()} system(s) (noise "
                      f"level too small or too large for the data); using the nearer end of "
                      f"the range there", RuntimeWarning, stacklevel=3)
    n_flat = int(flat.sum())
    if n_flat:
        warnings.warn(f"choose_eps(rule={rule!r}): the {what} does not determine eps for "
                      f"{n_flat} of {flat.numel()} system(s) (flat objective, no data, or no "
                      f"root in range); using eps={fallback_eps:g} there", RuntimeWarning,
                      stacklevel=3)
        eps = torch.where(flat, torch.full_like(eps, fallback_eps), eps)
    return eps.reshape(lead), fb.reshape(lead)


def _annihilates(k2: torch.Tensor, r2: Optional[torch.Tensor]) -> bool:
    """Whether ``|R|^2 = 0`` somewhere ``|K|^2 > 0``: a smoothness prior (e.g. the Laplacian)."""
    if r2 is None:
        return False
    return bool(((r2 == 0) & (k2 > 0)).any())


def resolve(rule: str, bins: Optional["RuleBins"] = None, padded: bool = False) -> str:
    """The rule that ``rule`` runs: "auto" is :data:`AUTO_RULE` of the model
    (``padded``: the fast path of a non-circular boundary) and of whether the
    regulariser annihilates what the blur keeps (the Laplacian's constants: a
    smoothness prior). Without ``bins``, "auto" stays "auto"."""
    if rule != "auto" or bins is None:
        return rule
    return AUTO_RULE[("padded" if padded else "circular", bool(bins.smoothness_prior))]


def choose_from_bins(bins: RuleBins, y2: torch.Tensor, rule: str, *, size: Tuple[int, int],
                     gdims: int, noise_std: Union[None, float, torch.Tensor] = None,
                     tau: float = DISCREPANCY_TAU, rtol: float = 1e-2,
                     eps_range: Optional[Tuple[float, float]] = None,
                     fallback_eps: float = FALLBACK_EPS,
                     res_extra: Optional[torch.Tensor] = None,
                     exact: Optional["_Spectra"] = None, hist=None,
                     kernels: Optional[RuleKernels] = None) -> EpsChoice:
    """Choose eps per system from the power ``y2`` with an operator binned once.

    What the plans call on every solve: the arguments are checked by the
    caller (the public entry points); ``rule`` may be "auto". ``y2`` (...,
    *F) as :meth:`RuleBins.spectra`, ``gdims`` its trailing dims per system,
    ``noise_std`` a float or a Tensor broadcastable to the systems' shape
    (None: :meth:`RuleBins.noise_std`, for the rules that need it).
    ``exact``: the same sums unbinned (one row per system), when the caller
    has them: the objective is then returned from them, and a problem with
    fewer entries than bins is searched on them (:func:`_search`).
    ``hist``: :meth:`RuleBins.data_hist` computed by the caller; ``y2`` may
    then be the complex spectrum ``Y`` itself (only its shape and the noise
    estimate's few entries are read). ``kernels``: :class:`RuleKernels`
    (default :data:`REFERENCE`); ``exact`` is always searched here.
    """
    rule = resolve(rule, bins)
    fine, lead = bins.spectra(y2, gdims, res_extra=res_extra, risk=rule == "risk", hist=hist)
    s2 = _noise_var(noise_std, rule, lead, lambda: bins.noise_std(y2, gdims, size), y2.device)
    found = ((kernels or REFERENCE).search(fine, rule, s2, tau, eps_range, rtol)
             if exact is None else _search(fine, rule, s2, tau, eps_range, rtol, exact=exact))
    eps, obj = _finish(*found, lead, rule, fallback_eps)
    sigma = None if s2 is None else s2.sqrt().reshape(lead)
    per = "plane" if gdims == bins.fdims else "sample"
    return EpsChoice(eps, obj, rule, sigma, per)


def choose_eps(k2: torch.Tensor, r2: Optional[torch.Tensor], y2: torch.Tensor,
               rule: str = "auto", *, size: Tuple[int, int],
               noise_std: Union[None, float, torch.Tensor] = None, per: str = "plane",
               tau: float = DISCREPANCY_TAU, rtol: float = 1e-2,
               eps_range: Optional[Tuple[float, float]] = None,
               fallback_eps: float = FALLBACK_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Choose the Tikhonov weight eps per plane (or per sample) from power spectra.

    Parameters
    ----------
    k2 : Tensor broadcastable to y2
        ``|K|^2`` of the blur on the ``rfft2`` half spectrum (H, W // 2 + 1).
    r2 : Tensor broadcastable to y2, or None
        ``|R|^2`` of the regulariser; None is the identity (``|R|^2 = 1``).
    y2 : Tensor (..., H, W // 2 + 1)
        ``|rfft2(y)|^2`` of the observation (unnormalised FFT).
    rule : {"auto", "gcv", "upre", "risk", "discrepancy", "lcurve"}
        See the module docstring; "auto" is :data:`AUTO_RULE` ``[("circular", ...)]``.
    size : (H, W)
        The image size (W cannot be told from W // 2 + 1).
    noise_std : float or Tensor broadcastable to the result, optional
        Standard deviation of the additive white noise (pixel units), for
        "upre", "risk" and "discrepancy"; None estimates it from the spectrum.
    per : {"plane", "sample"}
        "plane": one eps per (H, W) plane, result shape ``y2.shape[:-2]``;
        "sample": channels share eps (dims -3.. grouped), shape ``y2.shape[:-3]``.
    tau : float > 0
        Discrepancy factor: ``||y - A x||^2 = tau N noise_std^2``.
    rtol : float > 0
        Relative accuracy of eps.
    eps_range : (lo, hi), optional
        Search range; default from the spectrum (module docstring).
    fallback_eps : float > 0
        eps for a system whose objective is flat (warned).

    Returns
    -------
    eps : Tensor, float64, shape ``y2.shape[:-2]`` (or ``[:-3]``); broadcast it
        to the images with ``eps[..., None, None]``.
    objective : Tensor, float64, same shape: the rule's objective at eps
        (GCV value, UPRE, risk estimate minus a constant, minus the L-curve
        curvature, or ``residual / (N noise_std^2)`` for the discrepancy).
    """
    _check_common(rule, per, tau, rtol, eps_range, fallback_eps)
    noise_std = _check_positive("noise_std", noise_std)
    sp, lead = _prepare(k2, r2, y2, size, per, noise_std)
    dims = 2 if per == "plane" else 3
    H, W = size
    bins = RuleBins(k2, r2, half_spectrum_weights(W, device=y2.device), n_pix=H * W)
    rule = resolve(rule, bins)
    fine, _ = bins.spectra(y2, dims, risk=rule == "risk")
    s2 = _noise_var(noise_std, rule, lead, lambda: estimate_noise_spectrum(
        k2, y2, size, dims=dims).reshape(-1))
    return _finish(*_search(fine, rule, s2, tau, eps_range, rtol, exact=sp), lead, rule,
                   fallback_eps)


def spectral_terms(k2: torch.Tensor, r2: Optional[torch.Tensor], y2: torch.Tensor,
                   eps: Union[float, torch.Tensor], *, size: Tuple[int, int],
                   per: str = "plane") -> SpectralTerms:
    """Residual, degrees of freedom, seminorm and GCV at given eps (same layout as :func:`choose_eps`).

    ``eps`` is a float or a Tensor broadcastable to the result shape.
    """
    if per not in _PERS:
        raise ValueError(f"per={per!r} is not valid; expected one of "
                         f"{', '.join(map(repr, _PERS))}")
    sp, lead = _prepare(k2, r2, y2, size, per, None)
    return _terms_at(sp, lead, eps)


def rule_objective(k2: torch.Tensor, r2: Optional[torch.Tensor], y2: torch.Tensor, rule: str,
                   eps: torch.Tensor, *, size: Tuple[int, int],
                   noise_std: Union[None, float, torch.Tensor] = None, per: str = "plane",
                   tau: float = DISCREPANCY_TAU) -> torch.Tensor:
    """The objective that :func:`choose_eps` minimises, at the eps values ``eps`` (G,).

    Returns a float64 Tensor (..., G) (``...`` as :func:`choose_eps`'s result):
    GCV, UPRE, the solution-risk estimate minus its eps-independent part,
    ``residual - tau N s^2`` for "discrepancy" (its root is the choice), or
    minus the L-curve curvature.
    """
    _check_common(rule, per, tau, 1e-2, None, FALLBACK_EPS)
    noise_std = _check_positive("noise_std", noise_std)
    sp, lead = _prepare(k2, r2, y2, size, per, noise_std)
    if rule == "auto":
        rule = AUTO_RULE[("circular", _annihilates(k2, r2))]
    e = _check_eps_values(eps, sp.q.device).reshape(-1)
    dims = 2 if per == "plane" else 3
    s2 = _noise_var(noise_std, rule, lead, lambda: estimate_noise_spectrum(
        k2, y2, size, dims=dims).reshape(-1))
    t = torch.log(e)[None, :].expand(sp.q.shape[0], -1)
    return _chunked(sp, rule, t, s2, tau).reshape(*lead, -1)


def _check_eps_values(eps, device) -> torch.Tensor:
    """``eps`` (a number or a tensor of values) as float64, each finite and > 0."""
    e = torch.as_tensor(eps, dtype=torch.float64, device=device)
    if bool((e <= 0).any()) or not bool(torch.isfinite(e).all()):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    return e


def _terms_at(sp, lead, eps) -> SpectralTerms:
    e = _check_eps_values(eps, sp.q.device)
    t = torch.log(e.expand(lead).reshape(-1, 1))
    d = _terms(sp, t)
    res, dof, semi = (d[k][:, 0].reshape(lead) for k in ("res", "dof", "semi"))
    return SpectralTerms(res, dof, semi, sp.n_data * res / (dof * dof))


# ---------------------------------------------------------------------------
# Public: multi-channel layers (per-frequency SVD)
# ---------------------------------------------------------------------------

def svd_power(K: torch.Tensor, Y: torch.Tensor):
    """Squared singular values and projected data of per-frequency matrices.

    Parameters
    ----------
    K : Tensor (..., H, W // 2 + 1, M, N), complex
        Per-frequency layer matrices in matrix layout (``M`` outputs, ``N``
        inputs), e.g. ``multichannel._planar_to_matrix(layer_spectrum(...))``
        for one group.
    Y : Tensor (..., M, H, W // 2 + 1), complex
        ``rfft2`` of the layer output (minus its bias).

    Returns
    -------
    s2 : Tensor (..., H, W // 2 + 1, k), float64, ``k = min(M, N)``
    y2_proj : Tensor (..., H, W // 2 + 1, k), float64, ``|U^H Y|^2``
    y2_perp : Tensor (..., H, W // 2 + 1), float64, ``||Y - U U^H Y||^2``:
        the power of the data outside the range of ``K(w)``, which no eps
        fits (0 when ``M <= N``).
    """
    U, S, _ = torch.linalg.svd(K.to(torch.complex128), full_matrices=False)
    Ym = Y.to(torch.complex128).movedim(-3, -1).unsqueeze(-1)      # (..., H, Wf, M, 1)
    P = U.mH @ Ym                                                    # (..., H, Wf, k, 1)
    y2_proj = P.squeeze(-1).real ** 2 + P.squeeze(-1).imag ** 2
    if U.shape[-1] == U.shape[-2]:
        # U spans everything: no out-of-range part (||Y||^2 - ||P||^2 would leave rounding).
        y2_perp = torch.zeros(y2_proj.shape[:-1], dtype=torch.float64, device=y2_proj.device)
    else:
        # The residual itself, not ||Y||^2 - ||P||^2: no cancellation when it is small.
        R = (Ym - U @ P).squeeze(-1)
        y2_perp = (R.real ** 2 + R.imag ** 2).sum(-1)
    return S.to(torch.float64) ** 2, y2_proj, y2_perp


def svd_bins(s2: torch.Tensor, size: Tuple[int, int], n_out: int) -> RuleBins:
    """The operator's half of the rule sums of a multi-channel layer, binned once.

    ``s2`` (..., H, W // 2 + 1, k): the squared singular values of every
    ``K(w)`` on the half spectrum (several groups: their ``k`` axes
    concatenated), ``n_out`` the output channels (all groups). The ``n_out -
    k`` output directions per frequency outside every ``range(K(w))`` are
    residual dimensions that no eps changes (``extra_dof``).
    """
    H, W = size
    k = s2.shape[-1]
    return RuleBins(s2, None, half_spectrum_weights(W, device=s2.device)[:, None], n_pix=H * W,
                    fdims=3, extra_dof=float((n_out - k) * H * W), size=(H, W))


def svd_spectra(s2: torch.Tensor, y2_proj: torch.Tensor, size: Tuple[int, int], n_out: int,
                y2_perp: Optional[torch.Tensor] = None) -> Tuple["_Spectra", torch.Tensor]:
    """The unbinned rule sums of a multi-channel layer, one row per sample.

    Shapes as :func:`choose_eps_svd`. Returns the sums and the out-of-range
    residual per sample, ``sum_w c(w) ||P_perp Y(w)||^2 / (H W)`` (B,), which
    :meth:`RuleBins.spectra` takes as ``res_extra``.
    """
    H, W = size
    k = y2_proj.shape[-1]
    lead = y2_proj.shape[:-3]
    B = int(torch.Size(lead).numel())
    s2b = s2.to(torch.float64).expand_as(y2_proj).reshape(B, -1)
    y2b = y2_proj.to(torch.float64).reshape(B, -1)
    wcol = half_spectrum_weights(W, device=y2_proj.device)
    w = wcol[:, None].expand(H, W // 2 + 1, k).reshape(-1)
    if y2_perp is None:
        extra = torch.zeros(B, dtype=torch.float64, device=y2b.device)
    else:
        extra = (y2_perp.to(torch.float64).expand(*lead, H, W // 2 + 1).reshape(B, -1, W // 2 + 1)
                 @ wcol).sum(-1) / (H * W)
    sp = _compress(s2b, torch.ones_like(s2b), y2b, w, H * W, n_out * H * W,
                   float((n_out - k) * H * W), extra)
    return sp, extra


def choose_svd_from_bins(bins: RuleBins, s2: torch.Tensor, y2_proj: torch.Tensor, rule: str, *,
                         size: Tuple[int, int], n_out: int,
                         y2_perp: Optional[torch.Tensor] = None,
                         noise_std: Union[None, float, torch.Tensor] = None,
                         tau: float = DISCREPANCY_TAU, rtol: float = 1e-2,
                         eps_range: Optional[Tuple[float, float]] = None,
                         fallback_eps: float = FALLBACK_EPS) -> EpsChoice:
    """:func:`choose_eps_svd` with the operator binned once (:func:`svd_bins`).

    What :class:`~deconv_ext.LayerPlan` calls on every solve (arguments
    checked by the caller). The search runs on the bins (on the exact sums
    for a problem with fewer entries than bins); the objective returned is
    the exact one at the chosen eps. One system per sample: the result has
    shape ``y2_proj.shape[:-3]``.
    """
    sp, extra = svd_spectra(s2, y2_proj, size, n_out, y2_perp)
    c = choose_from_bins(bins, y2_proj, rule, size=size, gdims=3, noise_std=noise_std, tau=tau,
                         rtol=rtol, eps_range=eps_range, fallback_eps=fallback_eps,
                         res_extra=extra, exact=sp)
    return c._replace(per="sample")


def choose_eps_svd(s2: torch.Tensor, y2_proj: torch.Tensor, rule: str = "auto", *,
                   size: Tuple[int, int], n_out: int, y2_perp: Optional[torch.Tensor] = None,
                   noise_std: Union[None, float, torch.Tensor] = None,
                   tau: float = DISCREPANCY_TAU, rtol: float = 1e-2,
                   eps_range: Optional[Tuple[float, float]] = None,
                   fallback_eps: float = FALLBACK_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Choose eps for a multi-channel layer ``(K^H K + eps I)^-1 K^H`` per sample.

    With ``K(w) = U diag(s) V^H`` per frequency and ``z = U^H Y(w)``, the
    influence matrix ``A A_eps^+`` is ``U diag(s^2 / (s^2 + eps)) U^H`` per
    frequency, so

    * ``trace(I - A A_eps^+) = sum_w c(w) [n_out - sum_i s_i^2 / (s_i^2 + eps)]``,
    * ``||(I - A A_eps^+) y||^2 = sum_w c(w) [sum_i (eps / (s_i^2 + eps))^2
      |z_i|^2 + ||P_perp Y(w)||^2] / (H W)`` (Parseval),

    with ``P_perp`` the projection onto the complement of ``range(K(w))``
    (nonzero when ``n_out > k``) and ``c(w)`` the half-spectrum weights (1
    for the self-mirrored columns 0 and, even ``W``, ``W / 2``; 2 for the
    others, which also stand for their mirror ``-w``, ``K(-w) =
    conj(K(w))``): exact on the half spectrum. ``N = n_out H W``
    observations; GCV (Golub, Heath & Wahba 1979) minimises
    ``N ||(I - A A_eps^+) y||^2 / trace(I - A A_eps^+)^2``. Every rule is
    :func:`choose_eps`'s with ``|K|^2 -> s^2`` and ``|R|^2 = 1``; "auto" is
    the discrepancy principle (the identity is no smoothness prior).

    Parameters
    ----------
    s2, y2_proj : Tensor (..., H, W // 2 + 1, k), from :func:`svd_power`
        (several groups: concatenate their ``k`` axes).
    size : (H, W)
    n_out : int, output channels ``M`` (all groups)
    y2_perp : Tensor (..., H, W // 2 + 1), optional; out-of-range power
    noise_std, tau, rtol, eps_range, fallback_eps : as in :func:`choose_eps`

    Returns
    -------
    eps, objective : Tensor (...), float64
    """
    _check_common(rule, "sample", tau, rtol, eps_range, fallback_eps)
    s2, y2_proj, (H, W), n_out, y2_perp, noise_std = _check_svd(s2, y2_proj, size, n_out,
                                                                y2_perp, noise_std)
    c = choose_svd_from_bins(svd_bins(s2, (H, W), n_out), s2, y2_proj, rule, size=(H, W),
                             n_out=n_out, y2_perp=y2_perp, noise_std=noise_std, tau=tau,
                             rtol=rtol, eps_range=eps_range, fallback_eps=fallback_eps)
    return c.eps, c.objective


def _check_svd(s2, y2_proj, size, n_out, y2_perp, noise_std):
    """The arguments of :func:`choose_eps_svd` and :func:`rule_objective_svd`,
    checked: ``(s2, y2_proj, (H, W), n_out, y2_perp, noise_std)``."""
    noise_std = _check_positive("noise_std", noise_std)
    s2 = _check_power("s2", s2)
    y2_proj = _check_power("y2_proj", y2_proj)
    H, W = _check_size(size)
    if not isinstance(n_out, numbers.Integral) or n_out < 1:
        raise ValueError(f"n_out={n_out!r} is not valid; expected a positive int")
    if y2_proj.dim() < 3 or tuple(y2_proj.shape[-3:-1]) != (H, W // 2 + 1):
        raise ValueError(f"y2_proj has shape {tuple(y2_proj.shape)}; expected "
                         f"(..., {H}, {W // 2 + 1}, k)")
    k = y2_proj.shape[-1]
    if k > n_out:
        raise ValueError(f"y2_proj has k={k} singular values per frequency, more than "
                         f"n_out={n_out}")
    if y2_perp is not None:
        y2_perp = _check_power("y2_perp", y2_perp)
    return s2, y2_proj, (H, W), int(n_out), y2_perp, noise_std


def rule_objective_svd(s2: torch.Tensor, y2_proj: torch.Tensor, rule: str, eps, *,
                       size: Tuple[int, int], n_out: int,
                       y2_perp: Optional[torch.Tensor] = None,
                       noise_std: Union[None, float, torch.Tensor] = None,
                       tau: float = DISCREPANCY_TAU) -> torch.Tensor:
    """The objective that :func:`choose_eps_svd` minimises, at the eps values ``eps`` (G,).

    Shapes as :func:`choose_eps_svd`; returns a float64 Tensor (..., G), the
    values as :func:`rule_objective` defines them (the GCV value
    ``N ||(I - A A_eps^+) y||^2 / trace(I - A A_eps^+)^2``, ...).
    """
    _check_common(rule, "sample", tau, 1e-2, None, FALLBACK_EPS)
    s2, y2_proj, (H, W), n_out, y2_perp, noise_std = _check_svd(s2, y2_proj, size, n_out,
                                                                y2_perp, noise_std)
    e = _check_eps_values(eps, y2_proj.device).reshape(-1)
    bins = svd_bins(s2, (H, W), n_out)
    rule = resolve(rule, bins)
    sp, _ = svd_spectra(s2, y2_proj, (H, W), n_out, y2_perp)
    lead = y2_proj.shape[:-3]
    s2n = _noise_var(noise_std, rule, lead, lambda: bins.noise_std(y2_proj, 3, (H, W)),
                     y2_proj.device)
    t = torch.log(e)[None, :].expand(sp.q.shape[0], -1)
    return _chunked(sp, rule, t, s2n, tau).reshape(*lead, -1)


# ---------------------------------------------------------------------------
# Public: the padded fast path of a non-circular boundary
# ---------------------------------------------------------------------------

def tukey_window(n: int, width: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """1D window of length ``n``: raised-cosine ramps of ``width`` samples from 0, 1 between.

    The ramps reach 0 just outside the window (sample -1 and n), so every
    sample of a short window stays positive. A new tensor.
    """
    return _window_factor(int(n), int(width), None if device is None else torch.device(device),
                          dtype).clone()


@functools.lru_cache(maxsize=32)
def _window_factor(n: int, width: int, device, dtype) -> torch.Tensor:
    """:func:`tukey_window`, cached: a stream of images of one size reuses it
    (read only; two per call of the padded choice, 0.1 ms each at 512)."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    d = torch.minimum(i + 1, n - i)               # distance to the nearest "outside" sample
    w = 0.5 * (1 - torch.cos(math.pi * torch.clamp(d / (width + 1), max=1.0)))
    return w.to(dtype)


def default_taper(size: Tuple[int, int], psf_size: Tuple[int, int]) -> int:
    """Ramp width of the observation window: ``2 max(kh, kw)``, at least 8, at most a
    quarter of the image's shorter side."""
    taper = max(8, 2 * max(psf_size))
    return max(1, min(taper, min(size) // 4))


def window_spectrum(image: torch.Tensor, fft_size: Tuple[int, int], taper: int,
                    rfft2: Callable = _rfft2) -> Tuple[torch.Tensor, float, torch.Tensor]:
    """``rfft2(w (y - mean))`` of the observed region, ``sum(w^2) / (Nh Nw)`` and the mean.

    ``w`` is a separable Tukey window (raised-cosine ramps of ``taper``
    pixels inside the image edge), the product sits at (0, 0) of a zero
    (Nh, Nw) buffer (a circular shift changes no power spectrum). The mean is
    removed first: the window would otherwise print its own spectrum (a
    bright, sharp-edged plateau) on the data. Complex (..., Nh, Nw // 2 + 1), in
    the image's precision (:func:`_rule_dtype`); its power is what the rules
    bin. The mean per plane, (...) float64, is returned for the caller's DC term.
    ``rfft2``: a :class:`RuleKernels` transform.
    """
    H, W = image.shape[-2:]
    Nh, Nw = fft_size
    x = _rule_dtype(image)
    rows = _window_factor(H, int(taper), x.device, torch.float64)
    cols = _window_factor(W, int(taper), x.device, torch.float64)
    # Row sums in the image's precision, then float64: one pass, and the
    # rounding of a row's sum (~1e-7 of it in float32) is far below what the
    # DC term resolves.
    mean = x.sum(-1).to(torch.float64).sum(-1) / (H * W)
    centred = (x - mean.to(x.dtype)[..., None, None]) * rows.to(x.dtype)[:, None]
    # sum(w^2) of the separable window: the product of its factors' sums.
    energy = float((rows * rows).sum()) * float((cols * cols).sum())
    return rfft2(centred * cols.to(x.dtype), (Nh, Nw)), energy / (Nh * Nw), mean


def _rule_dtype(image: torch.Tensor) -> torch.Tensor:
    """The image, detached, in the dtype the rule's transforms run in: float32
    stays float32 (its rounding, ~1e-7 of the image's power per frequency, is
    far below any noise power a rule resolves, and the FFT costs half),
    anything else float64. The powers are summed in float64."""
    x = image.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float64)


def _power(Z: torch.Tensor) -> torch.Tensor:
    """``|Z|^2`` as float64 (computed in Z's precision: one relative rounding)."""
    return (Z.real.square() + Z.imag.square()).to(torch.float64)


def consistency_spectrum(Y: torch.Tensor, spectrum: torch.Tensor, reg: torch.Tensor, geometry,
                         extend: Callable, kernels: Optional[RuleKernels] = None) -> torch.Tensor:
    """Spectrum of the part of the padded observation that no extended scene explains.

    The fast path solves circularly on the buffer ``b = pad_mode(y)``. Far
    from the image's edges ``b`` is the blur of the same extension of the
    scene; at the seams (where the blur of ``y`` saw a scene the extension
    does not reproduce, and where the buffer wraps around) and wherever the
    blur is not symmetric under the extension (a mirrored motion blur is
    another blur) it is not, and the solve turns that inconsistency into
    ringing. With the solve ``x0`` at a moderate regulariser (its crop an
    estimate of the scene), ``e = b - K (*) extend(crop(x0))`` is that
    inconsistency; returns ``rfft2(e)``. Two transforms (``x0``'s inverse
    and the extension's forward; ``b``'s is given as ``Y``).

    Parameters
    ----------
    Y : Tensor (..., Nh, Nw // 2 + 1), complex: ``rfft2(b)``
    spectrum : Tensor broadcastable to Y, complex: the PSF's ``K``
    reg : Tensor broadcastable to Y, real >= 0: ``x0``'s regulariser operand
        (eps0 times ``|R|^2``, per system)
    geometry : object with ``top``, ``left``, ``height``, ``width``, ``fft_size``
    extend : callable, (..., H, W) -> (..., Nh, Nw): how the fast path builds
        its buffer from an image (``pad_mode``, and the plan's taper if any)
    kernels : :class:`RuleKernels` (its solve and transforms), default :data:`REFERENCE`

    Returns
    -------
    Tensor like Y. Where ``|K|^2 + reg = 0`` the solve keeps nothing (as the
    pseudo-inverse), so ``x0`` has no such component.
    """
    Nh, Nw = geometry.fft_size
    top, left, H, W = geometry.top, geometry.left, geometry.height, geometry.width
    k = kernels or REFERENCE
    x0 = k.irfft2(k.solve(Y, spectrum, reg), (Nh, Nw))[..., top:top + H, left:left + W]
    return Y - spectrum * k.rfft2(extend(x0).to(x0.dtype), (Nh, Nw))


class _Prior(NamedTuple):
    """The calibrated signal prior of the edge-aware risk, per system."""

    weight: torch.Tensor   # (B, nb) sum c / |L|^2 per bin of the user's q (L: the Laplacian)
    scale: torch.Tensor    # (B,) s^2 / eps_L: signal power = N scale / |L|^2
    dc_q: torch.Tensor     # (B, P) q at DC per plane (inf where DC is kept: no DC bias)
    dc_power: torch.Tensor  # (B, P) mean^2 per plane


def _edge_risk(spE: _Spectra, prior: _Prior, t: torch.Tensor, s2: torch.Tensor,
               rho: float) -> torch.Tensor:
    """Edge-aware estimate of the padded solve's error ``||x_eps - x||^2 / N``, (B, G).

    ``sum_w c [g^2 S + f^2 (s^2 + rho |E|^2 / N) / |K|^2]`` with
    ``S = N s^2 / (eps_L |L|^2)`` (``|X(0)|^2 = N^2 mean^2`` at DC): a
    Laplacian (``1 / |w|^4``) signal prior calibrated by GCV on the observed
    region (``eps_L``, for which it is the Wiener optimum), the noise, and
    the ringing the filter makes of the inconsistency ``E`` of the padded
    data (:func:`consistency_spectrum`). ``rho`` weighs the ringing: the sum
    runs over the whole buffer, but the part of it that the solve puts in
    the padding is cropped away (measured: from 1/5 to 1/100 of it lands in
    the image, :data:`EDGE_WEIGHT`). ``spE``: the binned sums of ``|E|^2``
    with the user's ``1 / |R|^2`` weights (``wr = sum c / |R|^2``,
    ``wry = sum c |E|^2 / (|R|^2 N)``); ``rho = 0`` drops the ringing term.
    """
    e = torch.exp(t)[..., None]
    q = spE.q[:, None, :]
    d = 1.0 / (q + e)
    g = e * d
    amp = q * d * d                                   # f^2 / |K|^2 times |R|^2
    out = prior.scale[:, None] * _bsum(g * g, prior.weight) + s2[:, None] * _bsum(amp, spE.wr)
    g_dc = e / (prior.dc_q[:, None, :] + e)              # (B, G, P)
    dc = torch.where(torch.isfinite(prior.dc_q)[:, None, :], g_dc * g_dc, torch.zeros_like(g_dc))
    out = out + (dc * prior.dc_power[:, None, :]).sum(-1)
    if rho:
        out = out + rho * _bsum(amp, spE.wry)
    return out


def _minimise(fun, lo: torch.Tensor, hi: torch.Tensor, rtol: float, grid_fun=None):
    """Grid (:data:`POINTS_PER_DECADE`) then :func:`_refine`: argmin of ``fun`` (B, G) -> (B,).

    ``grid_fun``: the objective the grid stage evaluates (default ``fun``; a
    cheaper one on coarser bins, as :func:`_search` uses).
    """
    t = _grid(lo, hi)
    vals = (grid_fun or fun)(t)
    vals = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, float("inf")))
    i = vals.argmin(dim=1)
    G = t.shape[1]
    rows = torch.arange(t.shape[0], device=t.device)
    a, b = t[rows, (i - 1).clamp(min=0)], t[rows, (i + 1).clamp(max=G - 1)]

    def safe(x):
        v = fun(x)
        return torch.where(torch.isfinite(v), v, torch.full_like(v, float("inf")))

    tb, fb = _refine(safe, a, b, rtol)
    tg = t[rows, i]
    fg = safe(tg[:, None])[:, 0]
    better = fb <= fg
    return torch.where(better, tb, tg), torch.where(better, fb, fg)


def minimise_edge_risk(spE: _Spectra, prior: _Prior, s2: torch.Tensor, rho: float,
                       rtol: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """argmin over log eps of :func:`_edge_risk` per system, and the risk there: (B,), (B,).

    A grid over the range the binned sums imply, then the nested
    refinement; the reference the execution layer's C++ ``edge_risk_search``
    follows.
    """
    lo, hi = _log_range(spE, None)
    # The grid stage on bins COARSEN times wider (as _search's).
    coarse = _coarsen(spE, COARSEN)
    B, nb = prior.weight.shape
    wide = prior if coarse is spE else prior._replace(
        weight=prior.weight.reshape(B, nb // COARSEN, COARSEN).sum(-1))
    return _minimise(lambda t: _edge_risk(spE, prior, t, s2, rho), lo, hi, rtol,
                     grid_fun=lambda t: _edge_risk(coarse, wide, t, s2, rho))


#: This module's own implementations of the :class:`RuleKernels` steps.
REFERENCE = RuleKernels(search=search, edge_search=minimise_edge_risk, bin_power=power_bins,
                        solve=tikhonov_spectrum, rfft2=_rfft2, irfft2=_irfft2)


def edge_prior(bins: "RuleBins", prior_bins: "RuleBins", Zw: torch.Tensor,
               dc_power: torch.Tensor, s2: torch.Tensor, gdims: int, rtol: float,
               window_scale: float, kernels: RuleKernels, prior_hist) -> _Prior:
    """The signal prior of :func:`_edge_risk`, one row per system.

    GCV with the Laplacian on the window's spectrum ``Zw``
    (:func:`window_spectrum`; ``prior_hist`` its histogram in ``prior_bins``)
    gives ``eps_L``; the prior's scale is the variance GCV fitted (its
    residual per degree of freedom, Wahba's estimate) over ``eps_L``, not the
    noise estimate: on a noise-free image the window's own error sets
    ``eps_L``, and the noise variance (~1e-18) over it would call the signal
    1e-12 of its power. ``dc_power``: ``N mean^2`` per plane, ``s2`` the
    noise variance per system (image units), ``window_scale`` the window's
    ``sum(w^2) / (Nh Nw)``.
    """
    sp_l, lead_l = prior_bins.spectra(Zw, gdims, hist=prior_hist)
    # (A flat GCV here is reported as the edge-risk's prior, the rule the user ran.)
    eps_l, _ = _finish(*kernels.search(sp_l, "gcv", None, 1.0, None, rtol), lead_l,
                       f"{EDGE_RISK} prior: gcv", FALLBACK_EPS)
    fit = _terms_at(sp_l, lead_l, eps_l)
    eps_l = eps_l.reshape(-1)
    s2_fit = torch.maximum(s2, (fit.residual / fit.dof).reshape(-1) / window_scale)
    dc_q = bins.grouped_dc_q(Zw.shape, gdims)
    return _Prior(bins.grouped(bins.prior_w, Zw.shape, gdims), s2_fit / eps_l, dc_q,
                  dc_power.reshape(dc_q.shape))


def padded_bins(k2: torch.Tensor, r2: Optional[torch.Tensor], fft_size: Tuple[int, int],
                r2_is_laplacian: bool = False) -> Tuple["RuleBins", "RuleBins"]:
    """The two :class:`RuleBins` of the padded path: the user's regulariser (with
    the prior weights and the risk sums) and the Laplacian's (the same object
    when ``r2_is_laplacian``)."""
    Nh, Nw = fft_size
    w = half_spectrum_weights(Nw, device=k2.device)
    lap = laplacian_power(fft_size, torch.float64, k2.device)
    bins = RuleBins(k2, r2, w, n_pix=Nh * Nw, risk=True, prior_r2=lap, size=fft_size)
    prior = bins if r2_is_laplacian else RuleBins(k2, lap, w, n_pix=Nh * Nw, risk=False,
                                                  size=fft_size)
    return bins, prior


def choose_padded_from_bins(bins: RuleBins, prior_bins: RuleBins, image: torch.Tensor,
                            Y: torch.Tensor, spectrum: torch.Tensor,
                            reg_power: Optional[torch.Tensor], rule: str, *, geometry,
                            psf_size: Tuple[int, int], extend: Callable, gdims: int,
                            taper: Optional[int] = None,
                            noise_std: Union[None, float, torch.Tensor] = None,
                            tau: float = 1.0, rtol: float = 1e-2,
                            eps_range: Optional[Tuple[float, float]] = None,
                            fallback_eps: float = FALLBACK_EPS,
                            edge_weight: float = None,
                            kernels: Optional[RuleKernels] = None) -> EpsChoice:
    """Choose eps for the padded fast path; the bins hold the padded-size operator.

    Module docstring, "Non-circular boundaries". ``bins``: the user's
    regulariser, built with ``prior_r2`` (the Laplacian's power) and
    ``risk=True``; ``prior_bins``: the Laplacian's (the same object when the
    user's regulariser is the Laplacian). ``image`` (..., H, W) unpadded,
    ``Y`` the spectrum of its padded buffer (``rfft2(pad_mode(image))``),
    ``spectrum`` the PSF's ``K`` and ``reg_power`` the user's ``|R|^2`` (None:
    identity) at the buffer's size, ``geometry`` where the image sits in the
    buffer, ``extend`` how the fast path builds its buffer from an image
    (:func:`consistency_spectrum`). ``noise_std`` in image
    units (None: the spectral estimate on the windowed region). "auto"
    minimises the edge-aware risk; another rule runs on the window and its eps
    is raised by the factor the ringing term asks for. ``edge_weight=0``
    drops the ringing term (then "auto" is the prior's risk minimiser and a
    rule's eps is returned as the window gave it). The objective returned is
    the rule's on the window for a rule with ``edge_weight=0``, else the
    edge-aware risk estimate per pixel at the chosen eps. ``kernels``:
    :class:`RuleKernels` (default :data:`REFERENCE`).
    """
    k = kernels or REFERENCE
    rho = EDGE_WEIGHT if edge_weight is None else float(edge_weight)
    fft_size = tuple(geometry.fft_size)
    H, W = image.shape[-2:]
    taper = default_taper((H, W), psf_size) if taper is None else int(taper)
    Zw, scale, mean = window_spectrum(image, fft_size, taper, k.rfft2)
    lead = Zw.shape[:-gdims]
    rule = resolve(rule, bins, padded=True)
    named = rule != EDGE_RISK
    hist_w = bins.power_hist(Zw, rule == "risk", k.bin_power) if named else None
    # The noise level in window units (what the rules on Zw expect) and in image units.
    if noise_std is None:
        s_win = bins.noise_std(Zw, gdims, fft_size).reshape(lead)
    elif isinstance(noise_std, torch.Tensor):
        s_win = noise_std.to(torch.float64).expand(lead) * math.sqrt(scale)
    else:
        s_win = torch.full(lead, float(noise_std) * math.sqrt(scale), dtype=torch.float64,
                           device=Zw.device)
    s_img = (s_win / math.sqrt(scale)).reshape(lead)
    if named:
        inner = choose_from_bins(bins, Zw, rule, size=fft_size, gdims=gdims,
                                 noise_std=s_win if rule in NEEDS_NOISE else None, tau=tau,
                                 rtol=rtol, eps_range=eps_range, fallback_eps=fallback_eps,
                                 hist=hist_w, kernels=k)
        if rho == 0:
            return inner._replace(noise_std=s_img)
    prior_hist = (hist_w[0], None) if named and prior_bins is bins else \
        prior_bins.power_hist(Zw, False, k.bin_power)
    n_buf = fft_size[0] * fft_size[1]
    # |X(0)|^2 / N of the buffer: N mean^2.
    dc_power = n_buf * mean ** 2
    s2 = (s_img * s_img).reshape(-1)
    prior = edge_prior(bins, prior_bins, Zw, dc_power, s2, gdims, rtol, scale, k, prior_hist)
    # The prior's risk minimiser (no ringing term: the data's sums are not read).
    zeros = torch.zeros(*Zw.shape[:-2], bins.nb + 2, dtype=torch.float64, device=Zw.device)
    sp0, _ = bins.spectra(Zw, gdims, risk=True, hist=(zeros, zeros))
    t0, risk = k.edge_search(sp0, prior, s2, 0.0, rtol)
    t = t0
    if rho:
        # The inconsistency of the padded data, from the solve at the prior's
        # eps (at least the gain floor: EDGE_GAIN).
        e0 = torch.exp(t0).clamp(min=bins.gain_floor).reshape(*lead, *([1] * gdims))
        e0 = e0.to(Y.real.dtype)
        reg0 = e0 if reg_power is None else e0 * reg_power
        E = consistency_spectrum(Y, spectrum, reg0, geometry, extend, k)
        spE, _ = bins.spectra(E, gdims, risk=True,
                              hist=(zeros, k.bin_power(E, bins.idx, bins.risk_weights,
                                                       bins.nb + 2)))
        t, risk = k.edge_search(spE, prior, s2, rho, rtol)
    if named:
        eps = inner.eps.reshape(-1) * torch.exp(t - t0).clamp(min=1.0)
    else:
        eps = torch.exp(t)
    if eps_range is not None:
        eps = eps.clamp(min=float(eps_range[0]), max=float(eps_range[1]))
    # A system the rule could not decide keeps the fallback.
    # (No power in the window: every weight c(w) > 0, so its binned sum is 0.)
    power = prior_hist[0].sum(-1)
    undecided = ~((power.sum(-1) if gdims > 2 else power).reshape(-1) > 0)
    eps = torch.where(undecided, torch.full_like(eps, fallback_eps), eps)
    per = "plane" if gdims == bins.fdims else "sample"
    return EpsChoice(eps.reshape(lead), (risk / n_buf).reshape(lead), rule, s_img, per)


def choose_eps_padded(image: torch.Tensor, spectrum: torch.Tensor, r2: Optional[torch.Tensor],
                      geometry, rule: str = "auto", *, psf_size: Tuple[int, int],
                      taper: Optional[int] = None, mode: str = "symmetric",
                      noise_std: Union[None, float, torch.Tensor] = None, per: str = "plane",
                      tau: float = 1.0, rtol: float = 1e-2,
                      eps_range: Optional[Tuple[float, float]] = None,
                      fallback_eps: float = FALLBACK_EPS,
                      edge_weight: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Choose eps for the padded fast path of a non-circular boundary.

    The padded solve extends the observation to ``geometry.fft_size`` and
    solves circularly there. The extension is not the blur of anything near
    its seams: a rule applied to the padded spectrum fits that error with a
    too-small eps, and the solve rings on it where eps is small. So (module
    docstring, "Non-circular boundaries") the noise level and a signal prior
    are fitted on the *observed region only*, made periodic by a window, and
    eps minimises an estimate of the solution's error that adds to the
    prior's bias and the noise the ringing the solve makes of the padded
    data's inconsistency (:func:`consistency_spectrum`). A named rule runs on
    the window and is raised by the factor the ringing asks for.

    Parameters
    ----------
    image : Tensor (..., H, W), the observation (not padded)
    spectrum : Tensor broadcastable to (..., Nh, Nw // 2 + 1), complex: the
        PSF's ``rfft2`` at the buffer's size, centred as the plan's
        (``DeconvPlan(...).spectrum``)
    r2 : Tensor broadcastable to the same shape, real >= 0, or None
        (identity): ``|R|^2``
    geometry : object with ``top``, ``left``, ``height``, ``width``, ``fft_size``
        (``plans.padded.PadGeometry``)
    rule : as in :func:`choose_eps`
    psf_size : (kh, kw), sets the default taper
    taper : int >= 1, optional; ramp width, default :func:`default_taper`
    mode : str, the fast path's extension rule (``F.pad`` names)
    noise_std : optional; default: the spectral estimate on the windowed region
    per, tau, rtol, eps_range, fallback_eps : as in :func:`choose_eps`
    edge_weight : float >= 0, optional; default :data:`EDGE_WEIGHT`

    Returns
    -------
    eps, objective : Tensor, float64, ``image.shape[:-2]`` (or ``[:-3]``);
    the objective is the edge-aware risk estimate (up to a constant) per
    pixel, or a rule's objective on the window with ``edge_weight=0``.
    """
    _check_common(rule, per, tau, rtol, eps_range, fallback_eps)
    noise_std = _check_positive("noise_std", noise_std)
    if not isinstance(image, torch.Tensor) or not image.dtype.is_floating_point \
            or image.dim() < 2:
        raise TypeError("image must be a real floating torch.Tensor (..., H, W)")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or infinite values")
    if not isinstance(spectrum, torch.Tensor) or not spectrum.is_complex():
        raise TypeError(f"spectrum must be the PSF's complex half spectrum K at the buffer's "
                        f"size (DeconvPlan(...).spectrum); got "
                        f"{spectrum.dtype if isinstance(spectrum, torch.Tensor) else spectrum!r}")
    H, W = image.shape[-2:]
    Nh, Nw = _check_size(tuple(geometry.fft_size))
    if (geometry.height, geometry.width) != (H, W) or Nh < H or Nw < W:
        raise ValueError(f"geometry {geometry} does not hold an image of size {(H, W)}")
    kh, kw = _check_size(psf_size)
    if taper is not None and (not isinstance(taper, numbers.Integral) or taper < 1):
        raise ValueError(f"taper={taper!r} is not valid; expected a positive int")
    if edge_weight is not None:
        _check_positive("edge_weight", edge_weight + 1.0, allow_none=False)
    k2 = _check_power("|spectrum|^2", spectrum.real.square() + spectrum.imag.square())
    r2 = None if r2 is None else _check_power("r2", r2)
    if per == "sample" and image.dim() < 3:
        raise ValueError(f"per='sample' groups dims -3.. (channels, H, W); image has shape "
                         f"{tuple(image.shape)}")
    bins, prior = padded_bins(k2, r2, (Nh, Nw))
    x = _rule_dtype(image)
    cdt = torch.complex128 if x.dtype == torch.float64 else torch.complex64

    def extend(z):
        return pad_extend(z, geometry.top, geometry.left, Nh, Nw, mode)

    Y = torch.fft.rfft2(extend(x).to(x.dtype))
    c = choose_padded_from_bins(bins, prior, image, Y, spectrum.to(cdt),
                                None if r2 is None else r2.to(x.dtype), rule, geometry=geometry,
                                psf_size=(kh, kw), extend=extend,
                                gdims=2 if per == "plane" else 3, taper=taper,
                                noise_std=noise_std, tau=tau, rtol=rtol, eps_range=eps_range,
                                fallback_eps=fallback_eps, edge_weight=edge_weight)
    return c.eps, c.objective
