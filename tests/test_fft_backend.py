"""CPU FFT backend choice (issue 8): every backend computes the same solve,
the per-shape choice is cached on disk and reused, bad names are clear."""
from __future__ import annotations

import json

import pytest
import torch

import deconv_ext as dx
from deconv_ext import config, reference
from deconv_ext.execution import cpu_fft, fft_choice
from deconv_ext.plans import cache as plan_cache
from oracles import invertible_psf, rel_err


@pytest.fixture
def scratch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "_current", config.from_environment(
        {"XDG_CACHE_HOME": str(tmp_path), "DECONV_EXT_CPU_FFT": "auto"}))
    monkeypatch.setattr(fft_choice, "_choices", {})
    monkeypatch.setattr(fft_choice, "_loaded_from", None)
    return tmp_path


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kw", [dict(eps=1e-2), dict(method="pinv"), dict(eps=0.1, reg="laplacian")])
def test_scipy_backend_equals_torch_backend(configure, gen, monkeypatch, dtype, tol, kw):
    y = torch.randn(2, 3, 17, 12, generator=gen, dtype=dtype)
    psf = torch.rand(3, 5, 4, generator=gen, dtype=dtype)
    plan = dx.DeconvPlan(psf, (17, 12), **kw)
    x = torch.randn(2, 3, 17, 12, generator=gen, dtype=dtype)
    configure(cpu_fft="pipeline")
    expect = (plan(y), plan.blur(x), plan.adjoint(x))
    configure(cpu_fft="scipy")
    got = (plan(y), plan.blur(x), plan.adjoint(x))
    for a, b in zip(got, expect):
        assert a.dtype == dtype and a.shape == b.shape
        assert rel_err(a, b) <= tol


def test_scipy_backend_chunks_per_sample_kernels(configure, gen, monkeypatch):
    y = torch.randn(5, 2, 200, 180, generator=gen, dtype=torch.float64)  # chunks of 3 samples
    psf = torch.rand(5, 1, 4, 3, generator=gen, dtype=torch.float64) + 0.1
    plan = dx.DeconvPlan(psf, (200, 180), eps=1e-3)
    configure(cpu_fft="pipeline")
    expect = (plan(y), plan.blur(y))
    configure(cpu_fft="scipy")
    for a, b in zip((plan(y), plan.blur(y)), expect):
        assert rel_err(a, b) <= 1e-12


def test_scipy_backend_inverts_blur(configure, gen, monkeypatch):
    configure(cpu_fft="scipy")
    x = torch.randn(4, 20, 15, generator=gen, dtype=torch.float64)
    psf = invertible_psf(gen, 5, 3)
    assert rel_err(dx.deconvolve(dx.convolve(x, psf), psf, method="pinv"), x) <= 1e-10


def test_autograd_and_compile_keep_torch_ops(configure, gen, monkeypatch):
    """With gradients the ops (exact adjoints) run, whatever the FFT switch."""
    configure(cpu_fft="scipy")
    y = torch.randn(9, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: dx.deconvolve(a, psf, eps=0.1), (y,))


def test_auto_choice_is_measured_once_and_cached(configure, scratch_cache, monkeypatch, gen):
    configure(cpu_fft="auto")
    calls = []
    real = fft_choice._measure
    monkeypatch.setattr(fft_choice, "_measure", lambda *a: calls.append(a) or real(*a))
    y = torch.randn(2, 24, 20, generator=gen)
    psf = torch.rand(3, 3, generator=gen)
    first = dx.deconvolve(y, psf)
    second = dx.deconvolve(y, psf)
    assert len(calls) == 1
    assert torch.equal(first, second)  # same choice -> bit-identical
    saved = json.loads((scratch_cache / "deconv_ext" / "fft_choice.json").read_text())
    assert list(saved.values()) in (["pipeline"], ["scipy"])
    # A new process (emulated: empty memory cache) reads the file, measures nothing.
    monkeypatch.setattr(fft_choice, "_choices", {})
    monkeypatch.setattr(fft_choice, "_loaded_from", None)
    assert torch.equal(dx.deconvolve(y, psf), first)
    assert len(calls) == 1


def test_unknown_or_missing_backend_is_clear(configure, monkeypatch):
    for var in ("DECONV_EXT_CPU_FFT", "DECONV_EXT_FFT"):
        with pytest.raises(ValueError,
                           match=f"{var}='fftw3' is not valid.*'auto', 'pipeline', 'scipy', 'pyfftw'"):
            config.from_environment({var: "fftw3"})
    assert config.from_environment({"DECONV_EXT_FFT": "torch"}).cpu_fft == "pipeline"
    pytest.importorskip("scipy")
    try:
        import pyfftw  # noqa: F401
    except ImportError:
        configure(cpu_fft="pyfftw")
        with pytest.raises(ValueError, match="pip install pyfftw"):
            dx.deconvolve(torch.rand(8, 8), torch.rand(3, 3))


def test_one_shot_plans_are_cached_by_psf_content(gen, monkeypatch):
    plan_cache.clear()
    built = []
    real_init = dx.DeconvPlan.__init__

    def counting_init(self, *a, **k):
        built.append(1)
        real_init(self, *a, **k)

    monkeypatch.setattr(dx.DeconvPlan, "__init__", counting_init)
    y = torch.randn(3, 16, 14, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    a = dx.deconvolve(y, psf, eps=1e-2)
    b = dx.deconvolve(y, psf.clone(), eps=1e-2)  # same content, another tensor
    assert len(built) == 1 and torch.equal(a, b)
    dx.deconvolve(y, psf, eps=2e-2)  # another eps: another plan
    assert len(built) == 2
    psf.mul_(2)  # refilled in place: the content changed, so must the result
    c = dx.deconvolve(y, psf, eps=1e-2)
    assert len(built) == 3
    assert rel_err(c, reference.deconvolve(y, psf, eps=1e-2)) <= 1e-12
    plan_cache.clear()


def test_plan_cache_keeps_no_huge_spectra(gen, monkeypatch):
    plan_cache.clear()
    monkeypatch.setattr(plan_cache, "MAX_BYTES", 16000)  # a 20x20 float64 plan holds 3600 B
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    for i in range(5):  # five plans: the byte budget keeps four, least recent out
        dx.deconvolve(y, psf, eps=0.1 * (i + 1))
    assert len(plan_cache._plans) == 4 and sum(plan_cache._sizes.values()) <= 16000
    dx.deconvolve(torch.randn(40, 40, generator=gen, dtype=torch.float64), psf)  # > 1/4 budget
    assert len(plan_cache._plans) == 4
    plan_cache.clear()


def _lib_deconv2d(name, *args):
    """The CPU pipeline of FFT library ``name`` ("torch": the C++ pipeline)."""
    if name == "torch":
        return torch.ops.deconv_ext.deconv2d(*args, False)
    return cpu_fft.deconv2d(name, *args)


def _lib_filter2d(name, *args):
    if name == "torch":
        return torch.ops.deconv_ext.filter2d(*args)
    return cpu_fft.filter2d(name, *args)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_planned_fftw_backend_equals_torch_backend(configure, gen, monkeypatch, dtype, tol):
    """The optional FFTW backend (planned pyFFTW; GPL, not installed by default)."""
    pytest.importorskip("pyfftw")
    y = torch.randn(5, 2, 200, 180, generator=gen, dtype=dtype)     # chunks of 3 samples
    psf = torch.rand(5, 1, 4, 3, generator=gen, dtype=dtype) + 0.1
    plan = dx.DeconvPlan(psf, (200, 180), eps=1e-3)
    configure(cpu_fft="pipeline")
    expect = (plan(y), plan.blur(y), plan.adjoint(y))
    configure(cpu_fft="pyfftw")
    for _ in range(2):  # the second call reuses the plans and their arrays
        got = (plan(y), plan.blur(y), plan.adjoint(y))
        for a, b in zip(got, expect):
            assert a.dtype == dtype and a.shape == b.shape
            assert rel_err(a, b) <= tol
    assert not torch.equal(got[0], got[1])  # fresh outputs, not one reused buffer


def test_planned_fftw_never_writes_into_callers_arrays(configure, gen, monkeypatch):
    """Found in review: a plan rebound to an aligned caller input later copied a
    misaligned chunk into it (3x255x255 float32 chunks of 2 start 8 bytes off)."""
    pytest.importorskip("pyfftw")
    psf = torch.rand(5, 5, generator=gen) + 0.1
    plan = dx.DeconvPlan(psf, (255, 255), eps=1e-2)
    y = torch.rand(5, 3, 255, 255, generator=gen)
    a = torch.rand(6, 255, 255, generator=gen)
    y0, a0 = y.clone(), a.clone()
    configure(cpu_fft="pipeline")
    want_y, want_a = plan(y), plan(a)
    configure(cpu_fft="pyfftw")
    got_a = plan(a)
    got_y = plan(y)
    got_b = plan(torch.rand(7, 255, 255, generator=gen)[1:])  # a misaligned batch
    assert torch.equal(y, y0) and torch.equal(a, a0)
    assert rel_err(got_y, want_y) <= 1e-5 and rel_err(got_a, want_a) <= 1e-5
    assert rel_err(got_a, plan(a)) <= 1e-6 and got_b.shape == (6, 255, 255)


@pytest.mark.parametrize("name", ["scipy", "torch"])
def test_numpy_and_cpp_paths_take_negative_views_and_empty_batches(configure, gen, monkeypatch, name):
    """Found in review: .numpy() refused a lazily negated image; raw spectral kernels
    ignored the negative bit of k / reg; an empty batch indexed x[0]."""
    y = torch.randn(3, 12, 10, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64) + 0.1
    plan = dx.DeconvPlan(psf, (12, 10), eps=1e-2, reg="laplacian")
    configure(cpu_fft="pipeline" if name == "torch" else name)
    assert rel_err(plan(torch._neg_view(y)), -plan(y)) <= 1e-12
    k = plan.spectrum
    assert rel_err(_lib_filter2d(name, y, torch._neg_view(k), False),
                   -_lib_filter2d(name, y, k, False)) <= 1e-12
    thr = plan.thresh
    assert rel_err(_lib_deconv2d(name, y, torch._neg_view(-k), plan._reg_op, 0.1, thr),
                   _lib_deconv2d(name, y, k, plan._reg_op, 0.1, thr)) <= 1e-12
    assert rel_err(_lib_deconv2d(name, y, k, torch._neg_view(-plan._reg_op), 0.1, thr),
                   _lib_deconv2d(name, y, k, plan._reg_op, 0.1, thr)) <= 1e-12
    empty = torch.empty(0, 3, 12, 10, dtype=torch.float64)
    assert _lib_filter2d(name, empty, k, False).shape == empty.shape
