"""The Triton kernels (``deconv_ext.triton_kernels``) against independent torch
/ numpy oracles and against the C++ ops, on CPU through the Triton
interpreter (tiny shapes, large blocks), plus:

* an ahead-of-time compile of every kernel for sm_90 (PTX + cubin) in a
  subprocess, which catches what only the GPU compiler rejects without a GPU;
* the end-to-end switch ``DECONV_EXT_KERNELS=triton`` (public functions and
  ``DeconvPlan`` through the launchers);
* ``@pytest.mark.cuda`` tests comparing the CUDA path with the CPU path, run
  by ``benchmarks/gpu_check.sh`` on a GPU machine.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from deconv_ext import execution as _ops  # noqa: E402

if not _ops.available():
    pytest.skip("the C++ extension is not built", allow_module_level=True)

from deconv_ext import triton_kernels as tk  # noqa: E402  (interpreter on CPU-only machines)
from deconv_ext.triton_kernels import pad_crop as tk_pad  # noqa: E402
from deconv_ext.triton_kernels import spectral as tk_spec  # noqa: E402

ops = torch.ops.deconv_ext
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# (complex dtype, rtol, atol) rows. vs C++: both evaluate the same formula in
# the same order. The Triton kernels never contract a * b + c into an FMA
# (enable_fp_fusion=False, checked in the sm_90 compile test); the C++
# AVX2/AVX-512 clones do (GCC's default -ffp-contract=fast), so results are a
# few ulp apart, and |K|^2 > thresh could differ only at an exact tie: the
# thresholds of these tests sit halfway between two |K|^2 values.
CPP_TOL = [(torch.complex64, 2e-6, 1e-6), (torch.complex128, 1e-14, 1e-14)]
# vs the torch oracle: different operation order (torch complex division).
REF_TOL = {torch.complex64: (2e-5, 2e-5), torch.complex128: (1e-12, 1e-12)}
REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


# ---------------------------------------------------------------------------
# Oracles: plain torch / numpy, written from docs/architecture.md ("The maths"), not from the kernels
# ---------------------------------------------------------------------------


def solve_ref(y, k, reg, eps, thresh):
    """X = conj(K) Y / (|K|^2 + p) where p = eps * reg > 0, else Y / K where |K|^2 > thresh, else 0."""
    p = eps * (reg if reg is not None else torch.ones((), dtype=thresh.dtype))
    k2 = k.abs() ** 2
    tik = p > 0
    keep = tik | (k2 > thresh)
    den = torch.where(tik, k2 + p, k2)
    den = torch.where(keep, den, torch.ones_like(den))
    return torch.where(keep, torch.conj(k) * y / den, torch.zeros_like(y))


def pad_index_ref(n, before, total, mode):
    """Source index (or -1) of each of ``total`` extended indices, from numpy.pad of an arange."""
    after = total - n - before
    idx = np.arange(n)
    np_mode = {"zeros": "constant", "constant": "constant", "reflect": "reflect",
               "symmetric": "symmetric", "replicate": "edge", "circular": "wrap"}[mode]
    kw = {"constant_values": -1} if np_mode == "constant" else {}
    full = np.pad(idx, (max(before, 0), max(after, 0)), mode=np_mode, **kw)
    return full[max(-before, 0): max(-before, 0) + total]


def pad_ref(x, top, left, height, width, mode):
    rows = torch.as_tensor(pad_index_ref(x.shape[-2], top, height, mode))
    cols = torch.as_tensor(pad_index_ref(x.shape[-1], left, width, mode))
    out = x.to(torch.float64)[..., rows.clamp(min=0), :][..., :, cols.clamp(min=0)]
    keep = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return torch.where(keep, out, torch.zeros_like(out)).to(dtype)


def cspec(shape, dtype, gen):
    """A random complex tensor with no zero entries."""
    re = torch.randn(shape, generator=gen, dtype=torch.float64)
    im = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = torch.complex(re, im)
    return (z + 0.05 * torch.sgn(z)).to(dtype)


def close(a, b, rtol, atol):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


# ---------------------------------------------------------------------------
# Spectral solve
# ---------------------------------------------------------------------------

# (y shape, k shape, thresh shape, reg shape or None): shared, per channel,
# per sample, broadcast inside the spatial dims, 2D y.
SOLVE_SHAPES = [
    ((2, 3, 6, 5), (6, 5), (2, 1, 1, 1), (6, 5)),
    ((2, 3, 5, 4), (3, 5, 4), (1, 1), (1, 5, 4)),
    ((2, 3, 7, 4), (2, 1, 7, 4), (2, 1, 1, 1), (3, 1, 4)),
    ((3, 4, 5), (1, 1, 5), (3, 4, 5), None),
    ((7, 5), (7, 5), (), (7, 1)),
]


def solve_inputs(yshape, kshape, tshape, rshape, cdt, gen, zero_k=True):
    y = cspec(yshape, cdt, gen)
    k = cspec(kshape, cdt, gen)
    if zero_k:
        k.view(-1)[1] = 0  # a frequency where the spectrum is exactly zero
    rdt = REAL[cdt]
    reg = None if rshape is None else torch.rand(rshape, generator=gen, dtype=torch.float64).to(rdt) + 0.5
    if reg is not None:
        reg.view(-1)[0] = 0  # eps * reg == 0 there: the pseudo-inverse branch
    # A threshold halfway between two of the |K|^2 values: drops about a
    # third of the frequencies, and no |K|^2 is near it (no rounding ties).
    k2 = k.to(torch.complex128).abs().square().flatten().sort().values
    i = k2.numel() // 3
    thresh = torch.full(tshape, float(k2[i] + k2[i + 1]) / 2, dtype=rdt)
    return y, k, reg, thresh


METHODS = [(0.3, False), (0.2, True), (0.0, False), (0.0, True)]  # tik, tik+reg, pinv, pinv+reg


def check_solve(shapes, cdt, rtol, atol, gen, methods=METHODS):
    yshape, kshape, tshape, rshape = shapes
    for eps, with_reg in methods:
        y, k, reg, thresh = solve_inputs(yshape, kshape, tshape, rshape if with_reg else None,
                                         cdt, gen)
        got = tk.spectral_solve(y, k, reg, eps, thresh)
        assert got.shape == y.shape and got.dtype == y.dtype and got.is_contiguous()
        close(got, ops.spectral_solve(y, k, reg, eps, thresh), rtol, atol)
        close(got, solve_ref(y, k, reg, eps, thresh), *REF_TOL[cdt])
        if eps == 0.0:
            # The threshold really dropped frequencies, and only those.
            dropped = (k.abs().square() <= thresh).expand(y.shape)
            assert dropped.any() and (~dropped).any()
            assert torch.all(got[dropped] == 0) and torch.all(got[~dropped] != 0)


@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
@pytest.mark.parametrize("shapes", SOLVE_SHAPES)
def test_spectral_solve(shapes, cdt, rtol, atol, gen):
    """Every method (Tikhonov with scalar eps / reg tensor, pseudo-inverse,
    zero spectrum entries) on every broadcast pattern."""
    check_solve(shapes, cdt, rtol, atol, gen)


@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
def test_spectral_solve_masked_tails(cdt, rtol, atol, gen, monkeypatch):
    """Blocks of 4 on rows of 5 and 30 elements: many programs per row, partial last blocks."""
    monkeypatch.setattr(tk_spec, "BLOCK_OVERRIDE", (4, 4))
    check_solve(SOLVE_SHAPES[0], cdt, rtol, atol, gen, METHODS[1:3])
    check_solve(SOLVE_SHAPES[3], cdt, rtol, atol, gen, METHODS[:1])


@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
def test_spectral_solve_strided_and_conj(cdt, rtol, atol, gen):
    """Transposed and sliced y, sliced k, lazily conjugated k, broadcast reg."""
    base = cspec((2, 3, 9, 6), cdt, gen)
    y = base.transpose(-1, -2)[..., ::2]          # (2, 3, 6, 5), non-contiguous
    kfull = cspec((3, 6, 10), cdt, gen)
    k = kfull[..., 1::2].conj()                     # sliced and lazily conjugated
    assert k.is_conj() and not y.is_contiguous()
    reg = torch.rand(6, 1, generator=gen, dtype=torch.float64).to(REAL[cdt])
    thresh = torch.full((2, 1, 1, 1), 0.5, dtype=REAL[cdt])
    for r, e in ((None, 0.1), (reg, 0.4), (None, 0.0)):
        got = tk.spectral_solve(y, k, r, e, thresh)
        close(got, ops.spectral_solve(y.contiguous(), k.resolve_conj(), r, e, thresh), rtol, atol)
        close(got, solve_ref(y, k.resolve_conj(), r, e, thresh), *REF_TOL[cdt])


def test_many_dims_split_launch(gen):
    """Alternating broadcast over six dims coalesces to five: launched per
    index of the extra outer dim; permuted leading dims for pad."""
    y = cspec((2, 2, 2, 2, 3, 4), torch.complex128, gen)
    k = cspec((2, 1, 2, 1, 3, 4), torch.complex128, gen)
    th = torch.full((1,), 0.1, dtype=torch.float64)
    close(tk.spectral_solve(y, k, None, 0.1, th), solve_ref(y, k, None, 0.1, th), 1e-12, 1e-12)
    close(tk.spectral_mul(y, k, True), torch.conj(k) * y, 1e-12, 1e-12)
    x = torch.randn(2, 3, 2, 3, 5, 6, generator=gen, dtype=torch.float64).permute(1, 0, 3, 2, 4, 5)
    close(tk.pad(x, 1, 2, 8, 9, "reflect"), pad_ref(x, 1, 2, 8, 9, "reflect"), 0, 0)


def test_spectral_solve_inplace(gen):
    y = cspec((2, 3, 5, 7), torch.complex64, gen).transpose(-1, -2)
    k = cspec((3, 7, 5), torch.complex64, gen).conj()
    thresh = torch.full((2, 1, 1, 1), 0.2)
    expect = tk.spectral_solve(y, k, None, 0.05, thresh)
    buf = y.clone()
    ptr, strides = buf.data_ptr(), buf.stride()
    assert tk.spectral_solve_(buf, k, None, 0.05, thresh) is None
    assert buf.data_ptr() == ptr and buf.stride() == strides
    close(buf, expect, 0, 0)
    with pytest.raises(RuntimeError, match="conjugate"):
        tk.spectral_solve_(y.clone().conj(), k, None, 0.05, thresh)
    with pytest.raises(RuntimeError, match="overlap"):
        tk.spectral_solve_(y[:1].expand(2, 3, 7, 5), k, None, 0.05, thresh)


def test_spectral_solve_errors(gen):
    y = cspec((2, 4, 3), torch.complex64, gen)
    th = torch.ones(())
    with pytest.raises(RuntimeError, match="complex64 or complex128"):
        tk.spectral_solve(y.real.contiguous(), y, None, 0.1, th)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        tk.spectral_solve(y, cspec((3, 3), torch.complex64, gen), None, 0.1, th)
    with pytest.raises(RuntimeError, match="thresh must be"):
        tk.spectral_solve(y, y, None, 0.1, th.double())
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        tk.spectral_solve(y, y, None, -1.0, th)
    with pytest.raises(RuntimeError, match="differs"):
        tk.spectral_solve(y, y.to(torch.complex128), None, 0.1, th)


# ---------------------------------------------------------------------------
# Spectral multiply and the gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("kshape,lazy", [((6, 5), False), ((3, 1, 5), True), ((2, 3, 6, 5), False)])
def test_spectral_mul(kshape, lazy, conj, cdt, rtol, atol, gen):
    y = cspec((2, 3, 5, 6), cdt, gen).transpose(-1, -2)  # non-contiguous (2, 3, 6, 5)
    k = cspec(kshape, cdt, gen)
    if lazy:
        k = k.conj()
    got = tk.spectral_mul(y, k, conj)
    kk = k.resolve_conj()
    close(got, (kk.conj() if conj else kk) * y, *REF_TOL[cdt])
    close(got, ops.spectral_mul(y, k, conj), rtol, atol)


def autograd_solve_ref(grad, y, k, reg, eps, thresh):
    """k and reg (or eps) gradients by torch autograd through solve_ref."""
    k = k.clone().requires_grad_()
    if reg is not None:
        r = reg.clone().requires_grad_()
        e = eps
    else:
        r = None
        e = torch.tensor(eps, dtype=thresh.dtype, requires_grad=True)
    p = e * (r if r is not None else torch.ones((), dtype=thresh.dtype))
    k2 = k.real ** 2 + k.imag ** 2
    tik = (p > 0).detach()
    keep = (tik | (k2 > thresh)).detach()
    den = torch.where(tik, k2 + p, k2)
    den = torch.where(keep, den, torch.ones_like(den))
    x = torch.where(keep, torch.conj(k) * y / den, torch.zeros_like(y))
    x.backward(grad)
    return k.grad, (r.grad if r is not None else e.grad)


@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
@pytest.mark.parametrize("with_reg,eps", [(False, 0.3), (True, 0.2), (False, 0.0)],
                         ids=["tik", "tik-reg", "pinv"])
def test_spectral_solve_backward(with_reg, eps, cdt, rtol, atol, gen):
    y, k, reg, thresh = solve_inputs((2, 3, 5, 4), (3, 5, 4), (2, 1, 1, 1),
                                     (5, 4) if with_reg else None, cdt, gen, zero_k=False)
    grad = cspec(y.shape, cdt, gen)
    gk, greg = tk.spectral_solve_backward(grad, y, k, reg, eps, thresh)
    assert gk.shape == k.shape
    assert greg.shape == (reg.shape if reg is not None else ())
    ck, creg = ops.spectral_solve_backward(grad, y, k, reg, eps, thresh)
    close(gk, ck, rtol * 10, atol * 10)  # sums over the broadcast dim
    close(greg, creg, rtol * 10, atol * 10)
    rk, rreg = autograd_solve_ref(grad, y, k, reg, eps, thresh)
    close(gk, rk, *REF_TOL[cdt])
    if reg is not None:
        # Where eps * reg == 0 the op reports the one-sided derivative of the
        # Tikhonov branch (p -> 0+), autograd the pinv branch's 0: compare
        # the rest, and check that point against the formula of the C++ op.
        live = reg > 0
        close(greg[live], rreg[live], *REF_TOL[cdt])
        assert not live.all()
    elif eps > 0:
        close(greg, rreg.to(greg.dtype), *REF_TOL[cdt])


@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
@pytest.mark.parametrize("conj", [False, True])
def test_spectral_mul_grad_k(conj, cdt, rtol, atol, gen):
    y = cspec((2, 3, 4, 5), cdt, gen)
    grad = cspec(y.shape, cdt, gen)
    for kshape in ([4, 5], [3, 1, 5], [2, 3, 4, 5]):
        got = tk.spectral_mul_grad_k(grad, y, kshape, conj)
        close(got, ops.spectral_mul_grad_k(grad, y, kshape, conj), rtol * 10, atol * 10)
        k = cspec(kshape, cdt, gen).requires_grad_()
        ((k.conj() if conj else k) * y).backward(grad)
        close(got, k.grad, *REF_TOL[cdt])


# ---------------------------------------------------------------------------
# Pad, its adjoint, crop
# ---------------------------------------------------------------------------

MODES = ["zeros", "reflect", "symmetric", "replicate", "circular"]
# (image h, w, top, left, height, width): small pads, pads wider than the
# image (reflect/symmetric are periodic), a window cut on the far side, 1-pixel axes.
PADS = [(5, 7, 2, 3, 9, 12), (3, 4, 7, 9, 14, 19), (5, 6, 1, 2, 4, 7), (1, 4, 2, 3, 6, 9)]


@pytest.mark.parametrize("geom", PADS)
def test_pad(geom, gen):
    h, w, top, left, height, width = geom
    x = torch.randn(2, 3, w, h, generator=gen, dtype=torch.float64).transpose(-1, -2)  # strided
    for mode in MODES:
        got = tk.pad(x, top, left, height, width, mode)
        assert got.shape == (2, 3, height, width) and got.is_contiguous()
        close(got, pad_ref(x, top, left, height, width, mode), 0, 0)
        close(got, ops.pad(x, top, left, height, width, mode), 0, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_pad_casts(dtype, gen):
    x = (torch.randn(3, 6, 5, generator=gen) * 10).to(dtype)
    for mode in ("reflect", "circular"):
        got = tk.pad(x, 2, 1, 11, 8, mode)
        assert got.dtype == torch.float32
        close(got, pad_ref(x, 2, 1, 11, 8, mode), 0, 0)
        close(got, ops.pad(x, 2, 1, 11, 8, mode), 0, 0)


@pytest.mark.parametrize("geom", PADS)
def test_pad_backward_is_adjoint(geom, gen):
    h, w, top, left, height, width = geom
    x = torch.randn(h, w, generator=gen, dtype=torch.float64)
    g = torch.randn(height, width, generator=gen, dtype=torch.float64)
    for mode in MODES:
        px = tk.pad(x, top, left, height, width, mode)
        bg = tk.pad_backward(g, top, left, h, w, mode)
        assert bg.shape == x.shape
        lhs, rhs = float((px * g).sum()), float((x * bg).sum())
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (mode, lhs, rhs)
        close(bg, ops.pad_backward(g, top, left, h, w, mode), 1e-14, 1e-14)


def test_pad_backward_half_and_strided(gen):
    g = torch.randn(2, 10, 9, generator=gen).to(torch.bfloat16).transpose(-1, -2)  # (2, 9, 10)
    for mode in ("symmetric", "replicate"):
        got = tk.pad_backward(g, 2, 3, 4, 5, mode)
        assert got.dtype == torch.float32
        close(got, ops.pad_backward(g, 2, 3, 4, 5, mode), 1e-6, 1e-6)


@pytest.mark.parametrize("src", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_crop(src, gen):
    x = (torch.randn(2, 9, 11, generator=gen, dtype=torch.float64) * 3).to(src).transpose(-1, -2)
    for dst in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        got = tk.crop(x, 2, 3, 5, 4, dst)
        assert got.dtype == dst and got.shape == (2, 5, 4) and got.is_contiguous()
        window = x[..., 2:7, 3:7]
        # float64 -> half types round through float32, as the C++ kernel does.
        expect = (window.float() if src == torch.float64 and dst in (torch.float16, torch.bfloat16)
                  else window).to(dst)
        close(got, expect, 0, 0)
        close(got, ops.crop(x, 2, 3, 5, 4, dst), 0, 0)


@pytest.mark.parametrize("geom", [PADS[0], PADS[3]])
def test_pad_crop_masked_tiles(geom, gen, monkeypatch):
    """2x4 tiles: many programs per plane, partial tiles at the far edges."""
    monkeypatch.setattr(tk_pad, "TILE_OVERRIDE", (2, 4, 1))
    h, w, top, left, height, width = geom
    x = torch.randn(1, w, h, generator=gen, dtype=torch.float64).transpose(-1, -2)
    g = torch.randn(1, height, width, generator=gen, dtype=torch.float64)
    for mode in ("reflect", "replicate", "circular"):
        close(tk.pad(x, top, left, height, width, mode), pad_ref(x, top, left, height, width, mode),
              0, 0)
        close(tk.pad_backward(g, top, left, h, w, mode),
              ops.pad_backward(g, top, left, h, w, mode), 1e-14, 1e-14)
    close(tk.crop(g, 1, 2, height - 2, width - 3, torch.float32),
          g[..., 1:height - 1, 2:width - 1].float(), 0, 0)


def test_pad_crop_errors(gen):
    x = torch.randn(4, 5, generator=gen)
    with pytest.raises(RuntimeError, match="mode must be one of"):
        tk.pad(x, 1, 1, 6, 7, "mirror")
    with pytest.raises(RuntimeError, match="does not fit"):
        tk.crop(x, 1, 1, 4, 2, torch.float32)
    with pytest.raises(RuntimeError, match="floating"):
        tk.pad(x.to(torch.int32), 1, 1, 6, 7, "zeros")


# ---------------------------------------------------------------------------
# Wiring: op registration, the DECONV_EXT_KERNELS=triton switch, AOT compile
# ---------------------------------------------------------------------------


def test_cuda_kernels_registered():
    assert set(tk.OP_NAMES) >= {"spectral_solve", "spectral_mul", "spectral_solve_backward",
                                "spectral_mul_grad_k", "pad", "pad_backward", "crop"}
    for name in tk.OP_NAMES:
        assert callable(getattr(tk, name))
        if hasattr(ops, name):  # the ops this build defines (spectral_solve_ is newer)
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"deconv_ext::{name}", "CUDA"), name


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter switch exists only without CUDA")
def test_backend_triton_end_to_end(configure, monkeypatch, gen):
    import deconv_ext as dx

    calls = []
    for name in ("spectral_solve", "spectral_solve_", "spectral_mul"):
        fn = getattr(tk, name)

        def spy(*a, _fn=fn, _name=name, **kw):
            calls.append(_name)
            return _fn(*a, **kw)

        monkeypatch.setattr(tk, name, spy)
    img = torch.rand(2, 3, 12, 10, generator=gen, dtype=torch.float64) + 0.1
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64) + 0.1
    psf_c = torch.rand(3, 5, 3, generator=gen, dtype=torch.float64) + 0.1

    def run_all():
        plan = dx.DeconvPlan(psf_c, (12, 10), eps=1e-2, reg="laplacian")
        return [dx.deconvolve(img, psf, eps=1e-3),
                dx.deconvolve(img.float(), psf, method="pinv"),
                plan(img), plan.blur(img), plan.adjoint(img)]

    configure(kernels="auto")
    expect = run_all()
    assert not calls
    configure(kernels="triton")
    got = run_all()
    assert {"spectral_mul"} <= set(calls) and ({"spectral_solve", "spectral_solve_"} & set(calls))
    for a, b in zip(got, expect):
        tol = 1e-5 if a.dtype == torch.float32 else 1e-12
        close(a, b, tol, tol)


AOT_SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ["TRITON_INTERPRET"] = "0"   # real JIT functions, compiled below without a GPU
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    from deconv_ext.triton_kernels import _interpret, pad_crop, spectral
    assert not _interpret.INTERPRETED
    calls = []

    class Recorder:  # stands in for kernel[grid]: records the launch arguments
        def __init__(self, fn):
            self.fn = fn
        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((self.fn, a, kw))

    for mod in (spectral, pad_crop):
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                setattr(mod, name, Recorder(obj))
    g = torch.Generator().manual_seed(0)
    for cdt, rdt in ((torch.complex64, torch.float32), (torch.complex128, torch.float64)):
        y = torch.randn(2, 3, 64, 33, dtype=cdt, generator=g)
        k = torch.randn(3, 64, 33, dtype=cdt, generator=g)
        th = torch.rand(2, 1, 1, 1, dtype=rdt, generator=g)
        reg = torch.rand(64, 33, dtype=rdt, generator=g)
        spectral.spectral_solve(y, k, reg, 0.1, th)
        spectral.spectral_solve(y.transpose(-1, -2), k.transpose(-1, -2), None, 0.1, th)
        spectral.spectral_mul(y, k, True)
        spectral.spectral_solve_backward(y, y, k, reg, 0.1, th)
    # 1080 x 1920 images: half-spectrum rows of 961 (no multiple of 16 in
    # any size or stride): the full blocks must stay 16 bytes wide.
    first_odd = len(calls)
    yo = torch.zeros(2, 3, 1080, 961, dtype=torch.complex64)
    ko = torch.zeros(3, 1080, 961, dtype=torch.complex64)
    spectral.spectral_solve(yo, ko, None, 0.1, torch.rand(2, 1, 1, 1, generator=g))
    spectral.spectral_mul(yo, ko, False, scale=0.5)
    odd = set(range(first_odd, len(calls)))
    x = torch.randn(2, 5, 7, dtype=torch.float16, generator=g)
    pad_crop.pad(x, 2, 3, 9, 12, "reflect")
    pad_crop.pad(x.double(), 2, 3, 9, 12, "symmetric")
    pad_crop.pad_backward(x.float(), 1, 1, 3, 4, "circular")
    pad_crop.pad_backward(x.double(), 1, 1, 3, 4, "replicate")
    pad_crop.crop(x.double(), 1, 1, 3, 4, torch.bfloat16)
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    def compile_(fn, args, kw):
        bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kw)
        options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
        return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=options.__dict__)

    done, wide = set(), set()
    for n, (fn, args, kw) in enumerate(calls):
        bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kw)
        key = (fn.__name__, str(spec), str(sorted(kw.items())))
        if key in done:
            continue
        done.add(key)
        c = compile_(fn, args, kw)
        assert c.asm.get("cubin"), fn.__name__
        ptx = c.asm["ptx"]
        f32 = args[0].dtype == torch.float32
        if (n in odd or fn.__name__ == "_solve_kernel") and kw.get("FLAT") and f32 \\
                and not kw.get("HAS_REG"):
            # The main path: 16-byte vector accesses, no shared-memory layout shuffles.
            assert "ld.global.v4" in ptx and "st.global.v4" in ptx, (fn.__name__, n, "not vectorised")
            assert c.metadata.shared == 0, c.metadata.shared
        if fn.__name__ in ("_solve_kernel", "_mul_kernel", "_solve_backward_kernel"):
            # Products rounded before they are summed, as on the CPU: the
            # |K|^2 > thresh decisions agree at exact ties.
            assert "fma." not in ptx, (fn.__name__, "FMA contraction")
        if fn.__name__ not in wide and "INT64" in kw:
            # The 64-bit specialisation: no index product in 32 bits (a
            # column start or row offset that could wrap past 2**31).
            wide.add(fn.__name__)
            ttir = compile_(fn, args, dict(kw, INT64=True)).asm["ttir"]
            narrow = [l.strip() for l in ttir.splitlines() if "arith.muli" in l and ": i32" in l]
            assert not narrow, (fn.__name__, narrow[:3])
    print("COMPILED", len(done), "INT64", sorted(wide))
''')


@pytest.mark.skipif(HAS_CUDA, reason="the GPU machine compiles for real in the cuda tests")
def test_kernels_compile_for_sm90():
    """Every kernel specialisation the launchers use compiles to sm_90 cubin.

    The interpreter accepts code that the GPU compiler rejects (e.g. reading
    a non-constexpr global); this runs the real compiler without a GPU.
    """
    try:
        from triton.compiler import make_backend  # noqa: F401
        from triton.runtime.jit import create_function_from_signature  # noqa: F401
    except ImportError as exc:  # pragma: no cover - other Triton versions
        pytest.skip(f"this Triton has no ahead-of-time compile API: {exc}")
    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "COMPILED" in res.stdout


# ---------------------------------------------------------------------------
# CUDA: the registered Triton kernels against the CPU (C++) path
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("cdt,rtol,atol", CPP_TOL)
def test_cuda_spectral_ops_match_cpu(cdt, rtol, atol, gen):
    y, k, reg, thresh = solve_inputs((4, 3, 33, 17), (3, 33, 17), (4, 1, 1, 1), (33, 17), cdt, gen)
    dev = torch.device("cuda")
    yc, kc, rc, tc = (t.to(dev) for t in (y, k, reg, thresh))
    for r, rcuda, eps in ((None, None, 0.1), (reg, rc, 0.2), (None, None, 0.0)):
        got = ops.spectral_solve(yc, kc, rcuda, eps, tc)
        close(got.cpu(), ops.spectral_solve(y, k, r, eps, thresh), rtol * 5, atol * 5)
        buf = yc.clone()
        ops.spectral_solve_(buf, kc, rcuda, eps, tc)
        close(buf, got, rtol * 5, atol * 5)
    ys = yc.transpose(-1, -2)
    close(ops.spectral_mul(ys, kc.transpose(-1, -2).conj(), True).cpu(),
          ops.spectral_mul(ys.cpu(), k.transpose(-1, -2).conj(), True), rtol * 5, atol * 5)
    grad = cspec(y.shape, cdt, gen)
    for a, b in zip(ops.spectral_solve_backward(grad.to(dev), yc, kc, rc, 0.2, tc),
                    ops.spectral_solve_backward(grad, y, k, reg, 0.2, thresh)):
        close(a.cpu(), b, rtol * 100, atol * 100)
    close(ops.spectral_mul_grad_k(grad.to(dev), yc, [3, 1, 17], True).cpu(),
          ops.spectral_mul_grad_k(grad, y, [3, 1, 17], True), rtol * 100, atol * 100)


@pytest.mark.cuda
@cuda
def test_cuda_pad_crop_match_cpu(gen):
    x = torch.randn(2, 3, 37, 29, generator=gen, dtype=torch.float64).transpose(-1, -2)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        xd = x.to(dtype)
        for mode in MODES:
            a = ops.pad(xd.cuda(), 5, 40, 64, 120, mode)
            close(a.cpu(), ops.pad(xd, 5, 40, 64, 120, mode), 0, 0)
            g = torch.randn(2, 3, 64, 120, generator=gen, dtype=a.dtype)
            close(ops.pad_backward(g.cuda(), 5, 40, 29, 37, mode).cpu(),
                  ops.pad_backward(g, 5, 40, 29, 37, mode), 1e-5, 1e-5)
        for dst in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            close(ops.crop(xd.cuda(), 3, 4, 20, 30, dst).cpu(), ops.crop(xd, 3, 4, 20, 30, dst), 0, 0)


@pytest.mark.cuda
@cuda
def test_cuda_deconvolve_matches_cpu_and_grads(gen):
    import deconv_ext as dx

    img = torch.rand(2, 3, 64, 48, generator=gen) + 0.1
    psf = torch.rand(3, 5, 5, generator=gen) + 0.1
    for kw in (dict(eps=1e-2), dict(eps=1e-3, reg="laplacian"), dict(method="pinv")):
        close(dx.deconvolve(img.cuda(), psf.cuda(), **kw).cpu(), dx.deconvolve(img, psf, **kw),
              2e-4, 2e-4)
    plan_c = dx.DeconvPlan(psf.cuda(), (64, 48), eps=1e-2)
    plan = dx.DeconvPlan(psf, (64, 48), eps=1e-2)
    close(plan_c(img.cuda()).cpu(), plan(img), 2e-4, 2e-4)
    close(plan_c.blur(img.cuda()).cpu(), plan.blur(img), 1e-5, 1e-5)
    close(plan_c.adjoint(img.cuda()).cpu(), plan.adjoint(img), 1e-5, 1e-5)
    # Autograd through the CUDA kernels (the backward ops run on CUDA too).
    xs = img.double().requires_grad_()
    xc = img.double().cuda().requires_grad_()
    pd = psf.double()
    dx.deconvolve(xs, pd, eps=1e-2).square().sum().backward()
    dx.deconvolve(xc, pd.cuda(), eps=1e-2).square().sum().backward()
    close(xc.grad.cpu(), xs.grad, 1e-10, 1e-10)
    with pytest.raises((ValueError, RuntimeError)):
        dx.deconvolve(img.cuda(), psf)  # mixed devices: a clear error, no device fault


@pytest.mark.cuda
@cuda
def test_cuda_large_offsets_int64():
    """A spectrum beyond 2**31 float offsets takes the 64-bit index path."""
    free, _ = torch.cuda.mem_get_info()
    n = 2**30 + 5  # complex64 elements: 2**31 + 10 floats
    if free < 3 * n * 8 + (1 << 30):
        pytest.skip("not enough GPU memory for the int64 test")
    y = torch.full((n,), 1 + 2j, dtype=torch.complex64, device="cuda")
    k = torch.full((1,), 2 - 1j, dtype=torch.complex64, device="cuda")
    out = ops.spectral_mul(y, k, False)
    expect = torch.tensor(4 + 3j, dtype=torch.complex64)
    assert torch.equal(out[-3:].cpu(), expect.expand(3))
    assert torch.equal(out[:2].cpu(), expect.expand(2))
    del y, out
    torch.cuda.empty_cache()
