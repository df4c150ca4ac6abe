"""Custom ops: opcheck, exact-adjoint gradients, torch.compile, half dtypes.

One list of sample inputs per op feeds opcheck (schema, fake kernel,
autograd registration, AOT dispatch); gradients are checked numerically in
float64; compiled functions are compared with eager, forward and backward.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import deconv_ext as dx
from oracles import conv2d_circular, invertible_psf, rel_err

ops = torch.ops.deconv_ext

# Inductor warns that FFT outputs are complex; our complex maths stays inside
# the ops, which is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation")


def _spectra(gen, shape, k_shape, dtype, requires_grad=False):
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    y = torch.randn(*shape, generator=gen, dtype=cdt).requires_grad_(requires_grad)
    k = torch.randn(*k_shape, generator=gen, dtype=cdt).requires_grad_(requires_grad)
    return y, k


def sample_inputs():
    """(op name, args) pairs: both dtypes, with and without grad, odd sizes, broadcasting."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for dtype in (torch.float32, torch.float64):
        for rg in (False, True):
            y, k = _spectra(gen, (2, 3, 5, 4), (5, 4), dtype, rg)
            reg = torch.rand(5, 4, generator=gen, dtype=dtype).requires_grad_(rg)
            thr = torch.full((), 0.05, dtype=dtype)
            thr_ps = torch.rand(2, 1, 1, 1, generator=gen, dtype=dtype) * 0.1
            out += [
                ("spectral_solve", (y, k, None, 0.1, thr)),
                ("spectral_solve", (y, k, reg, 0.3, thr)),
                ("spectral_solve", (y, k, None, 0.0, thr_ps)),
                ("spectral_mul", (y, k, False)),
                ("spectral_mul", (y, k, True)),
            ]
            x = torch.randn(2, 7, 5, generator=gen, dtype=dtype).requires_grad_(rg)
            for mode in ("zeros", "reflect", "symmetric", "replicate", "circular"):
                out.append(("pad", (x, 2, 3, 12, 11, mode)))
            out.append(("crop", (x, 1, 2, 4, 3, dtype)))
        y, k = _spectra(gen, (2, 3, 5, 4), (3, 1, 4), dtype)
        g = torch.randn(2, 3, 5, 4, generator=gen, dtype=y.dtype)
        out += [
            ("spectral_solve_backward", (g, y, k, None, 0.2, torch.zeros((), dtype=dtype))),
            ("spectral_mul_grad_k", (g, y, [3, 1, 4], True)),
            ("pad_backward", (torch.randn(2, 9, 8, generator=gen, dtype=dtype), 1, 2, 6, 5, "reflect")),
        ]
        # Pipelines (real in, real out) and kernel spectra.
        for rg in (False, True):
            img = torch.randn(2, 3, 6, 5, generator=gen, dtype=dtype).requires_grad_(rg)
            psf = torch.rand(3, 3, 2, generator=gen, dtype=dtype).requires_grad_(rg)
            k = torch.randn(3, 6, 3, generator=gen, dtype=y.dtype).requires_grad_(rg)
            reg = torch.rand(6, 3, generator=gen, dtype=dtype)
            thr = torch.full((), 0.01, dtype=dtype)
            out += [
                ("deconv2d", (img, k, None, 0.1, thr, False)),
                ("deconv2d", (img, k, reg, 0.2, thr, True)),
                ("filter2d", (img, k, False)),
                ("filter2d", (img, k, True)),
                ("kernel_spectrum", (psf, 7, 6)),
                ("spectral_power", (k,)),
                # Internal: only its gradient w.r.t. y is defined (used for the image's).
                ("spectral_solve_adjoint", (k.detach().expand(2, 3, 6, 3).requires_grad_(rg),
                                            k.detach(), reg, 0.1, thr)),
            ]
        img = torch.randn(2, 3, 6, 5, generator=gen, dtype=dtype)
        g = torch.randn(2, 3, 6, 5, generator=gen, dtype=dtype)
        k = torch.randn(3, 6, 3, generator=gen, dtype=y.dtype)
        out += [
            ("deconv2d_grad_k", (g, img, k, None, 0.1, torch.zeros((), dtype=dtype), False)),
            ("deconv2d_grad_k", (g, img, k, None, 0.1, torch.zeros((), dtype=dtype), True)),
            ("filter2d_grad_k", (g, img, [3, 6, 3], False)),
            ("kernel_spectrum_backward", (k, 3, 2, 6, 5)),
            ("spectral_power_backward", (torch.rand(3, 6, 3, generator=gen, dtype=dtype), k)),
        ]
    x16 = torch.randn(3, 6, 7, generator=gen).to(torch.bfloat16)
    out.append(("pad", (x16, 1, 1, 8, 9, "replicate")))
    out.append(("crop", (torch.randn(3, 6, 7, generator=gen), 0, 1, 5, 5, torch.float16)))
    return out


@pytest.mark.parametrize("name,args", sample_inputs(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


def test_opcheck_inplace_solve():
    gen = torch.Generator().manual_seed(3)
    y, k = _spectra(gen, (2, 5, 4), (5, 4), torch.float64)
    torch.library.opcheck(ops.spectral_solve_.default, (y.clone(), k, None, 0.1,
                                                          torch.zeros((), dtype=torch.float64)))


def test_inplace_solve_equals_out_of_place():
    gen = torch.Generator().manual_seed(4)
    y, k = _spectra(gen, (3, 6, 5), (6, 5), torch.float32)
    reg = torch.rand(6, 5, generator=gen)
    thr = torch.full((), 0.5)
    expect = ops.spectral_solve(y, k, reg, 0.0, thr)  # pinv branch everywhere, some dropped
    got = y.clone()
    ops.spectral_solve_(got, k, reg, 0.0, thr)
    assert torch.equal(got, expect)
    assert (expect == 0).any() and (expect != 0).any()


# ---------------------------------------------------------------------------
# Pad / crop: exact adjoints
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["zeros", "reflect", "symmetric", "replicate", "circular"])
def test_pad_backward_is_adjoint_of_pad(mode):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 17, 13, generator=gen, dtype=torch.float64)  # pads wider than the image
    lhs = (ops.pad(x, 6, 5, 17, 13, mode) * g).sum()
    rhs = (x * ops.pad_backward(g, 6, 5, 5, 4, mode)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(g.abs().sum())


@pytest.mark.parametrize("mode,np_mode", [("zeros", "constant"), ("reflect", "reflect"),
                                          ("symmetric", "symmetric"), ("replicate", "edge"),
                                          ("circular", "wrap")])
def test_pad_matches_numpy(mode, np_mode):
    np = pytest.importorskip("numpy")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    got = ops.pad(x, 4, 2, 6 + 4 + 3, 5 + 2 + 7, mode)
    expect = np.pad(x.numpy(), ((0, 0), (4, 3), (2, 7)), mode=np_mode)
    assert torch.equal(got, torch.from_numpy(expect))


# ---------------------------------------------------------------------------
# gradcheck / gradgradcheck through the public API (float64)
# ---------------------------------------------------------------------------

def _leaf(t):
    return t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("kw", [dict(eps=0.05), dict(method="pinv"), dict(eps=0.1, reg="laplacian")],
                         ids=["tikhonov", "pinv", "laplacian"])
def test_gradcheck_deconvolve_image_and_psf(gen, kw):
    x = _leaf(torch.randn(2, 7, 6, generator=gen, dtype=torch.float64))
    psf = _leaf(torch.rand(3, 2, generator=gen, dtype=torch.float64) + 0.2)
    assert gradcheck(lambda a, b: dx.deconvolve(a, b, **kw), (x, psf))


def test_gradcheck_per_frequency_eps_and_reg_kernel(gen):
    x = _leaf(torch.randn(2, 7, 6, generator=gen, dtype=torch.float64))
    psf = _leaf(torch.rand(2, 3, 2, generator=gen, dtype=torch.float64) + 0.2)  # per channel
    e = _leaf(torch.rand(7, 6, generator=gen, dtype=torch.float64) * 0.1 + 0.01)
    r = _leaf(torch.rand(2, 2, generator=gen, dtype=torch.float64))
    assert gradcheck(lambda a, b, c: dx.deconvolve(a, b, eps=c), (x, psf, e))
    assert gradcheck(lambda a, b, c: dx.deconvolve(a, b, eps=0.1, reg=c), (x, psf, r))


def test_gradgradcheck_image(gen):
    x = _leaf(torch.randn(2, 6, 5, generator=gen, dtype=torch.float64))
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    assert gradgradcheck(lambda a: dx.deconvolve(a, psf, eps=0.05), (x,))
    assert gradgradcheck(lambda a: dx.convolve(a, psf), (x,))


def test_gradcheck_conv2d_pinv_and_plan(gen):
    w = _leaf(torch.rand(3, 1, 3, 2, generator=gen, dtype=torch.float64) + 0.3)
    b = _leaf(torch.randn(3, generator=gen, dtype=torch.float64))
    y = _leaf(torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64))
    assert gradcheck(lambda a, ww, bb: dx.conv2d_pinv(a, ww, bb, groups=3, eps=0.01), (y, w, b))
    psf = _leaf(torch.rand(3, 3, generator=gen, dtype=torch.float64))
    plan = dx.DeconvPlan(psf, (7, 6), eps=0.05)
    x = _leaf(torch.randn(2, 7, 6, generator=gen, dtype=torch.float64))
    for fn in (plan, plan.blur, plan.adjoint):
        assert gradcheck(fn, (x,))
    assert gradcheck(lambda a, k: dx.DeconvPlan(k, (7, 6), eps=0.05)(a), (x, psf))


def test_gradient_of_image_is_the_adjoint_solve(gen):
    """d/dy <deconvolve(y), g> equals the solve with the conjugated filter."""
    y = _leaf(torch.randn(8, 9, generator=gen, dtype=torch.float64))
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(8, 9, generator=gen, dtype=torch.float64)
    (dx.deconvolve(y, psf, eps=0.1) * g).sum().backward()
    # Materialise the solve as a matrix M (column i = solve(e_i)); the gradient
    # must be M^T g.
    n = 8 * 9
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 8, 9)
    M = dx.deconvolve(basis, psf, eps=0.1).reshape(n, n).T
    assert rel_err(y.grad.reshape(-1), M.T @ g.reshape(-1)) <= 1e-12


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_deconvolve_forward_backward_no_recompile(gen, fresh_dynamo, dynamic):
    psf = _leaf(torch.rand(3, 3, generator=gen, dtype=torch.float64))

    def f(img, k):
        return dx.deconvolve(img, k, eps=1e-2, reg="laplacian")

    cf = torch.compile(f, fullgraph=True, dynamic=dynamic)
    for i in range(3):
        x = _leaf(torch.randn(2, 3, 16, 12, generator=gen, dtype=torch.float64))
        out_c = cf(x, psf)
        gx_c, gk_c = torch.autograd.grad(out_c.square().sum(), (x, psf))
        out_e = f(x, psf)
        gx_e, gk_e = torch.autograd.grad(out_e.square().sum(), (x, psf))
        assert rel_err(out_c, out_e) <= 1e-12
        assert rel_err(gx_c, gx_e) <= 1e-12 and rel_err(gk_c, gk_e) <= 1e-12
        if i == 0:
            torch._dynamo.config.error_on_recompile = True
    torch._dynamo.config.error_on_recompile = False
    if dynamic:  # another size: a dynamic graph needs no new compile
        x = torch.randn(2, 3, 20, 14, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(cf(x, psf), f(x, psf)) <= 1e-12


def test_repeated_compiles_keep_exact_gradients(gen):
    """Regression: with the FFTs outside the ops, the 2nd and later compiles in a
    process gave PSF gradients off by O(1) (Inductor re-ordered an in-place
    rewrite of irfft2's backward after an op read the buffer)."""
    x = _leaf(torch.randn(2, 3, 16, 12, generator=gen, dtype=torch.float64))
    psf = _leaf(torch.rand(3, 3, generator=gen, dtype=torch.float64))

    def f(img, k):
        return dx.deconvolve(img, k, eps=1e-2, reg="laplacian")

    def grads(fn):
        return torch.autograd.grad(fn(x, psf).square().sum(), (x, psf))

    expect = grads(f)
    for dynamic in (False, True, False):
        torch._dynamo.reset()
        got = grads(torch.compile(f, fullgraph=True, dynamic=dynamic))
        assert all(rel_err(a, b) <= 1e-12 for a, b in zip(got, expect))


def test_compile_multichannel_conv2d_pinv_gradients(gen):
    """A general (channel-mixing) layer, plan built inside the compiled function."""
    w = _leaf(torch.rand(3, 2, 3, 3, generator=gen, dtype=torch.float64) + 0.2)
    y = _leaf(torch.randn(2, 3, 10, 9, generator=gen, dtype=torch.float64))

    def f(yy, ww):
        return dx.conv2d_pinv(yy, ww, eps=1e-2)

    def grads(fn):
        return torch.autograd.grad(fn(y, w).square().sum(), (y, w))

    expect = grads(f)
    for _ in range(2):  # the second compile in a process too
        torch._dynamo.reset()
        got = grads(torch.compile(f, fullgraph=True))
        assert all(rel_err(a, b) <= 1e-10 for a, b in zip(got, expect))


def test_compile_plan_and_conv2d_pinv(gen, fresh_dynamo):
    C = 3
    w = torch.stack([invertible_psf(gen, 3, 2) for _ in range(C)])[:, None]
    plan = dx.DeconvPlan.for_conv2d(w, (10, 9), groups=C)

    @torch.compile(fullgraph=True)
    def g(y):
        return plan(y), dx.conv2d_pinv(y, w, groups=C, eps=1e-3), plan.blur(y)

    x = torch.randn(2, C, 10, 9, generator=gen, dtype=torch.float64)
    y = conv2d_circular(x, w, groups=C)
    a, b, c = g(y)
    assert rel_err(a, x) <= 1e-10
    assert rel_err(b, dx.conv2d_pinv(y, w, groups=C, eps=1e-3)) <= 1e-12
    assert rel_err(c, plan.blur(y)) <= 1e-12


def test_compile_reports_bad_input_like_eager(fresh_dynamo):
    msg = "psf of size 5x5 is larger than the image"
    f = torch.compile(lambda img, k: dx.deconvolve(img, k))
    with pytest.raises(ValueError, match=msg):
        f(torch.rand(4, 4), torch.rand(5, 5))
    # fullgraph=True cannot leave the graph to raise; Dynamo reports the same error.
    g = torch.compile(lambda img, k: dx.deconvolve(img, k), fullgraph=True)
    with pytest.raises(Exception, match=msg):
        g(torch.rand(4, 4), torch.rand(5, 5))


def test_fake_kernel_checks_like_real_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode

    y = torch.randn(2, 5, 4, dtype=torch.complex64)
    k = torch.randn(3, 4, dtype=torch.complex64)  # does not broadcast
    thr = torch.zeros(())
    with pytest.raises(RuntimeError, match="does not broadcast"):
        ops.spectral_solve(y, k, None, 0.1, thr)
    with FakeTensorMode() as mode:
        fy, fk, ft = (mode.from_tensor(t) for t in (y, k, thr))
        with pytest.raises(RuntimeError, match="does not broadcast"):
            ops.spectral_solve(fy, fk, None, 0.1, ft)


# ---------------------------------------------------------------------------
# float16 / bfloat16 / autocast
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_and_autocast(gen, dtype):
    x = torch.rand(2, 3, 20, 17, generator=gen)
    psf = invertible_psf(gen, 5, 4, dtype=torch.float32)
    y = dx.convolve(x, psf)
    ref = dx.deconvolve(y, psf, eps=1e-4)
    out = dx.deconvolve(y.to(dtype), psf, eps=1e-4)
    assert out.dtype == dtype
    assert rel_err(out.float(), ref) <= 1e-2
    with torch.autocast("cpu", dtype=dtype):
        out_ac = dx.deconvolve(y.to(dtype), psf, eps=1e-4)
        out_f32 = dx.deconvolve(y, psf, eps=1e-4)
    assert out_ac.dtype == dtype and out_f32.dtype == torch.float32
    assert rel_err(out_ac.float(), ref) <= 1e-2
    assert rel_err(out_f32, ref) <= 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent precision warnings either
        dx.DeconvPlan(psf, (20, 17))(y.to(dtype))
