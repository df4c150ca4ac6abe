"""Every route of the execution layer against the pure-torch reference, on the same inputs.

The routes (deconv_ext/execution/routes.py): the dispatcher ("ops", taken
under autograd), the C++ pipeline called directly, scipy.fft, FFTW (when
installed), the shipped default ``DECONV_EXT_CPU_FFT=auto`` (measured, with a
scratch cache), and the Triton interpreter (``DECONV_EXT_KERNELS=triton`` on
a CPU-only machine).
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

import deconv_ext as dx
from deconv_ext import config, execution, reference
from deconv_ext.execution import fft_choice
from deconv_ext.plans import cache as plan_cache
from oracles import rel_err

F64 = torch.float64
ROUTES = ["ops", "pipeline", "scipy", "pyfftw", "auto", "interpreter"]


@pytest.fixture
def route_config(request, monkeypatch, tmp_path):
    """Configure deconv_ext for one route; returns whether inputs must require grad."""
    name = request.param
    env = {"XDG_CACHE_HOME": str(tmp_path), "DECONV_EXT_CPU_FFT": "pipeline"}
    if name in ("scipy", "pyfftw", "auto"):
        env["DECONV_EXT_CPU_FFT"] = name
    if name == "pyfftw" and importlib.util.find_spec("pyfftw") is None:
        pytest.skip("pyFFTW (GPL) is not installed")
    if name == "interpreter":
        if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
            pytest.skip("the Triton interpreter route needs Triton and no CUDA device")
        env["DECONV_EXT_KERNELS"] = "triton"
    monkeypatch.setattr(config, "_current", config.from_environment(env))
    monkeypatch.setattr(fft_choice, "_choices", {})
    monkeypatch.setattr(fft_choice, "_loaded_from", None)
    plan_cache.clear()
    yield name
    plan_cache.clear()


def _inputs(requires_grad: bool, shape=(2, 13, 10)):
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(*shape, generator=gen, dtype=F64)
    psf = torch.rand(5, 4, generator=gen, dtype=F64) + 0.05
    return y.requires_grad_(requires_grad), psf


@pytest.mark.parametrize("route_config", ROUTES, indirect=True)
@pytest.mark.parametrize("kw", [dict(eps=1e-2), dict(method="pinv"),
                                dict(eps=1e-2, reg="laplacian")])
def test_circular_solve_blur_adjoint_every_route(route_config, kw):
    y, psf = _inputs(route_config == "ops")
    x = dx.deconvolve(y, psf, **kw)
    assert rel_err(x.detach(), reference.deconvolve(y.detach(), psf, **kw)) <= 1e-10
    plan = dx.DeconvPlan(psf, (13, 10), **kw)
    K = reference.psf_transfer(psf, (13, 10))
    Y = torch.fft.fft2(y.detach())
    assert rel_err(plan.blur(y).detach(), torch.fft.ifft2(K * Y).real) <= 1e-12
    assert rel_err(plan.adjoint(y).detach(), torch.fft.ifft2(K.conj() * Y).real) <= 1e-12
    if route_config == "ops":  # the op's backward against autograd through the reference
        v = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        (g,) = torch.autograd.grad(x, y, v)
        yr = y.detach().clone().requires_grad_()
        (want,) = torch.autograd.grad(reference.deconvolve(yr, psf, **kw), yr, v)
        assert rel_err(g, want) <= 1e-9


@pytest.mark.parametrize("route_config", ROUTES, indirect=True)
def test_padded_and_dct_solves_every_route(route_config):
    y, psf = _inputs(route_config == "ops")
    plan = dx.DeconvPlan(psf, (13, 10), eps=1e-2, boundary="reflect")
    geo = plan.geometry
    from deconv_ext.maths import padding

    buf = padding.pad(y.detach(), geo.top, geo.left, *geo.fft_size, "reflect")
    want = reference.deconvolve(buf, psf, eps=1e-2)[..., geo.top:geo.top + 13,
                                                    geo.left:geo.left + 10]
    assert rel_err(dx.deconvolve(y, psf, eps=1e-2, boundary="reflect").detach(), want) <= 1e-10
    sym = psf + psf.flip(-1)
    sym = torch.nn.functional.pad(sym + sym.flip(-2), (0, 1, 0, 1))[..., :5, :5]
    sym = (sym + sym.flip(-1) + sym.flip(-2) + sym.flip(-2, -1))[..., :5, :5]
    x = dx.deconvolve(y, sym, eps=1e-3, boundary="symmetric", solver="dct").detach()
    blurred_back = dx.convolve(x, sym, boundary="symmetric")
    # The DCT solve is the exact Tikhonov minimiser: its normal equations hold.
    r = dx.convolve(y.detach() - blurred_back, sym.flip(-2, -1), boundary="symmetric")
    assert (r - 1e-3 * x).abs().max() <= 1e-9 * float(y.detach().abs().max())


@pytest.mark.parametrize("route_config", ["ops", "pipeline", "auto"], indirect=True)
def test_layer_pinv_every_route(route_config):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, 3, 2, generator=gen, dtype=F64)
    y = torch.randn(2, 4, 9, 8, generator=gen, dtype=F64).requires_grad_(route_config == "ops")
    got = dx.conv2d_pinv(y, w).detach()
    assert rel_err(got, reference.conv2d_pinv(y.detach(), w)) <= 1e-10


def test_route_table_names_every_op_route():
    """The table is the single place an op's implementations are listed."""
    from deconv_ext.execution import routes

    for op, impls in routes.TABLE.items():
        assert {"ops", "pipeline"} <= set(impls), op
    y = torch.rand(8, 8, dtype=F64)
    with config.override(cpu_fft="scipy"):
        assert execution.route(y) == "scipy"
        assert execution.route(y, fft=False) == "pipeline"
        assert execution.route(y.requires_grad_()) == "ops"
