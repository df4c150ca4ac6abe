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
    root is unique). ``tau = 1`` by default; Morozov's ``tau > 1`` makes it
    safer and smoother. Known to over-smooth slightly (the expected residual
    at the optimum is ``(N - trace) s^2 < N s^2``).
``"lcurve"``
    Hansen & O'Leary (1993): the eps of maximum curvature of the curve
    ``(log ||y - A x||, log ||R x||)``; the curvature is computed from
    closed-form derivatives in ``t = log eps``
    (``d f / dt = -f g``, ``d g / dt = f g``). Needs no noise level; known to
    be unreliable for smooth solutions and large N (Hanke 1996; Vogel 1996).
``"auto"``
    :data:`AUTO_RULE`. Chosen on ``benchmarks/bench_eps.py`` (scikit-image
    test images, Gaussian / motion / disk / box blurs, noise 1e-3 to 5e-2):
    see :data:`AUTO_RULE` for the measured reason.

Noise level: rules that need it take ``noise_std``; when it is None they
estimate it from the spectrum (:func:`~deconv_ext.maths.noise.estimate_noise_spectrum`);
given the image, :func:`~deconv_ext.maths.noise.estimate_noise` is better.

Minimisation: eps is searched in log space over the range where the filter
changes, ``[max(q_min / 100, 1e-12 q_max), 100 q_max]`` with
``q = |K|^2 / |R|^2`` over the frequencies where both are positive (outside
it ``f`` is within 1 % of 0 or 1 at every frequency and no objective moves). A grid of :data:`POINTS_PER_DECADE`
points per decade brackets the global minimum of each plane, then golden
section search (vectorised over planes) refines it to ``rtol`` in eps; the
discrepancy equation is solved by bisection in log eps. Objectives are
evaluated in float64 whatever the input dtype. A plane whose objective is
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

import math
import numbers
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import torch

from .noise import estimate_noise, estimate_noise_spectrum

__all__ = [
    "RULES",
    "AUTO_RULE",
    "AUTO_RULE_PADDED",
    "FALLBACK_EPS",
    "SpectralTerms",
    "half_spectrum_weights",
    "spectral_terms",
    "rule_objective",
    "choose_eps",
    "svd_power",
    "choose_eps_svd",
    "tukey_window",
    "choose_eps_padded",
]

RULES = ("auto", "gcv", "upre", "risk", "discrepancy", "lcurve")
NEEDS_NOISE = ("upre", "risk", "discrepancy")
# Measured on benchmarks/bench_eps.py (see the module docstring and RESULTS.md).
AUTO_RULE = "gcv"
AUTO_RULE_PADDED = "gcv"
# What a flat objective falls back to: deconvolve's default eps.
FALLBACK_EPS = 1e-2
POINTS_PER_DECADE = 3
BINS_PER_DECADE = 48
RANGE_DECADES = 14.0
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


def _binned(sp: _Spectra, per_decade: int) -> _Spectra:
    """The same sums over ``per_decade`` bins per decade of ``q``.

    Every objective is a sum over frequencies of a smooth function of
    ``log q`` (a filter factor varies over about a decade), so summing the
    weights of the frequencies in a narrow bin and evaluating at the bin
    centre changes it by far less than the search needs: the grid runs on
    :data:`BINS_PER_DECADE` bins per decade, the refinement on ten times as
    many, and the returned objective is the exact sum.
    """
    ok = sp.wa > 0
    lq = torch.log(sp.q)
    lo = torch.where(ok, lq, torch.full_like(lq, float("inf"))).amin(-1, keepdim=True)
    hi = torch.where(ok, lq, torch.full_like(lq, -float("inf"))).amax(-1, keepdim=True)
    any_ok = ok.any(-1, keepdim=True)
    lo = torch.where(any_ok, lo, torch.zeros_like(lo))
    hi = torch.where(any_ok, hi, torch.zeros_like(hi))
    decades = float(((hi - lo) / math.log(10.0)).max())
    nb = max(1, min(sp.q.shape[-1], int(math.ceil(decades * per_decade)) + 1))
    if nb >= sp.q.shape[-1]:
        return sp
    width = (hi - lo).clamp(min=1e-12) / nb
    idx = torch.where(ok, ((lq - lo) / width).floor().clamp(0, nb - 1),
                      torch.zeros_like(lq)).to(torch.int64)
    centre = torch.exp(lo + (torch.arange(nb, dtype=torch.float64, device=lq.device) + 0.5) * width)

    def add(v):
        return torch.zeros(v.shape[0], nb, dtype=v.dtype, device=v.device).scatter_add_(1, idx, v)

    return sp._replace(q=centre, wa=add(sp.wa), wy=add(sp.wy), wr=add(sp.wr), wry=add(sp.wry))


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


def _golden(fun, a, b, iters: int):
    """Vectorised golden-section search for the minimum of ``fun`` on [a, b] (each (B,))."""
    invphi = (math.sqrt(5.0) - 1) / 2
    c = b - invphi * (b - a)
    d = a + invphi * (b - a)
    fc, fd = fun(torch.stack([c, d], 1)).unbind(1)
    for _ in range(iters):
        left = fc <= fd            # the minimum is in [a, d]
        b = torch.where(left, d, b)
        a = torch.where(left, a, c)
        # One new point per iteration: reuse the surviving interior one.
        new_c = b - invphi * (b - a)
        new_d = a + invphi * (b - a)
        x_new = torch.where(left, new_c, new_d)
        f_new = fun(x_new[:, None])[:, 0]
        c, d, fc, fd = (torch.where(left, new_c, d), torch.where(left, c, new_d),
                        torch.where(left, f_new, fd), torch.where(left, fc, f_new))
    best = fc <= fd
    return torch.where(best, c, d), torch.where(best, fc, fd)


def _iters(step: float, rtol: float) -> int:
    width = 2 * step
    target = math.log1p(rtol)
    if width <= target:
        return 0
    return int(math.ceil(math.log(target / width) / math.log((math.sqrt(5.0) - 1) / 2)))


def _flat(values: torch.Tensor) -> torch.Tensor:
    """Rows of a (B, G) grid of objective values that do not move (or are not finite)."""
    fin = torch.isfinite(values)
    big = torch.where(fin, values, torch.zeros_like(values)).abs().amax(dim=1)
    vmax = torch.where(fin, values, torch.full_like(values, -float("inf"))).amax(dim=1)
    vmin = torch.where(fin, values, torch.full_like(values, float("inf"))).amin(dim=1)
    return ~(fin.any(dim=1)) | ~(vmax - vmin > 1e-10 * big)


def _search(sp: _Spectra, rule: str, s2, tau: float, eps_range, rtol: float):
    """log eps (B,), objective (B,), fallback mask (B,) for one flattened problem."""
    lo, hi = _log_range(sp, eps_range)
    t = _grid(lo, hi)
    vals = _chunked(_binned(sp, BINS_PER_DECADE), rule, t, s2, tau)
    fine = _binned(sp, 10 * BINS_PER_DECADE)
    step = float(((hi - lo) / (t.shape[1] - 1)).max())
    # No data where the filter moves: every eps gives the same solution.
    energy = sp.wy.sum(-1)
    if rule == "discrepancy":
        return _root(sp, fine, t, vals, s2, tau, energy, rtol)
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

    tb, fb = _golden(fun, a, b, _iters(step, rtol))
    clipped = torch.zeros_like(flat)
    # Keep the grid point if the refinement did not improve on it (a minimum at
    # the end of the range).
    tg = t[rows, i]
    better = fb <= fun(tg[:, None])[:, 0]
    tb = torch.where(better, tb, tg)
    return tb, _objective(sp, rule, tb[:, None], s2, tau)[:, 0], flat, clipped


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
    step = float((t[:, 1] - t[:, 0]).max())
    for _ in range(max(1, int(math.ceil(math.log2(max(step, 1e-12) / math.log1p(rtol)))))):
        m = 0.5 * (a + b)
        up = _objective(fine, "discrepancy", m[:, None], s2, tau)[:, 0] >= 0
        b = torch.where(up, m, b)
        a = torch.where(up, a, m)
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


def _noise_var(noise_std, rule, sp_shape_lead, est):
    """Noise variance per system (B,), from ``noise_std`` or the estimate ``est()``."""
    if rule not in NEEDS_NOISE:
        return None
    if noise_std is None:
        s = est()
    elif isinstance(noise_std, torch.Tensor):
        s = noise_std.to(torch.float64).expand(sp_shape_lead).reshape(-1)
    else:
        s = torch.full((int(torch.Size(sp_shape_lead).numel()),), float(noise_std),
                       dtype=torch.float64)
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


def choose_eps(k2: torch.Tensor, r2: Optional[torch.Tensor], y2: torch.Tensor,
               rule: str = "auto", *, size: Tuple[int, int],
               noise_std: Union[None, float, torch.Tensor] = None, per: str = "plane",
               tau: float = 1.0, rtol: float = 1e-2,
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
        See the module docstring; "auto" is :data:`AUTO_RULE`.
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
    rule = AUTO_RULE if rule == "auto" else rule
    sp, lead = _prepare(k2, r2, y2, size, per, noise_std)
    dims = 2 if per == "plane" else 3
    s2 = _noise_var(noise_std, rule, lead, lambda: estimate_noise_spectrum(
        k2, y2, size, dims=dims).reshape(-1))
    return _finish(*_search(sp, rule, s2, tau, eps_range, rtol), lead, rule, fallback_eps)


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
                   tau: float = 1.0) -> torch.Tensor:
    """The objective that :func:`choose_eps` minimises, at the eps values ``eps`` (G,).

    Returns a float64 Tensor (..., G) (``...`` as :func:`choose_eps`'s result):
    GCV, UPRE, the solution-risk estimate minus its eps-independent part,
    ``residual - tau N s^2`` for "discrepancy" (its root is the choice), or
    minus the L-curve curvature.
    """
    _check_common(rule, per, tau, 1e-2, None, FALLBACK_EPS)
    noise_std = _check_positive("noise_std", noise_std)
    rule = AUTO_RULE if rule == "auto" else rule
    sp, lead = _prepare(k2, r2, y2, size, per, noise_std)
    e = torch.as_tensor(eps, dtype=torch.float64, device=sp.q.device).reshape(-1)
    if bool((e <= 0).any()) or not bool(torch.isfinite(e).all()):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    dims = 2 if per == "plane" else 3
    s2 = _noise_var(noise_std, rule, lead, lambda: estimate_noise_spectrum(
        k2, y2, size, dims=dims).reshape(-1))
    t = torch.log(e)[None, :].expand(sp.q.shape[0], -1)
    return _chunked(sp, rule, t, s2, tau).reshape(*lead, -1)


def _terms_at(sp, lead, eps) -> SpectralTerms:
    e = torch.as_tensor(eps, dtype=torch.float64, device=sp.q.device)
    if bool((e <= 0).any()) or not bool(torch.isfinite(e).all()):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
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
    y2_perp : Tensor (..., H, W // 2 + 1), float64, ``||Y||^2 - sum |U^H Y|^2``
        (clamped at 0): the part of the data outside the range of ``K(w)``,
        which no eps fits.
    """
    U, S, _ = torch.linalg.svd(K.to(torch.complex128), full_matrices=False)
    Ym = Y.to(torch.complex128).movedim(-3, -1).unsqueeze(-1)      # (..., H, Wf, M, 1)
    P = (U.mH @ Ym).squeeze(-1)                                      # (..., H, Wf, k)
    y2_proj = P.real ** 2 + P.imag ** 2
    total = (Ym.squeeze(-1).abs() ** 2).sum(-1)
    y2_perp = (total - y2_proj.sum(-1)).clamp(min=0)
    return S.to(torch.float64) ** 2, y2_proj, y2_perp


def choose_eps_svd(s2: torch.Tensor, y2_proj: torch.Tensor, rule: str = "auto", *,
                   size: Tuple[int, int], n_out: int, y2_perp: Optional[torch.Tensor] = None,
                   noise_std: Union[None, float, torch.Tensor] = None, tau: float = 1.0,
                   rtol: float = 1e-2, eps_range: Optional[Tuple[float, float]] = None,
                   fallback_eps: float = FALLBACK_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Choose eps for a multi-channel layer ``(K^H K + eps I)^-1 K^H`` per sample.

    With ``K(w) = U diag(s) V^H`` per frequency, the influence matrix is
    ``U diag(s^2 / (s^2 + eps)) U^H``: its trace is ``sum_w sum_k f_k`` and the
    residual is ``sum_w (sum_k g_k^2 |U^H Y|_k^2 + ||P_perp Y||^2) / (H W)``;
    ``N = n_out H W`` observations. The rules are :func:`choose_eps`'s with
    ``|K|^2 -> s^2`` and ``|R|^2 = 1``.

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
    noise_std = _check_positive("noise_std", noise_std)
    rule = AUTO_RULE if rule == "auto" else rule
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
    lead = y2_proj.shape[:-3]
    B = int(torch.Size(lead).numel())
    s2b = s2.to(torch.float64).expand_as(y2_proj).reshape(B, -1)
    y2b = y2_proj.to(torch.float64).reshape(B, -1)
    wcol = half_spectrum_weights(W, device=y2_proj.device)
    w = wcol[:, None].expand(H, W // 2 + 1, k).reshape(-1)
    if y2_perp is None:
        extra = torch.zeros(B, dtype=torch.float64, device=y2b.device)
    else:
        y2_perp = _check_power("y2_perp", y2_perp)
        extra = (y2_perp.to(torch.float64).expand(*lead, H, W // 2 + 1).reshape(B, -1, W // 2 + 1)
                 @ wcol).sum(-1) / (H * W)
    sp = _compress(s2b, torch.ones_like(s2b), y2b, w, H * W, n_out * H * W,
                   float((n_out - k) * H * W), extra)

    def est():
        # Power per frequency and output channel of the smallest singular values.
        return estimate_noise_spectrum(s2b, y2b, size, dims=1)

    s2n = _noise_var(noise_std, rule, lead, est)
    return _finish(*_search(sp, rule, s2n, tau, eps_range, rtol), lead, rule, fallback_eps)


# ---------------------------------------------------------------------------
# Public: the padded fast path of a non-circular boundary
# ---------------------------------------------------------------------------

def tukey_window(n: int, width: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """1D window of length ``n``: raised-cosine ramps of ``width`` samples from 0, 1 between.

    The ramps reach 0 just outside the window (sample -1 and n), so every
    sample of a short window stays positive.
    """
    i = torch.arange(n, dtype=torch.float64, device=device)
    d = torch.minimum(i + 1, n - i)               # distance to the nearest "outside" sample
    w = 0.5 * (1 - torch.cos(math.pi * torch.clamp(d / (width + 1), max=1.0)))
    return w.to(dtype)


def choose_eps_padded(image: torch.Tensor, k2: torch.Tensor, r2: Optional[torch.Tensor],
                      geometry, rule: str = "auto", *, psf_size: Tuple[int, int],
                      taper: Optional[int] = None,
                      noise_std: Union[None, float, torch.Tensor] = None, per: str = "plane",
                      tau: float = 1.0, rtol: float = 1e-2,
                      eps_range: Optional[Tuple[float, float]] = None,
                      fallback_eps: float = FALLBACK_EPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Choose eps for the padded fast path of a non-circular boundary.

    The padded solve extends the observation to ``geometry.fft_size`` and
    solves circularly there. The extension is not the blur of anything (its
    seams carry an error that is structured, not noise), and a rule applied
    to the padded spectrum fits that error with a too-small eps. Instead the
    rule is applied to the *observed region only*, made periodic by a
    window: ``z = w y`` with a separable Tukey window ``w`` (raised-cosine
    ramps of ``taper`` pixels inside the image edge), zero elsewhere in the
    ``fft_size`` buffer. For a window that is smooth on the PSF's scale,
    ``z = K (w x) + w n`` up to a commutator ``[w, K] x`` that is small, and
    the noise ``w n`` has the same expected power ``s^2 sum(w^2)`` at every
    frequency, i.e. it behaves like white noise of variance
    ``s^2 sum(w^2) / (Nh Nw)`` on the buffer (exact for the expectations all
    rules rely on). The rule then runs in closed form on ``|rfft2(z)|^2``
    with the padded ``|K|^2``, ``|R|^2``: one extra FFT.

    Parameters
    ----------
    image : Tensor (..., H, W), the observation (not padded)
    k2, r2 : Tensors broadcastable to (..., Nh, Nw // 2 + 1): the plan's
        padded-size ``|K|^2`` and ``|R|^2`` (r2 None: identity)
    geometry : object with ``top``, ``left``, ``height``, ``width``, ``fft_size``
        (``boundary.PadGeometry``); only ``fft_size`` and the image size are
        used, the window sits at (0, 0) of the buffer (a circular shift
        does not change any power spectrum).
    rule : as in :func:`choose_eps`; "auto" is :data:`AUTO_RULE_PADDED`
    psf_size : (kh, kw), sets the default taper
    taper : int >= 1, optional; ramp width, default ``2 max(kh, kw)`` (at
        least 8, at most a quarter of the image side)
    noise_std : optional; default :func:`~deconv_ext.maths.noise.estimate_noise`
        of the image (rules that need it)
    per, tau, rtol, eps_range, fallback_eps : as in :func:`choose_eps`

    Returns
    -------
    eps, objective : Tensor, float64, ``image.shape[:-2]`` (or ``[:-3]``)
    """
    _check_common(rule, per, tau, rtol, eps_range, fallback_eps)
    noise_std = _check_positive("noise_std", noise_std)
    rule = AUTO_RULE_PADDED if rule == "auto" else rule
    if not isinstance(image, torch.Tensor) or not image.dtype.is_floating_point \
            or image.dim() < 2:
        raise TypeError("image must be a real floating torch.Tensor (..., H, W)")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or infinite values")
    H, W = image.shape[-2:]
    Nh, Nw = _check_size(tuple(geometry.fft_size))
    if (geometry.height, geometry.width) != (H, W) or Nh < H or Nw < W:
        raise ValueError(f"geometry {geometry} does not hold an image of size {(H, W)}")
    kh, kw = _check_size(psf_size)
    if taper is None:
        taper = max(8, 2 * max(kh, kw))
        taper = max(1, min(taper, min(H, W) // 4))
    elif not isinstance(taper, numbers.Integral) or taper < 1:
        raise ValueError(f"taper={taper!r} is not valid; expected a positive int")
    x = image.to(torch.float64)
    wr = tukey_window(H, int(taper), device=x.device)
    wc = tukey_window(W, int(taper), device=x.device)
    win = wr[:, None] * wc[None, :]
    # Remove the mean first: the window would otherwise print its own
    # spectrum (a bright, sharp-edged plateau) on the data.
    mean = x.mean(dim=(-2, -1), keepdim=True)
    z = torch.nn.functional.pad((x - mean) * win, (0, Nw - W, 0, Nh - H))
    Z = torch.fft.rfft2(z)
    y2 = Z.real ** 2 + Z.imag ** 2
    scale = float((win * win).sum()) / (Nh * Nw)
    if rule in NEEDS_NOISE:
        if noise_std is None:
            noise_std = estimate_noise(image)
            if per == "sample":
                noise_std = noise_std.pow(2).mean(-1).sqrt()
        noise_std = noise_std * math.sqrt(scale)
    return choose_eps(k2, r2, y2, rule, size=(Nh, Nw), noise_std=noise_std, per=per, tau=tau,
                      rtol=rtol, eps_range=eps_range, fallback_eps=fallback_eps)
