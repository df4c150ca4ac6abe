"""Automatic eps (deconv_ext.maths.parameter_choice) and the noise estimate.

Oracles: dense operator matrices (the blur A and the regulariser L built
column by column with reference.convolve, the influence matrix
A (A^T A + eps L^T L)^-1 A^T and its trace), full fft2 spectra without the
half-spectrum weights, Monte Carlo over noise draws, and
skimage.restoration.estimate_sigma.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import deconv_ext as dx
from deconv_ext import reference as ref
from deconv_ext.maths import parameter_choice as pc
from deconv_ext.maths.noise import estimate_noise, estimate_noise_spectrum

D = torch.float64
LAP = torch.tensor(ref.LAPLACIAN, dtype=D)


def dense(kernel, size):
    """Dense matrix of the circular image-convention convolution by ``kernel``."""
    H, W = size
    eye = torch.eye(H * W, dtype=D)
    return torch.stack([ref.convolve(e.reshape(H, W), kernel).reshape(-1) for e in eye], 1)


def half(kernel, size):
    return ref.psf_transfer(kernel, size)[..., : size[1] // 2 + 1].abs() ** 2


def problem(size, reg, gen, planes=2, noise=0.02):
    H, W = size
    psf = dx.gaussian(1.0, dtype=D)
    x = torch.rand(planes, H, W, dtype=D, generator=gen) + 0.5
    y = ref.convolve(x, psf) + noise * torch.randn(planes, H, W, dtype=D, generator=gen)
    k2 = half(psf, size)
    if reg is None:
        r2, L = None, torch.eye(H * W, dtype=D)
    else:
        kern = LAP if reg == "laplacian" else reg
        r2, L = half(kern, size), dense(kern, size)
    Y = torch.fft.rfft2(y)
    return psf, x, y, k2, r2, Y.abs() ** 2, dense(psf, size), L


def dense_terms(A, L, y, eps):
    M = A @ torch.linalg.solve(A.T @ A + eps * L.T @ L, A.T)
    r = y - M @ y
    xs = torch.linalg.solve(A.T @ A + eps * L.T @ L, A.T @ y)
    n = y.numel()
    dof = n - torch.trace(M)
    res = r @ r
    return res, dof, (L @ xs) @ (L @ xs), n * res / dof ** 2


REGS = [None, "laplacian", torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=D)]


@pytest.mark.parametrize("size", [(6, 7), (7, 8), (5, 5)])
@pytest.mark.parametrize("reg", REGS, ids=["none", "laplacian", "kernel"])
def test_terms_match_dense_operator(size, reg, gen):
    _, _, y, k2, r2, y2, A, L = problem(size, reg, gen)
    for eps in (1e-3, 0.05, 2.0):
        T = pc.spectral_terms(k2, r2, y2, eps, size=size)
        for b in range(2):
            res, dof, semi, gcv = dense_terms(A, L, y[b].reshape(-1), eps)
            torch.testing.assert_close(T.residual[b], res, rtol=1e-9, atol=1e-14)
            torch.testing.assert_close(T.dof[b], dof, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(T.seminorm[b], semi, rtol=1e-8, atol=1e-14)
            torch.testing.assert_close(T.gcv[b], gcv, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("W", [7, 8, 1, 2])
def test_half_spectrum_weights_full_spectrum(W, gen):
    """Half-spectrum sums with the weights equal full-fft2 sums, odd and even W."""
    w = pc.half_spectrum_weights(W)
    assert float(w.sum()) == W
    y = torch.randn(5, W, dtype=D, generator=gen)
    full = torch.fft.fft2(y).abs() ** 2
    halfp = torch.fft.rfft2(y).abs() ** 2
    torch.testing.assert_close((halfp * w).sum(), full.sum(), rtol=1e-12, atol=0)
    # and a non-symmetric per-frequency function of |K|^2 (a filter factor)
    k = torch.rand(2, 3, dtype=D, generator=gen)
    Kf = ref.psf_transfer(k, (5, W)).abs() ** 2
    f_full = (Kf / (Kf + 0.3)).sum()
    Kh = Kf[..., : W // 2 + 1]
    torch.testing.assert_close(((Kh / (Kh + 0.3)) * w).sum(), f_full, rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", ["gcv", "upre", "risk", "lcurve"])
@pytest.mark.parametrize("reg", [None, "laplacian"])
def test_choice_is_the_global_minimum_of_the_objective(rule, reg, gen):
    """The chosen eps beats a fine grid of the objective, up to its resolution."""
    size = (12, 11)
    _, _, y, k2, r2, y2, *_ = problem(size, reg, gen, planes=3)
    eps, obj = pc.choose_eps(k2, r2, y2, rule, size=size, noise_std=0.02, rtol=1e-4)
    grid = torch.logspace(-9, 3, 2000, dtype=D)
    vals = pc.rule_objective(k2, r2, y2, rule, grid, size=size, noise_std=0.02)
    at = pc.rule_objective(k2, r2, y2, rule, eps, size=size, noise_std=0.02)
    for b in range(3):
        torch.testing.assert_close(obj[b], at[b, b], rtol=1e-10, atol=1e-14)
        assert obj[b] <= vals[b].min() + 1e-6 * vals[b].abs().max()


def test_gcv_choice_matches_dense_gcv(gen):
    size = (6, 7)
    _, _, y, k2, r2, y2, A, L = problem(size, "laplacian", gen)
    eps, obj = pc.choose_eps(k2, r2, y2, "gcv", size=size, rtol=1e-5)
    for b in range(2):
        e = float(eps[b])
        g = lambda v: float(dense_terms(A, L, y[b].reshape(-1), v)[3])  # noqa: E731
        torch.testing.assert_close(obj[b], torch.tensor(g(e), dtype=D), rtol=1e-8, atol=0)
        assert g(e) <= g(e * 1.01) and g(e) <= g(e / 1.01)


@pytest.mark.parametrize("tau", [1.0, 1.5])
def test_discrepancy_meets_the_equation(tau, gen):
    size = (10, 9)
    _, _, y, k2, r2, y2, A, L = problem(size, "laplacian", gen, noise=0.05)
    s = 0.05
    eps, ratio = pc.choose_eps(k2, r2, y2, "discrepancy", size=size, noise_std=s, tau=tau,
                               rtol=1e-6)
    for b in range(2):
        res = dense_terms(A, L, y[b].reshape(-1), float(eps[b]))[0]
        torch.testing.assert_close(res / (tau * y[b].numel() * s * s), torch.tensor(1.0, dtype=D),
                                   rtol=1e-4, atol=0)
        torch.testing.assert_close(ratio[b], torch.tensor(1.0, dtype=D), rtol=1e-4, atol=0)


def test_lcurve_curvature_matches_finite_differences(gen):
    size = (16, 15)
    _, _, y, k2, r2, y2, *_ = problem(size, "laplacian", gen, planes=1)
    eps, obj = pc.choose_eps(k2, r2, y2, "lcurve", size=size)
    t0, h = math.log(float(eps[0])), 1e-3
    pts = []
    for t in (t0 - h, t0, t0 + h):
        T = pc.spectral_terms(k2, r2, y2, math.exp(t), size=size)
        pts.append((math.log(float(T.residual[0])), math.log(float(T.seminorm[0]))))
    (r_, s_), (r0, s0), (rp, sp) = pts
    r1, s1 = (rp - r_) / (2 * h), (sp - s_) / (2 * h)
    r2_, s2_ = (rp - 2 * r0 + r_) / h ** 2, (sp - 2 * s0 + s_) / h ** 2
    kappa = (r1 * s2_ - r2_ * s1) / (r1 ** 2 + s1 ** 2) ** 1.5
    assert abs(-float(obj[0]) - kappa) <= 1e-4 * abs(kappa)
    assert kappa > 0  # a corner, not a concave bend


def test_risk_is_unbiased_for_the_solution_error(gen):
    """E[risk(e1) - risk(e2)] = E||x_e1 - x||^2 - E||x_e2 - x||^2 (Monte Carlo)."""
    size, s, n = (8, 9), 0.05, 3000
    psf = dx.gaussian(1.0, dtype=D)
    x = torch.rand(*size, dtype=D, generator=gen)
    y = ref.convolve(x, psf) + s * torch.randn(n, *size, dtype=D, generator=gen)
    k2, r2 = half(psf, size), half(LAP, size)
    e = torch.tensor([3e-3, 3e-2], dtype=D)
    est = pc.rule_objective(k2, r2, torch.fft.rfft2(y).abs() ** 2, "risk", e, size=size,
                            noise_std=s)
    d_est = est[:, 0] - est[:, 1]
    errs = [((ref.deconvolve(y, psf, eps=float(v), reg="laplacian") - x) ** 2).sum((-2, -1))
            for v in e]
    d_true = errs[0] - errs[1]
    diff = d_est - d_true
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    assert abs(float(diff.mean())) < 0.1 * abs(float(d_true.mean()))


def test_per_plane_independence_and_per_sample(gen):
    size = (10, 12)
    _, _, y, k2, r2, y2, *_ = problem(size, "laplacian", gen, planes=4)
    y2 = y2.reshape(2, 2, *y2.shape[-2:])
    for rule in ("gcv", "discrepancy", "lcurve", "risk"):
        e, _ = pc.choose_eps(k2, r2, y2, rule, size=size, noise_std=0.02)
        assert e.shape == (2, 2)
        for i in range(2):
            for j in range(2):
                ej, _ = pc.choose_eps(k2, r2, y2[i, j], rule, size=size, noise_std=0.02)
                torch.testing.assert_close(e[i, j], ej, rtol=1e-12, atol=0)
    # per="sample": two identical channels give the plane's GCV choice ...
    twin = torch.stack([y2[0, 0], y2[0, 0]])
    e2, g2 = pc.choose_eps(k2, r2, twin, "gcv", size=size, per="sample")
    e1, g1 = pc.choose_eps(k2, r2, y2[0, 0], "gcv", size=size)
    assert e2.shape == ()
    torch.testing.assert_close(e2, e1, rtol=1e-6, atol=0)
    torch.testing.assert_close(g2, g1, rtol=1e-6, atol=0)
    # ... and different channels the GCV of the summed residual and trace.
    e, g = pc.choose_eps(k2, r2, y2, "gcv", size=size, per="sample")
    assert e.shape == (2,)
    for i in range(2):
        T = pc.spectral_terms(k2, r2, y2[i], e[i], size=size)
        n = 2 * size[0] * size[1]
        torch.testing.assert_close(g[i], n * T.residual.sum() / T.dof.sum() ** 2, rtol=1e-10,
                                   atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_no_nan_on_hard_spectra(dtype, scale, gen):
    """Exact zeros of |K|^2 (box PSF), |R|^2 = 0 at DC, extreme scales: finite choices."""
    size = (16, 20)
    psf = dx.box(4, dtype=D)  # even box: exact zeros in its spectrum
    x = torch.rand(2, *size, dtype=D, generator=gen)
    y = (ref.convolve(x, psf) + 1e-2 * torch.randn(2, *size, dtype=D, generator=gen)) * scale
    k2 = half(psf, size).to(dtype)
    y2 = (torch.fft.rfft2(y).abs() ** 2).to(dtype)
    for r2 in (None, half(LAP, size).to(dtype)):
        for rule in ("gcv", "upre", "risk", "discrepancy", "lcurve"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                e, o = pc.choose_eps(k2, r2, y2, rule, size=size)
            assert torch.isfinite(e).all() and (e > 0).all(), (rule, e)
            assert torch.isfinite(o).all(), (rule, o)


def test_flat_objective_falls_back_with_a_warning():
    size = (8, 8)
    k2 = half(dx.gaussian(1.0, dtype=D), size)
    r2 = half(LAP, size)
    zero = torch.zeros(3, 8, 5, dtype=D)
    const = torch.zeros(8, 5, dtype=D)
    const[0, 0] = 64.0 ** 2  # a constant image: only DC, where |R|^2 = 0
    for y2, r in ((zero, None), (zero, r2), (const, r2)):
        for rule in ("gcv", "discrepancy", "lcurve", "risk", "upre"):
            with pytest.warns(RuntimeWarning, match="eps=0.01"):
                e, _ = pc.choose_eps(k2, r, y2, rule, size=size, noise_std=0.1)
            assert torch.all(e == pc.FALLBACK_EPS)
    with pytest.warns(RuntimeWarning, match="eps=0.5"):
        e, _ = pc.choose_eps(k2, r2, zero, "gcv", size=size, fallback_eps=0.5)
    assert torch.all(e == 0.5)


def test_discrepancy_out_of_range_warns():
    size = (8, 8)
    k2 = half(dx.gaussian(1.0, dtype=D), size)
    y2 = torch.ones(8, 5, dtype=D)
    with pytest.warns(RuntimeWarning, match="discrepancy"):
        e, _ = pc.choose_eps(k2, None, y2, "discrepancy", size=size, noise_std=1e3)
    assert torch.isfinite(e) and e > 0


def test_bad_input():
    size = (8, 8)
    k2 = torch.ones(8, 5, dtype=D)
    y2 = torch.ones(8, 5, dtype=D)
    with pytest.raises(ValueError, match="rule='gvc'.*'gcv', 'upre', 'risk', 'discrepancy', "
                                         "'lcurve'"):
        pc.choose_eps(k2, None, y2, "gvc", size=size)
    for bad in (-1.0, 0.0, float("nan"), float("inf"), torch.tensor(-0.1)):
        with pytest.raises(ValueError, match="noise_std"):
            pc.choose_eps(k2, None, y2, "discrepancy", size=size, noise_std=bad)
    with pytest.raises(ValueError, match="y2 has shape"):
        pc.choose_eps(k2, None, y2, "gcv", size=(8, 10))
    with pytest.raises(ValueError, match="size="):
        pc.choose_eps(k2, None, y2, "gcv", size=(8,))
    with pytest.raises(ValueError, match="k2 has negative"):
        pc.choose_eps(-k2, None, y2, "gcv", size=size)
    with pytest.raises(ValueError, match="y2 contains NaN"):
        pc.choose_eps(k2, None, y2 * float("nan"), "gcv", size=size)
    with pytest.raises(TypeError, match="r2"):
        pc.choose_eps(k2, torch.ones(8, 5, dtype=torch.complex128), y2, "gcv", size=size)
    with pytest.raises(ValueError, match="per='channel'.*'plane', 'sample'"):
        pc.choose_eps(k2, None, y2, "gcv", size=size, per="channel")
    with pytest.raises(ValueError, match="broadcast"):
        pc.choose_eps(torch.ones(3, 5, dtype=D), None, y2, "gcv", size=size)
    with pytest.raises(ValueError, match="tau"):
        pc.choose_eps(k2, None, y2, "discrepancy", size=size, noise_std=0.1, tau=-1)
    with pytest.raises(ValueError, match="eps_range"):
        pc.choose_eps(k2, None, y2, "gcv", size=size, eps_range=(1.0, 0.1))


# ---------------------------------------------------------------------------
# Multi-channel layers (per-frequency SVD)
# ---------------------------------------------------------------------------

def dense_layer(weight, size):
    c_in = weight.shape[1]
    H, W = size
    eye = torch.eye(c_in * H * W, dtype=D)
    return torch.stack([ref.conv2d_forward(e.reshape(1, c_in, H, W), weight).reshape(-1)
                        for e in eye], 1)


@pytest.mark.parametrize("c_out,c_in", [(3, 2), (2, 3), (2, 2)])
def test_svd_gcv_matches_dense_layer(c_out, c_in, gen):
    size = (5, 6)
    H, W = size
    # Positive (low-pass) weights and strong noise: an interior GCV minimum.
    weight = torch.rand(c_out, c_in, 3, 3, dtype=D, generator=gen)
    x = torch.randn(2, c_in, H, W, dtype=D, generator=gen)
    y = ref.conv2d_forward(x, weight) + 1.0 * torch.randn(2, c_out, H, W, dtype=D, generator=gen)
    K = ref.layer_transfer_matrix(weight, size)[:, : W // 2 + 1]       # (H, Wf, Co, Ci)
    s2, yp, yperp = pc.svd_power(K, torch.fft.rfft2(y))
    eps, obj = pc.choose_eps_svd(s2, yp, "gcv", size=size, n_out=c_out, y2_perp=yperp,
                                 rtol=1e-5)
    A = dense_layer(weight, size)
    for b in range(2):
        yb = y[b].reshape(-1)

        def gcv(e):
            M = A @ torch.linalg.solve(A.T @ A + e * torch.eye(A.shape[1], dtype=D), A.T)
            r = yb - M @ yb
            return float(yb.numel() * (r @ r) / (yb.numel() - torch.trace(M)) ** 2)

        e = float(eps[b])
        assert abs(float(obj[b]) - gcv(e)) <= 1e-8 * gcv(e)
        assert gcv(e) <= gcv(e * 1.01) and gcv(e) <= gcv(e / 1.01)


def test_svd_single_channel_equals_circulant(gen):
    size = (9, 8)
    _, _, y, k2, _, y2, *_ = problem(size, None, gen)
    s2 = k2[..., None]
    for rule in ("gcv", "discrepancy", "lcurve"):
        e1, o1 = pc.choose_eps(k2, None, y2, rule, size=size, noise_std=0.02)
        e2, o2 = pc.choose_eps_svd(s2, y2[..., None], rule, size=size, n_out=1, noise_std=0.02)
        torch.testing.assert_close(e1, e2, rtol=1e-12, atol=0)
        torch.testing.assert_close(o1, o2, rtol=1e-12, atol=0)


def test_svd_bad_input():
    s2 = torch.ones(4, 3, 2, dtype=D)
    with pytest.raises(ValueError, match="n_out"):
        pc.choose_eps_svd(s2, s2, "gcv", size=(4, 4), n_out=1)
    with pytest.raises(ValueError, match="rule="):
        pc.choose_eps_svd(s2, s2, "bic", size=(4, 4), n_out=2)


# ---------------------------------------------------------------------------
# The padded fast path (real edges)
# ---------------------------------------------------------------------------

def real_edge_case(gen, n=96, margin=16, sigma=1e-2):
    from skimage.data import camera
    from skimage.transform import resize

    big = torch.from_numpy(resize(camera() / 255.0, (n + 2 * margin,) * 2, anti_aliasing=True))
    psf = dx.gaussian(1.5, dtype=D)
    blurred = ref.convolve(big, psf)[margin:margin + n, margin:margin + n]
    truth = big[margin:margin + n, margin:margin + n]
    return psf, truth, blurred + sigma * torch.randn(n, n, dtype=D, generator=gen)


def test_padded_choice_accounts_for_the_edges(gen):
    """On a blurred-then-cropped scene the windowed rule lands near the best eps;
    the same rule on the padded spectrum picks a far smaller eps (edge error fit)."""
    psf, truth, y = real_edge_case(gen)
    plan = dx.DeconvPlan(psf, y.shape, boundary="symmetric", dtype=D)
    geo = plan.geometry
    k2, r2 = half(psf, geo.fft_size), half(LAP, geo.fft_size)

    def psnr(e):
        x = dx.deconvolve(y, psf, eps=float(e), reg="laplacian", boundary="symmetric")
        return -10 * math.log10(float(((x - truth) ** 2).mean()))

    best = max(psnr(e) for e in np.logspace(-6, 0, 37))
    e_win, o = pc.choose_eps_padded(y, plan.spectrum, r2, geo, "gcv", psf_size=tuple(psf.shape))
    assert e_win.shape == () and torch.isfinite(o)
    assert best - psnr(e_win) < 1.0
    from deconv_ext.maths.padding import pad as pad_torch

    buf = pad_torch(y, geo.top, geo.left, *geo.fft_size, "symmetric")
    e_pad, _ = pc.choose_eps(k2, r2, torch.fft.rfft2(buf).abs() ** 2, "gcv", size=geo.fft_size)
    assert e_pad < e_win / 3


def test_padded_batch_and_noise_scaling(gen):
    """Per-plane results equal single-plane ones; the noise level is rescaled
    to the window, so a known sigma and its estimate give similar choices."""
    psf, _, y = real_edge_case(gen, n=64)
    ys = torch.stack([y, y.flip(-1)])
    plan = dx.DeconvPlan(psf, y.shape, boundary="symmetric", dtype=D)
    geo = plan.geometry
    K = plan.spectrum
    for rule in ("discrepancy", "auto"):
        e, _ = pc.choose_eps_padded(ys, K, None, geo, rule, psf_size=(9, 9))
        e0, _ = pc.choose_eps_padded(y, K, None, geo, rule, psf_size=(9, 9))
        torch.testing.assert_close(e[0], e0, rtol=1e-12, atol=0)
        ek, _ = pc.choose_eps_padded(y, K, None, geo, rule, psf_size=(9, 9), noise_std=1e-2)
        assert 0.2 < float(ek / e0) < 5
    with pytest.raises(ValueError, match="taper"):
        pc.choose_eps_padded(y, K, None, geo, "gcv", psf_size=(9, 9), taper=0)
    with pytest.raises(TypeError, match="complex half spectrum"):
        pc.choose_eps_padded(y, K.abs() ** 2, None, geo, "gcv", psf_size=(9, 9))


@pytest.mark.parametrize("size, psf_shape", [((40, 53), (7, 5)), ((33, 32), (4, 6))])
def test_consistency_spectrum_is_the_pixel_residual_of_the_extended_crop(gen, size, psf_shape):
    """``E`` against pixels: ``b - K (*) extend(crop(x0))`` with the reference
    circular blur (its own centring) and x0 from the reference Tikhonov solve."""
    from deconv_ext.maths.padding import pad as pad_torch

    y = torch.rand(*size, dtype=D, generator=gen) + 0.5
    psf = torch.rand(*psf_shape, dtype=D, generator=gen)
    plan = dx.DeconvPlan(psf, size, boundary="symmetric", eps="auto", dtype=D)
    g = plan.geometry
    Nh, Nw = g.fft_size

    def extend(z):
        return pad_torch(z, g.top, g.left, Nh, Nw, "symmetric")

    b = extend(y)
    eps = 3e-2
    E = pc.consistency_spectrum(torch.fft.rfft2(b), plan.spectrum, torch.full((), eps, dtype=D),
                                g, extend)
    x0 = ref.deconvolve(b, psf, eps, rcond=0.0)
    crop = x0[g.top:g.top + g.height, g.left:g.left + g.width]
    want = b - ref.convolve(extend(crop), psf)
    torch.testing.assert_close(torch.fft.irfft2(E, s=(Nh, Nw)), want, rtol=0, atol=1e-12)


def test_a_delta_psf_leaves_only_the_regularisers_shrinkage(gen):
    # K = 1: x0 = b / (1 + eps) is its own extension, so E = eps / (1 + eps) b.
    y = torch.rand(20, 17, dtype=D, generator=gen)
    delta = torch.zeros(3, 3, dtype=D)
    delta[1, 1] = 1
    plan = dx.DeconvPlan(delta, y.shape, boundary="reflect", eps="auto", dtype=D)
    g = plan.geometry
    from deconv_ext.maths.padding import pad as pad_torch

    def extend(z):
        return pad_torch(z, g.top, g.left, *g.fft_size, "reflect")

    B = torch.fft.rfft2(extend(y))
    E = pc.consistency_spectrum(B, plan.spectrum, torch.full((), 0.25, dtype=D), g, extend)
    torch.testing.assert_close(E, B * (0.25 / 1.25), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reg", [None, "laplacian"])
@pytest.mark.parametrize("psf_name", ["gaussian", "motion"])
def test_auto_on_real_edges_lands_near_the_best_eps(gen, reg, psf_name):
    """eps="auto" on a blurred-then-cropped scene, against a dense sweep of eps."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    n, margin, sigma = 96, 16, 1e-2
    big = torch.from_numpy(resize(skimage_data.coins() / 255.0, (n + 2 * margin,) * 2,
                                  anti_aliasing=True))
    psf = dx.gaussian(1.5, dtype=D) if psf_name == "gaussian" else dx.motion(9, 30, dtype=D)
    truth = big[margin:margin + n, margin:margin + n]
    y = ref.convolve(big, psf)[margin:margin + n, margin:margin + n]
    y = y + sigma * torch.randn(n, n, dtype=D, generator=gen)

    def psnr(x):
        return -10 * math.log10(float(((x - truth) ** 2).mean()))

    best = max(psnr(dx.deconvolve(y, psf, eps=float(e), reg=reg, boundary="symmetric"))
               for e in np.logspace(-6, 1, 57))
    x, info = dx.deconvolve(y, psf, eps="auto", reg=reg, boundary="symmetric", return_info=True)
    assert info.rule == pc.EDGE_RISK and torch.isfinite(info.objective)
    assert best - psnr(x) < 1.0, (best, psnr(x), float(info.eps))


def test_the_padded_choice_kernels_follow_the_reference(gen):
    """The routed C++ searches and binning give the reference's choice."""
    from deconv_ext import execution

    psf, _, y = real_edge_case(gen, n=64)
    ys = torch.stack([y, y.flip(-1), y.flip(-2)])
    for reg in (None, "laplacian"):
        plan = dx.DeconvPlan(psf, y.shape, boundary="symmetric", eps="auto", reg=reg, dtype=D)
        from deconv_ext.plans import padded

        def extend(z):
            return padded.extend(plan, z)

        Y = torch.fft.rfft2(extend(ys))
        for rule in ("auto", "gcv", "discrepancy"):
            got, want = (pc.choose_padded_from_bins(
                plan._bins, plan._prior_bins, ys, Y, plan.spectrum, plan._reg_power, rule,
                geometry=plan.geometry, psf_size=tuple(psf.shape), extend=extend, gdims=2,
                kernels=k) for k in (execution.RULE_KERNELS, pc.REFERENCE))
            torch.testing.assert_close(got.eps, want.eps, rtol=1e-6, atol=0)
            torch.testing.assert_close(got.objective, want.objective, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# Noise estimate
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(13, 17), (64, 64), (31, 40), (2, 2), (5, 3)])
def test_estimate_noise_matches_skimage(shape, gen):
    pytest.importorskip("pywt")
    from skimage.restoration import estimate_sigma

    x = torch.rand(*shape, dtype=D, generator=gen) * 0.2 + torch.linspace(0, 1, shape[-1],
                                                                            dtype=D)
    ours = estimate_noise(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about small last axes
        theirs = estimate_sigma(x.numpy())
    assert abs(float(ours) - theirs) <= 1e-12 * max(theirs, 1e-300)


def test_estimate_noise_planes_and_accuracy(gen):
    pytest.importorskip("pywt")
    from skimage.data import camera
    from skimage.restoration import estimate_sigma

    im = torch.from_numpy(camera()[:128, :160] / 255.0)
    sig = torch.tensor([1e-2, 3e-2, 1e-1], dtype=D)
    y = ref.convolve(im, dx.gaussian(2.0, dtype=D)) + sig[:, None, None] * torch.randn(
        3, 128, 160, dtype=D, generator=gen)
    est = estimate_noise(y.float().reshape(3, 1, 128, 160))
    assert est.shape == (3, 1) and est.dtype == D
    for i in range(3):
        assert abs(float(est[i, 0]) - estimate_sigma(y[i].float().numpy().astype(np.float64))) \
            <= 1e-6 * float(est[i, 0])
    assert torch.allclose(est[:, 0], sig, rtol=0.15)
    # the spectral estimate on the same data is in the same range
    k2 = half(dx.gaussian(2.0, dtype=D), (128, 160))
    spec = estimate_noise_spectrum(k2, torch.fft.rfft2(y).abs() ** 2, (128, 160))
    assert torch.allclose(spec, sig, rtol=0.25)


def test_estimate_noise_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        estimate_noise(torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="H, W >= 2"):
        estimate_noise(torch.ones(1, 5))
    with pytest.raises(TypeError):
        estimate_noise(np.ones((4, 4)))
    with pytest.raises(ValueError, match="floating"):
        estimate_noise(torch.ones(4, 4, dtype=torch.int64))


def test_identity_bins_do_not_hold_a_full_size_copy_of_the_weights(gen):
    # A padded 2048^2 plan with reg=None held c / |R|^2 = c at every
    # frequency (17 MB), which pushed it past the plan cache's size limit:
    # every one-shot call rebuilt it (2 s). The identity keeps c as is.
    k2 = torch.rand(64, 33, generator=gen, dtype=torch.float64) + 0.1
    w = pc.half_spectrum_weights(64)
    identity = pc.RuleBins(k2, None, w, n_pix=64 * 64, risk=True)
    ones = pc.RuleBins(k2, torch.ones_like(k2), w, n_pix=64 * 64, risk=True)
    assert identity.nbytes < ones.nbytes - k2.numel() * 8 // 2
    y2 = torch.rand(3, 64, 33, generator=gen, dtype=torch.float64)
    a, _ = identity.spectra(y2, 2, risk=True)
    b, _ = ones.spectra(y2, 2, risk=True)
    for name in ("wr", "wry", "wy", "wa"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-13, atol=0)


def test_estimate_noise_is_public_and_matches_skimage(gen):
    restoration = pytest.importorskip("skimage.restoration")
    pytest.importorskip("pywt")
    x = dx.convolve(torch.rand(2, 45, 38, generator=gen, dtype=torch.float64), dx.gaussian(1.5))
    y = x + 0.03 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    got = dx.estimate_noise(y)
    assert got.shape == (2,)
    for i in range(2):
        want = restoration.estimate_sigma(y[i].numpy())
        assert abs(float(got[i]) - want) <= 1e-12 * want
    assert abs(float(got.mean()) - 0.03) < 0.006
