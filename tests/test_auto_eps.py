"""eps chosen by a rule (eps="gcv", "auto", ...) through the public API.

The rules' maths are tested in test_parameter_choice.py; here: the wiring.
A rule's eps, fed back as a float, gives the same image; the GCV choice
minimises an independent GCV computed with the reference solve in pixel
space; per-plane and per-sample choices; the padded path; bad input.
"""
from __future__ import annotations

import pytest
import torch

import deconv_ext as dx
from deconv_ext import reference

F64 = torch.float64


def _blurred(gen, shape=(2, 3, 48, 41), sigma=0.01):
    x = torch.rand(shape, generator=gen, dtype=F64)
    psf = dx.gaussian(1.5).to(F64)
    y = dx.convolve(x, psf) + sigma * torch.randn(shape, generator=gen, dtype=F64)
    return x, psf, y


def _gcv_pixel_space(y, psf, eps):
    """N ||y - A x_eps||^2 / (N - trace(A A_eps^+))^2, x_eps from the reference solve."""
    H, W = y.shape[-2:]
    x = reference.deconvolve(y, psf, eps=eps)
    r = float(((y - reference.convolve(x, psf)) ** 2).sum())
    k2 = reference.psf_transfer(psf, (H, W)).abs() ** 2
    trace = float((k2 / (k2 + eps)).sum())
    n = H * W
    return n * r / (n - trace) ** 2


def test_a_rule_eps_fed_back_as_a_float_gives_the_same_image(gen):
    _, psf, y = _blurred(gen)
    out, info = dx.deconvolve(y, psf, eps="gcv", return_info=True)
    assert info.rule == "gcv" and info.eps.shape == y.shape[:-2]
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            again = dx.deconvolve(y[i, j], psf, eps=float(info.eps[i, j]))
            torch.testing.assert_close(out[i, j], again, rtol=0, atol=1e-12)


def test_gcv_minimises_an_independent_gcv(gen):
    _, psf, y = _blurred(gen, shape=(37, 44), sigma=0.02)
    _, info = dx.deconvolve(y, psf, eps="gcv", return_info=True)
    chosen = float(info.eps)
    grid = torch.logspace(-7, 1, 161, dtype=F64).tolist()
    best = min(_gcv_pixel_space(y, psf, e) for e in grid)
    assert _gcv_pixel_space(y, psf, chosen) <= best * (1 + 1e-3)


def test_per_sample_choice_shares_eps_over_channels(gen):
    _, psf, y = _blurred(gen)
    _, info = dx.deconvolve(y, psf, eps="auto", reg="laplacian", eps_per="sample",
                            return_info=True)
    assert info.eps.shape == (y.shape[0],) and bool((info.eps > 0).all())


def test_the_automatic_choice_beats_the_blurred_input(gen):
    x, psf, y = _blurred(gen, shape=(1, 96, 80), sigma=0.005)

    def psnr(a):
        return float(-10 * torch.log10(((a - x) ** 2).mean()))

    for boundary in ("circular", "reflect"):
        blurred = y if boundary == "circular" else (
            dx.convolve(x, psf, boundary=boundary) + 0.005 * torch.randn(x.shape, generator=gen,
                                                                      dtype=F64))
        restored = dx.deconvolve(blurred, psf, eps="auto", boundary=boundary)
        assert torch.isfinite(restored).all()
        assert psnr(restored) > psnr(blurred), boundary


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_image_gives_zeros_with_the_fallback_eps(dtype):
    with pytest.warns(RuntimeWarning, match="does not determine eps"):
        out = dx.deconvolve(torch.zeros(20, 22, dtype=dtype), dx.gaussian(1.0), eps="gcv")
    assert out.dtype == dtype and bool((out == 0).all())
    # The padded path: the flat prior warns in the words of the rule that ran.
    with pytest.warns(RuntimeWarning, match="edge-risk prior"):
        out, info = dx.deconvolve(torch.zeros(20, 22, dtype=dtype), dx.gaussian(1.0), eps="auto",
                                  boundary="reflect", return_info=True)
    assert out.dtype == dtype and bool((out == 0).all()) and float(info.eps) == pc.FALLBACK_EPS


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps="bogus"), "'gcv'"),
    (dict(eps="gcv", method="pinv"), "method='pinv'"),
    (dict(eps="discrepancy", noise_std=-1.0), "noise_std"),
    (dict(eps="discrepancy", noise_std=float("nan")), "noise_std"),
    (dict(eps=1e-2, noise_std=0.1), "noise_std"),
    (dict(eps="gcv", solver="cg", boundary="reflect"), "solver='cg'"),
])
def test_bad_rule_arguments_are_clear_errors(gen, kwargs, match):
    _, psf, y = _blurred(gen, shape=(20, 21))
    with pytest.raises(ValueError, match=match):
        dx.deconvolve(y, psf, **kwargs)


def test_a_noise_free_observation_with_real_edges_is_not_ringing_apart():
    # A larger natural scene blurred without noise, then cropped: the rule's
    # window sees almost no noise, and the prior used to be scaled by that
    # noise (~1e-9): eps came out ~1e-8 and the result was at -22 dB.
    skimage_data = pytest.importorskip("skimage.data")
    scene = torch.from_numpy(skimage_data.camera()[100:260, 180:340].astype("float64") / 255)
    psf = dx.gaussian(2.0).to(F64)
    m = 16
    truth = scene[m:-m, m:-m]
    y = dx.convolve(scene, psf, boundary="circular")[m:-m, m:-m].contiguous()

    def psnr(a):
        return float(-10 * torch.log10(((a - truth) ** 2).mean()))

    restored, info = dx.deconvolve(y, psf, eps="auto", boundary="symmetric", return_info=True)
    assert psnr(restored) > psnr(y) + 1.0, (psnr(restored), psnr(y), float(info.eps))
    # The edge-aware risk's inconsistency is measured from a solve whose gain
    # is bounded (pc.EDGE_GAIN): from the noise-free prior's eps (~1e-12) it
    # came out 1e4 times too large, and so did eps (PSNR 18 dB with the Laplacian).
    restored, info = dx.deconvolve(y, psf, eps="auto", reg="laplacian", boundary="symmetric",
                                   return_info=True)
    assert psnr(restored) > psnr(y), (psnr(restored), psnr(y), float(info.eps))


# ---------------------------------------------------------------------------
# Multi-channel layers: conv2d_pinv / DeconvPlan.for_conv2d with eps=<rule>
# ---------------------------------------------------------------------------

from oracles import conv2d_circular, dense_layer_operator  # noqa: E402

from deconv_ext.maths import parameter_choice as pc  # noqa: E402

# (C_out, C_in, groups, (H, W)): more outputs than inputs (an out-of-range
# residual), fewer (a null space), grouped, and depthwise (the element-wise plan).
LAYERS = [(3, 2, 1, (6, 7)), (2, 3, 1, (7, 6)), (4, 2, 2, (5, 8)), (3, 3, 3, (6, 5))]


def _layer_case(gen, c_out, c_in, groups, size, batch=3, dtype=F64, sigma=None):
    H, W = size
    # Positive (low-pass) weights and noise of several levels: an interior
    # GCV minimum, a different eps per sample.
    weight = torch.rand(c_out, c_in // groups, 3, 3, dtype=dtype, generator=gen)
    bias = torch.randn(c_out, dtype=dtype, generator=gen)
    x = torch.randn(batch, c_in, H, W, dtype=dtype, generator=gen)
    if sigma is None:
        sigma = torch.logspace(-1.5, 0, batch, dtype=dtype)[:, None, None, None]
    y = (conv2d_circular(x, weight, bias, groups=groups)
         + sigma * torch.randn(batch, c_out, H, W, dtype=dtype, generator=gen))
    return weight, bias, y


def _dense_terms(A, yb, e):
    """(||(I - H) y||^2, trace(I - H)) with H = A (A^T A + e I)^-1 A^T, the influence matrix.

    ``I - H = e (A A^T + e I)^-1`` (push-through identity): no cancellation
    where H is close to I (small e), which ``y - H y`` would suffer.
    """
    Minv = torch.linalg.inv(A @ A.T + e * torch.eye(A.shape[0], dtype=F64))
    r = e * (Minv @ yb)
    return float(r @ r), float(e * torch.trace(Minv))


def _dense_gcv(A, yb, e):
    res, dof = _dense_terms(A, yb, e)
    return A.shape[0] * res / dof ** 2


def _dense_gcv_grid(A, yb, grid):
    """The dense GCV on a grid of eps, from one eigendecomposition of A A^T."""
    lam, Q = torch.linalg.eigh(A @ A.T)
    z2 = (Q.T @ yb) ** 2
    e = torch.tensor(grid, dtype=F64)[:, None]
    g = e / (lam.clamp(min=0)[None, :] + e)           # eigenvalues of I - H
    return (A.shape[0] * (g * g * z2).sum(1) / g.sum(1) ** 2).tolist()


@pytest.mark.parametrize("c_out,c_in,groups,size", LAYERS)
def test_layer_gcv_is_the_dense_gcv_and_the_choice_minimises_it(gen, c_out, c_in, groups, size):
    weight, bias, y = _layer_case(gen, c_out, c_in, groups, size)
    x, info = dx.conv2d_pinv(y, weight, bias, groups=groups, eps="gcv", return_info=True)
    assert info.rule == "gcv" and info.eps.shape == (y.shape[0],)
    assert len(set(info.eps.tolist())) == y.shape[0]          # each sample its own eps
    A = dense_layer_operator(weight, size, groups=groups)
    s = torch.linalg.svdvals(A)
    # The search range: where some filter factor s^2 / (s^2 + eps) is not within
    # 1 % of 0 or 1 (parameter_choice, "Minimisation").
    lo, hi = max(float(s[-1]) ** 2 / 100, 1e-14 * float(s[0]) ** 2), 100 * float(s[0]) ** 2
    grid = torch.logspace(-7, 4, 1101, dtype=F64).tolist()
    for b in range(y.shape[0]):
        yb = (y[b] - bias[:, None, None]).reshape(-1)
        e = float(info.eps[b])
        dense = _dense_gcv(A, yb, e)
        assert abs(float(info.objective[b]) - dense) <= 1e-10 * dense
        values = _dense_gcv_grid(A, yb, grid)
        assert dense <= min(v for g, v in zip(grid, values) if lo <= g <= hi) * (1 + 1e-4)
        if grid[values.index(min(values))] < lo:
            # Little noise: GCV decreases all the way to its limit at eps -> 0
            # (the pseudo-inverse), which the end of the range stands for.
            assert e < 1.5 * lo
            assert dense <= min(values) * 1.01


@pytest.mark.parametrize("c_out,c_in,groups,size", LAYERS[:3])
def test_layer_gcv_objective_at_several_eps_is_the_dense_one(gen, c_out, c_in, groups, size):
    """The closed-form sums on the half spectrum (mirrored columns weighted) against the
    influence matrix of the dense operator, at eps far from the minimum too."""
    weight, bias, y = _layer_case(gen, c_out, c_in, groups, size, batch=2)
    H, W = size
    M, N = c_out // groups, c_in // groups
    from deconv_ext.reference import layer_transfer_matrix
    K = layer_transfer_matrix(weight, size, groups=groups)[:, : W // 2 + 1]  # (H, Wf, Co, Ci)
    Yf = torch.fft.rfft2(y - bias[:, None, None])
    parts = [pc.svd_power(K[..., g * M:(g + 1) * M, g * N:(g + 1) * N],
                          Yf[:, g * M:(g + 1) * M]) for g in range(groups)]
    s2 = torch.cat([p[0] for p in parts], -1)
    yp = torch.cat([p[1] for p in parts], -1)
    yperp = sum(p[2] for p in parts)
    eps = torch.logspace(-4, 2, 7, dtype=F64)
    obj = pc.rule_objective_svd(s2, yp, "gcv", eps, size=size, n_out=c_out, y2_perp=yperp)
    A = dense_layer_operator(weight, size, groups=groups)
    for b in range(y.shape[0]):
        yb = (y[b] - bias[:, None, None]).reshape(-1)
        for j, e in enumerate(eps.tolist()):
            dense = _dense_gcv(A, yb, e)
            assert abs(float(obj[b, j]) - dense) <= 1e-10 * dense


def test_layer_discrepancy_matches_the_dense_residual(gen):
    sigma = 0.3
    weight, bias, y = _layer_case(gen, 3, 2, 1, (6, 7), batch=2, sigma=sigma)
    _, info = dx.conv2d_pinv(y, weight, bias, eps="discrepancy", noise_std=sigma,
                             return_info=True)
    A = dense_layer_operator(weight, (6, 7))
    for b in range(2):
        yb = (y[b] - bias[:, None, None]).reshape(-1)
        res, _ = _dense_terms(A, yb, float(info.eps[b]))
        # The residual matched to tau N s^2 (Morozov's safety factor).
        ratio = res / (pc.DISCREPANCY_TAU * A.shape[0] * sigma ** 2)
        assert abs(float(info.objective[b]) - ratio) <= 1e-10 * ratio
        assert abs(ratio - 1) < 2e-2          # the root, to the search's rtol in eps


@pytest.mark.parametrize("rule", ["gcv", "discrepancy", "lcurve", "upre", "risk", "auto"])
def test_every_layer_rule_fed_back_as_a_float_gives_the_same_output(gen, rule):
    weight, bias, y = _layer_case(gen, 3, 2, 1, (6, 7), batch=2)
    x, info = dx.conv2d_pinv(y, weight, bias, eps=rule, return_info=True)
    assert info.rule == ("discrepancy" if rule == "auto" else rule)
    assert bool(torch.isfinite(info.eps).all()) and bool((info.eps > 0).all())
    assert (info.noise_std is None) == (rule in ("gcv", "lcurve"))
    assert bool((info.residual < 1e-10).all())            # the direct solve's normal equations
    for b in range(2):
        again = dx.conv2d_pinv(y[b], weight, bias, eps=float(info.eps[b]))
        torch.testing.assert_close(x[b], again, rtol=0, atol=1e-10)


def test_layer_plan_with_a_rule_stored_matrix_free_and_pickled_agree(gen):
    import pickle

    weight, bias, y = _layer_case(gen, 3, 2, 1, (6, 7), batch=2)
    stored = dx.LayerPlan(weight, (6, 7), bias=bias, eps="gcv")
    free = dx.LayerPlan(weight, (6, 7), bias=bias, eps="gcv", max_filter_bytes=0)
    assert (stored.mode, free.mode) == ("filter", "matrix_free")
    x1, c1 = stored(y, return_info=True)
    x2, c2 = free(y, return_info=True)
    x3, c3 = pickle.loads(pickle.dumps(stored))(y, return_info=True)
    via = dx.DeconvPlan.for_conv2d(weight, (6, 7), bias=bias, eps="gcv")
    x4 = via(y)
    for x, c in ((x2, c2), (x3, c3), (x4, via.last_choice)):
        torch.testing.assert_close(x, x1, rtol=0, atol=1e-12)
        torch.testing.assert_close(c.eps, c1.eps, rtol=1e-12, atol=0)
    assert stored.last_choice is not None and c1.per == "sample"


def test_layer_rule_unbatched_float32_and_gradient(gen):
    weight, bias, y = _layer_case(gen, 3, 2, 1, (6, 7), batch=1)
    x64, c64 = dx.LayerPlan(weight, (6, 7), eps="gcv")(y[0], return_info=True)
    assert c64.eps.shape == () and x64.shape == (2, 6, 7)
    x32, c32 = dx.LayerPlan(weight.float(), (6, 7), eps="gcv")(y[0].float(), return_info=True)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(c32.eps, c64.eps, rtol=1e-3, atol=0)
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)
    # The chosen eps is held constant: the gradient is the fixed-eps solve's.
    yy = y.clone().requires_grad_(True)
    out, info = dx.conv2d_pinv(yy, weight, eps="gcv", return_info=True)
    out.square().sum().backward()
    yf = y.clone().requires_grad_(True)
    dx.conv2d_pinv(yf, weight, eps=float(info.eps[0])).square().sum().backward()
    torch.testing.assert_close(yy.grad, yf.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(eps="bogus"), ValueError, "'gcv'"),
    (dict(eps="gcv", solver="cg"), ValueError, "solver='cg'"),
    (dict(eps="gcv", padding_mode="zeros"), ValueError, "circular 'same'"),
    (dict(eps="gcv", padding="valid"), ValueError, "circular 'same'"),
    (dict(eps="discrepancy", noise_std=-1.0), ValueError, "noise_std"),
    (dict(eps="discrepancy", noise_std=torch.ones(5, dtype=F64)), ValueError, "noise_std"),
    (dict(eps=1e-2, noise_std=0.1), ValueError, "noise_std"),
    (dict(eps=torch.ones(1)), TypeError, "scalar eps"),
])
def test_bad_layer_rule_arguments_are_clear_errors(gen, kwargs, err, match):
    weight, _, y = _layer_case(gen, 3, 2, 1, (6, 7), batch=2)
    with pytest.raises(err, match=match):
        dx.conv2d_pinv(y, weight, **kwargs)


def test_a_fixed_eps_layer_plan_has_no_choice_to_return(gen):
    weight, _, y = _layer_case(gen, 3, 2, 1, (6, 7), batch=1)
    with pytest.raises(ValueError, match="return_info"):
        dx.LayerPlan(weight, (6, 7), eps=1e-2)(y, return_info=True)
    with pytest.raises(ValueError, match="'gcv'"):
        dx.DeconvPlan.for_conv2d(weight, (6, 7), eps="gvc")
