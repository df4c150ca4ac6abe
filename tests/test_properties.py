"""Property-based tests (hypothesis) of the operators the library applies.

Every example is tiny (images 1..12 pixels a side, float64 unless a property
is about dtypes), so the operators can be materialised as dense matrices from
basis vectors: ``A`` from ``plan.blur`` and ``P`` (the solve) from ``plan``.
Nothing here trusts the library's own reference: the Moore-Penrose
conditions, adjointness, linearity and shift equivariance are properties of
the mathematics, and the layer operator is also checked against ``F.conv2d``.

Examples per property: the ``ci`` profile of ``tests/conftest.py`` (200,
derandomized, no database); ``HYPOTHESIS_PROFILE=thorough`` searches longer.

Tolerances scale with ``kappa = ||A||_2 ||P||_2``, the condition number of
the part of the operator that the pseudo-inverse keeps (up to
``1 / rcond``): a float64 solve loses about ``kappa`` ulps, so a fixed
tolerance would either be loose for well-conditioned kernels or fail
legitimately on ill-conditioned ones. A wrong operator (a shift, a missing
conjugate, a wrong threshold) misses by O(1), far beyond these bounds.
"""
from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st

import deconv_ext as dx
from deconv_ext import reference
from deconv_ext.maths import spectral
from oracles import conv2d_circular, dense_layer_operator

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Run these tiny problems single-threaded (restored afterwards).

    Measured on the 2-core CI machine under ``pytest -n 2``: OpenMP teams of
    2 threads per worker oversubscribe the cores and every tiny FFT waits on
    a barrier; the file took 180 s instead of 9 s.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

U64 = torch.finfo(F64).eps
BOUNDARIES = ("circular", "reflect", "symmetric", "replicate", "zeros")


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

# Kernel taps in [-1, 1]; magnitudes below 1e-6 become exact zeros: products
# of hypothesis' favourite tiny floats (1e-300) underflow, which tests float
# arithmetic, not this library.
taps = st.floats(-1.0, 1.0, allow_nan=False, allow_subnormal=False, width=64).map(
    lambda v: 0.0 if abs(v) < 1e-6 else v)


def seeded(draw, shape):
    """Gaussian values of ``shape`` from a hypothesis-drawn seed: large arrays
    drawn element by element would dominate the run time."""
    seed = draw(st.integers(0, 2**31 - 1))
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def tap_values(draw, shape):
    """Hypothesis-drawn taps for small kernels (shrinkable), seeded beyond."""
    n = math.prod(shape)
    if n > 32:
        return seeded(draw, shape).clamp(-1, 1)
    return torch.tensor(draw(st.lists(taps, min_size=n, max_size=n)), dtype=F64).reshape(shape)


@st.composite
def sizes(draw, lo=1, hi=12):
    return draw(st.integers(lo, hi)), draw(st.integers(lo, hi))


@st.composite
def kernels(draw, H, W, lead=()):
    """A kernel no larger than (H, W): random taps, or a structured one with
    exact spectral zeros (box, difference, checkerboard) scaled randomly."""
    kh, kw = draw(st.integers(1, H)), draw(st.integers(1, W))
    kind = draw(st.sampled_from(["random", "random", "random", "box", "diff", "zero_sum"]))
    k = tap_values(draw, (*lead, kh, kw))
    if kind == "box":          # zeros of the sinc at every multiple of H/kh, W/kw
        k = torch.ones_like(k) * (1.0 + k.abs().mean())
    elif kind == "diff":       # a derivative: K(0) = 0
        k = torch.zeros_like(k)
        k[..., 0, 0], k[..., -1, -1] = 1.0, -1.0
        if kh * kw == 1:
            k[..., 0, 0] = 0.0   # a 1x1 difference is the zero operator
    elif kind == "zero_sum":
        k = k - k.mean(dim=(-2, -1), keepdim=True)
    note(f"kernel kind={kind} shape={tuple(k.shape)}")
    return k


def images(draw, shape):
    return seeded(draw, shape)


@st.composite
def plan_args(draw, boundaries=("circular",), methods=("pinv", "tikhonov")):
    H, W = draw(sizes())
    lead = draw(st.sampled_from([(), (1,), (2,)]))
    psf = draw(kernels(H, W, lead))
    method = draw(st.sampled_from(methods))
    eps = draw(st.sampled_from([0.0, 1e-8, 1e-3, 0.5, 10.0])) if method == "tikhonov" else 0.0
    reg = draw(st.sampled_from([None, "laplacian"])) if method == "tikhonov" else None
    boundary = draw(st.sampled_from(boundaries))
    return dict(psf=psf, size=(H, W), method=method, eps=eps, reg=reg, boundary=boundary)


def make_plan(a):
    return dx.DeconvPlan(a["psf"], a["size"], eps=a["eps"], method=a["method"], reg=a["reg"],
                         boundary=a["boundary"])


# ---------------------------------------------------------------------------
# Dense materialisation
# ---------------------------------------------------------------------------

def lead_of(a):
    return tuple(a["psf"].shape[:-2])


def dense(fn, in_shape):
    """Matrix of the linear map ``fn`` on tensors of ``in_shape``: columns are
    ``fn`` of the basis vectors, computed as one batched call."""
    n = math.prod(in_shape)
    basis = torch.eye(n, dtype=F64).reshape(n, *in_shape)
    return fn(basis).reshape(n, -1).T


def kappa(A, P) -> float:
    return float(torch.linalg.matrix_norm(A, 2) * torch.linalg.matrix_norm(P, 2))


def solve_kappa(a) -> float:
    """``sigma_max * max gain`` of the (circular, or padded fast path) solve,
    from the kernel's spectrum at the plan's FFT size: O(H W), unlike the
    dense ``kappa``. Same rule as docs/architecture.md ("The maths"), computed here."""
    plan = make_plan(a)
    size = tuple(plan.fft_size)
    K = reference.psf_transfer(a["psf"], size).abs()
    smax = float(K.max())
    if smax == 0:
        return 1.0
    keep = K > spectral.default_rcond(size, F64) * smax
    pinv_gain = torch.where(keep, 1.0 / torch.where(keep, K, torch.ones_like(K)),
                            torch.zeros_like(K))
    if a["method"] == "pinv":
        gain = pinv_gain
    else:
        R2 = (reference.laplacian_transfer(size).abs() ** 2 if a["reg"] == "laplacian"
              else torch.ones_like(K))
        P = a["eps"] * R2
        gain = torch.where(P > 0, K / (K ** 2 + torch.where(P > 0, P, torch.ones_like(P))),
                           pinv_gain)
    return max(smax * float(gain.max()), 1.0)


def roundoff_sensitivity(a, y) -> float:
    """``||dX||`` per unit relative roundoff ``u`` in ``K``, where ``|K|`` is near 0.

    ``solve_kappa`` bounds how the solve amplifies errors in ``y``; this term
    is the other half: an error ``dK ~ u sigma_max`` moves Tikhonov's
    ``g(K) = conj(K) / (|K|^2 + P)`` by ``|g'(K)| dK``, and ``|g'(0)| = 1 / P``,
    so at a frequency where the true ``K`` is 0 (a box PSF as large as the
    image) two FFTs' roundoff, both right, give answers ``sigma_max / P``
    apart. Returns ``sigma_max ||g'(K) Y|| / sqrt(H W)`` (Parseval), 0 for the
    pseudo-inverse (its threshold keeps such frequencies out).
    """
    if a["method"] == "pinv" or a["eps"] == 0:
        return 0.0
    size = tuple(y.shape[-2:])
    K2 = reference.psf_transfer(a["psf"].double(), size).abs() ** 2
    R2 = (reference.laplacian_transfer(size).abs() ** 2 if a["reg"] == "laplacian"
          else torch.ones_like(K2))
    P = a["eps"] * R2
    gprime = torch.where(P > 0, (P - K2).abs() / (K2 + P).clamp_min(1e-300) ** 2,
                         torch.zeros_like(K2))
    Y = torch.fft.fft2(y.double())
    return float(K2.max().sqrt()) * float((gprime * Y).norm()) / math.sqrt(size[0] * size[1])


def assert_close(got, want, tol, what, atol: float = 0.0):
    err = float((got - want).norm())
    ref = float(want.norm())
    assert err <= tol * max(ref, 1e-300) + atol or err <= 1e-300, \
        f"{what}: |got - want| = {err:.3e} > {tol:.1e} * |want| + {atol:.1e} = {tol * ref + atol:.3e}"


def assert_moore_penrose(A, P, rcond):
    """The four Moore-Penrose conditions of ``P`` for ``A`` up to rounding.

    The library applies the pseudo-inverse of ``A`` with singular values
    ``<= rcond * sigma_max`` dropped; ``A P A - A`` is then at most those
    dropped values, hence the ``rcond`` term.
    """
    n = max(A.shape)
    k = kappa(A, P)
    # The threshold itself: every kept singular value exceeds rcond * sigma_max,
    # so ||P|| < 1 / (rcond sigma_max), i.e. kappa < 1 / rcond. Without this a
    # solve that forgot to drop FFT "zeros" (|K| ~ 1e-17) would pass with a
    # tolerance made vacuous by its own kappa.
    assert k <= (1 + 1e-6) / rcond, f"kappa={k:.3e} exceeds 1/rcond={1 / rcond:.3e}"
    tol = 50 * n * U64 * max(k, 1.0) + rcond * math.sqrt(n)
    note(f"kappa={k:.3e} tol={tol:.3e}")
    assert_close(A @ P @ A, A, tol, "A P A = A")
    assert_close(P @ A @ P, P, tol, "P A P = P")
    AP, PA = A @ P, P @ A
    assert_close(AP.T, AP, tol, "(A P)^H = A P")
    assert_close(PA.T, PA, tol, "(P A)^H = P A")


# ---------------------------------------------------------------------------
# 1. Moore-Penrose conditions of the applied pseudo-inverse
# ---------------------------------------------------------------------------

@given(plan_args(methods=("pinv",)))
def test_moore_penrose_image_plan(a):
    plan = make_plan(a)
    H, W = a["size"]
    shape = (*lead_of(a), H, W)
    A = dense(plan.blur, shape)
    P = dense(plan, shape)
    assert torch.isfinite(P).all()
    assert_moore_penrose(A, P, spectral.default_rcond((H, W), F64))


@st.composite
def layer_args(draw, max_side=6):
    H, W = draw(sizes(1, max_side))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_out = groups * draw(st.integers(1, 3 if groups == 1 else 1))
    c_in_g = draw(st.integers(1, 3 if groups == 1 else 1))
    if groups > 1 and draw(st.booleans()):
        c_in_g = 1                       # depthwise: the element-wise plan
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    kh = draw(st.integers(1, max(1, (H - 1) // dil[0] + 1)))
    kw = draw(st.integers(1, max(1, (W - 1) // dil[1] + 1)))
    w = tap_values(draw, (c_out, c_in_g, kh, kw))
    if draw(st.booleans()):
        w[..., -1, :] = 0.0              # structured rank deficiency
    note(f"weight {tuple(w.shape)} groups={groups} dilation={dil} size={(H, W)}")
    return dict(weight=w, size=(H, W), groups=groups, dilation=dil)


@given(layer_args())
def test_moore_penrose_conv_layer_plan(a):
    w, (H, W), g, dil = a["weight"], a["size"], a["groups"], a["dilation"]
    plan = dx.DeconvPlan.for_conv2d(w, (H, W), groups=g, dilation=dil)
    c_out, c_in = w.shape[0], w.shape[1] * g
    A = dense(plan.blur, (c_in, H, W))
    # The plan's forward model is F.conv2d with circular "same" padding.
    A_ref = dense_layer_operator(w, (H, W), groups=g, dilation=dil)
    assert_close(A, A_ref, 1e-12, "plan.blur = F.conv2d")
    P = dense(plan, (c_out, H, W))
    assert P.shape == (c_in * H * W, c_out * H * W)
    assert torch.isfinite(P).all()
    assert_moore_penrose(A, P, spectral.default_rcond((H, W), F64))


# ---------------------------------------------------------------------------
# 2. Adjointness of blur / adjoint
# ---------------------------------------------------------------------------

@given(st.data(), plan_args(boundaries=BOUNDARIES, methods=("pinv",)))
def test_blur_adjoint_are_adjoint(data, a):
    plan = make_plan(a)
    shape = (2, *lead_of(a), *a["size"]) if lead_of(a) else (2, *a["size"])
    x, y = images(data.draw, shape), images(data.draw, shape)
    Ax, Aty = plan.blur(x), plan.adjoint(y)
    lhs, rhs = float((Ax * y).sum()), float((x * Aty).sum())
    scale = float(Ax.norm() * y.norm() + x.norm() * Aty.norm())
    assert abs(lhs - rhs) <= 1e-13 * math.prod(shape) * scale + 1e-300
    # And the dense matrices: adjoint == blur^T exactly as operators.
    one = shape[1:]
    assert_close(dense(plan.adjoint, one), dense(plan.blur, one).T, 1e-12, "A^T")


@given(st.data(), layer_args())
def test_layer_blur_adjoint_are_adjoint(data, a):
    w, size, g, dil = a["weight"], a["size"], a["groups"], a["dilation"]
    plan = dx.DeconvPlan.for_conv2d(w, size, groups=g, dilation=dil)
    c_out, c_in = w.shape[0], w.shape[1] * g
    x = images(data.draw, (2, c_in, *size))
    y = images(data.draw, (2, c_out, *size))
    Ax, Aty = plan.blur(x), plan.adjoint(y)
    lhs, rhs = float((Ax * y).sum()), float((x * Aty).sum())
    scale = float(Ax.norm() * y.norm() + x.norm() * Aty.norm())
    assert abs(lhs - rhs) <= 1e-13 * x.numel() * scale + 1e-300


# ---------------------------------------------------------------------------
# 3. Linearity and shift equivariance of the solve
# ---------------------------------------------------------------------------

@given(st.data(), plan_args(boundaries=BOUNDARIES))
def test_solve_and_blur_are_linear(data, a):
    plan = make_plan(a)
    shape = (*lead_of(a), *a["size"])
    x, y = images(data.draw, shape), images(data.draw, shape)
    s = data.draw(st.floats(-4, 4, allow_nan=False, allow_subnormal=False))
    t = data.draw(st.floats(-4, 4, allow_nan=False, allow_subnormal=False))
    tol = 100 * U64 * solve_kappa(a) * math.prod(shape)
    want = s * plan(x) + t * plan(y)
    got = plan(s * x + t * y)
    # Cancellation (s x + t y ~ 0) makes the relative error meaningless; use
    # the scale of the parts.
    scale = abs(s) * float(plan(x).norm()) + abs(t) * float(plan(y).norm())
    assert float((got - want).norm()) <= tol * scale + 1e-300
    got_b = plan.blur(s * x + t * y)
    want_b = s * plan.blur(x) + t * plan.blur(y)
    scale_b = abs(s) * float(plan.blur(x).norm()) + abs(t) * float(plan.blur(y).norm())
    assert float((got_b - want_b).norm()) <= 1e-13 * math.prod(shape) * scale_b + 1e-300


@given(st.data(), plan_args())
def test_circular_solve_commutes_with_roll(data, a):
    H, W = a["size"]
    shape = (*lead_of(a), H, W)
    y = images(data.draw, shape)
    sh = (data.draw(st.integers(-H, H)), data.draw(st.integers(-W, W)))
    kw = dict(eps=a["eps"], method=a["method"], reg=a["reg"])
    x = dx.deconvolve(y, a["psf"], **kw)
    x_rolled = dx.deconvolve(torch.roll(y, sh, dims=(-2, -1)), a["psf"], **kw)
    tol = 100 * U64 * solve_kappa(a) * H * W
    assert_close(x_rolled, torch.roll(x, sh, dims=(-2, -1)), tol, "roll equivariance")


# ---------------------------------------------------------------------------
# 4. deconvolve(convolve(x)) == x for well-conditioned kernels
# ---------------------------------------------------------------------------

@st.composite
def well_conditioned_psf(draw, H, W):
    """Centre tap 1, the others summing to at most 1/2 in absolute value:
    |K(w)| >= 1/2 at every frequency (condition number <= 3)."""
    kh, kw = draw(st.integers(1, H)), draw(st.integers(1, W))
    p = tap_values(draw, (kh, kw))
    p[kh // 2, kw // 2] = 0.0
    total = float(p.abs().sum())
    if total > 0.5:
        p = p * (0.5 / total)
    p[kh // 2, kw // 2] = 1.0 if draw(st.booleans()) else -1.0
    return p


@given(st.data(), sizes(), st.sampled_from(BOUNDARIES[:1]),
       st.sampled_from(["pinv", "tikhonov0"]))
def test_deconvolve_inverts_convolve(data, size, boundary, method):
    psf = data.draw(well_conditioned_psf(*size))
    x = images(data.draw, (2, *size))
    y = dx.convolve(x, psf, boundary=boundary)
    kw = dict(method="pinv") if method == "pinv" else dict(method="tikhonov", eps=0.0)
    assert_close(dx.deconvolve(y, psf, **kw), x, 1e-12, "deconvolve(convolve(x))")


@given(st.data(), sizes(1, 8), st.integers(1, 3), st.integers(0, 2))
def test_conv2d_pinv_inverts_injective_layer(data, size, c_in, extra):
    """A layer whose per-frequency matrices are ``[I; 0] + D(w)`` with
    ``||D(w)|| <= 1/2``: injective (sigma_min >= 1/2), so its pseudo-inverse
    recovers the input exactly."""
    H, W = size
    c_out = c_in + extra
    kh, kw = data.draw(st.integers(1, H)), data.draw(st.integers(1, W))
    w = tap_values(data.draw, (c_out, c_in, kh, kw))
    total = float(w.abs().sum())
    if total > 0.5:
        w = w * (0.5 / total)
    # F.conv2d is a cross-correlation with the "same" origin at (k-1)//2.
    w[torch.arange(c_in), torch.arange(c_in), (kh - 1) // 2, (kw - 1) // 2] += 1.0
    bias = tap_values(data.draw, (c_out,))
    x = images(data.draw, (2, c_in, H, W))
    y = conv2d_circular(x, w, bias)
    assert_close(dx.conv2d_pinv(y, w, bias), x, 1e-11, "conv2d_pinv(conv2d(x))")


# ---------------------------------------------------------------------------
# 5. The compiled (C++) path equals the reference specification
# ---------------------------------------------------------------------------

@given(st.data(), plan_args(), st.sampled_from([torch.float64, torch.float32]))
def test_cpp_path_equals_reference(data, a, dtype):
    H, W = a["size"]
    shape = (2, *lead_of(a), H, W) if lead_of(a) else (2, H, W)
    y = images(data.draw, shape).to(dtype)
    psf = a["psf"].to(dtype)
    kw = dict(eps=a["eps"], method=a["method"], reg=a["reg"])
    fast = dx.deconvolve(y, psf, **kw)
    fast_blur = dx.convolve(y, psf)
    ref = reference.deconvolve(y, psf, **kw)
    ref_blur = reference.convolve(y, psf)
    assert fast.dtype == dtype and fast.shape == y.shape
    k = solve_kappa(a)      # float64: the conditioning of this problem
    u = torch.finfo(dtype).eps
    atol = 16 * u * roundoff_sensitivity(a, y)
    assert_close(fast.double(), ref.double(), 100 * u * k * H * W, "C++ == reference (solve)",
                 atol)
    assert_close(fast_blur.double(), ref_blur.double(), 100 * u * H * W,
                 "C++ == reference (blur)")


@given(st.data(), layer_args())
def test_cpp_layer_path_equals_reference(data, a):
    w, size, g, dil = a["weight"], a["size"], a["groups"], a["dilation"]
    c_out = w.shape[0]
    y = images(data.draw, (2, c_out, *size))
    fast = dx.conv2d_pinv(y, w, groups=g, dilation=dil)
    ref = reference.conv2d_pinv(y, w, groups=g, dilation=dil)
    plan = dx.DeconvPlan.for_conv2d(w, size, groups=g, dilation=dil)
    c_in = w.shape[1] * g
    k = max(kappa(dense(plan.blur, (c_in, *size)), dense(plan, (c_out, *size))), 1.0)
    assert_close(fast, ref, 100 * U64 * k * y.numel(), "C++ == reference (layer)")
