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
