"""Non-circular boundaries: forward models vs scipy.ndimage, exact solvers vs
dense least squares of the materialised operator, the DCT solve, the padded
fast path on a natural image, and bad input.

The dense operators are built here from scipy.ndimage.convolve / F.pad +
F.conv2d applied to basis vectors, independently of the library.
"""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

import deconv_ext as dx
from deconv_ext import reference
from deconv_ext.maths import dct as mdct
from deconv_ext.maths import padding
from deconv_ext.plans.padded import padded_geometry, taper_border
from deconv_ext.solvers import dct as sdct
from deconv_ext.solvers.operators import ConvOperator
from oracles import invertible_psf, rel_err

SCIPY_MODE = {"reflect": "mirror", "symmetric": "reflect", "replicate": "nearest",
              "zeros": "constant", "circular": "wrap"}
NONCIRC = ("reflect", "symmetric", "replicate", "zeros")


def scipy_blur(x: torch.Tensor, psf: torch.Tensor, boundary: str) -> torch.Tensor:
    xs = x.numpy()
    ps = np.broadcast_to(psf.numpy(), xs.shape[:-2] + psf.shape[-2:])
    out = np.empty_like(xs)
    for idx in np.ndindex(*xs.shape[:-2]):
        out[idx] = ndi.convolve(xs[idx], ps[idx], mode=SCIPY_MODE[boundary])
    return torch.from_numpy(out)


def dense_image_op(psf: torch.Tensor, size, boundary: str) -> torch.Tensor:
    """(H*W, H*W) matrix of scipy.ndimage.convolve with the boundary's scipy mode."""
    H, W = size
    A = np.empty((H * W, H * W))
    for i in range(H * W):
        e = np.zeros(H * W)
        e[i] = 1.0
        A[:, i] = ndi.convolve(e.reshape(H, W), psf.numpy(), mode=SCIPY_MODE[boundary]).ravel()
    return torch.from_numpy(A)


def layer_forward(x, weight, groups, dilation, padding, padding_mode):
    """nn.Conv2d semantics, stride 1, written with F.pad + F.conv2d."""
    if padding == "valid":
        return F.conv2d(x, weight, dilation=dilation, groups=groups)
    pads = []
    for k, d in zip(reversed(weight.shape[-2:]), reversed(dilation)):
        t = d * (k - 1)
        pads += [t // 2, t - t // 2]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.conv2d(F.pad(x, pads, mode=mode), weight, dilation=dilation, groups=groups)


def dense_layer_op(weight, in_shape, groups, dilation, padding, padding_mode):
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, *in_shape)
    return layer_forward(basis, weight, groups, dilation, padding, padding_mode).reshape(n, -1).T


def tikhonov_dense(A, y, eps):
    n = A.shape[1]
    return torch.linalg.solve(A.T @ A + eps * torch.eye(n, dtype=A.dtype), A.T @ y)


def psnr(x, ref):
    return float(10 * torch.log10(1.0 / ((x - ref) ** 2).mean()))


def gaussian(k, sigma, dtype=torch.float64):
    t = torch.arange(k, dtype=dtype) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g[:, None] * g[None, :]
    return g / g.sum()


# ---------------------------------------------------------------------------
# Forward models
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("boundary", NONCIRC + ("circular",))
@pytest.mark.parametrize("ksize", [(3, 3), (4, 5), (6, 2)])
def test_convolve_matches_scipy(gen, boundary, ksize):
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, *ksize, generator=gen, dtype=torch.float64)
    y = dx.convolve(x, psf, boundary=boundary)
    assert rel_err(y, scipy_blur(x, psf, boundary)) < 1e-13


@pytest.mark.parametrize("boundary", NONCIRC + ("valid",))
def test_operator_adjoint_is_exact(gen, boundary):
    psf = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    op = ConvOperator(psf, (9, 7), boundary, torch.float64)
    x = torch.randn(3, *op.in_size, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 9, 7, generator=gen, dtype=torch.float64)
    lhs = (op.matvec(x) * y).sum()
    rhs = (x * op.rmatvec(y)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(lhs.abs() + rhs.abs())


def test_plan_boundary_blur_adjoint_and_pickle(gen):
    psf = torch.rand(5, 5, generator=gen, dtype=torch.float64)
    plan = dx.DeconvPlan(psf, (12, 10), eps=1e-2, boundary="replicate", taper=3)
    x = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    assert rel_err(plan.blur(x), scipy_blur(x, psf, "replicate")) < 1e-13
    assert abs(float((plan.blur(x) * y).sum() - (x * plan.adjoint(y)).sum())) < 1e-12
    plan2 = pickle.loads(pickle.dumps(plan))
    assert plan2.boundary == "replicate" and plan2.fft_size == plan.fft_size
    assert torch.equal(plan2(y), plan(y))


# ---------------------------------------------------------------------------
# Exact solvers vs dense least squares (float64)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(9, 7), (8, 10)])
@pytest.mark.parametrize("boundary", NONCIRC + ("circular",))
def test_cg_tikhonov_equals_dense(gen, size, boundary):
    psf = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    A = dense_image_op(psf, size, boundary)
    y = torch.randn(2, *size, generator=gen, dtype=torch.float64)
    eps = 1e-2
    want = torch.stack([tikhonov_dense(A, yi.flatten(), eps).reshape(size) for yi in y])
    its = {}
    for pc in ("auto", "none", "dct", "fft"):
        x, info = dx.deconvolve(y, psf, eps=eps, boundary=boundary, solver="cg", tol=1e-11,
                                precond=pc, return_info=True)
        assert bool(info.converged.all()) and info.iterations.shape == (2,)
        assert (x - want).abs().max() <= 1e-6 * want.abs().max()
        its[pc] = info.max_iterations
    print(f"\n{boundary} {size}: CG iterations to 1e-11 by preconditioner {its}")


@pytest.mark.parametrize("boundary", NONCIRC)
def test_cg_pinv_equals_dense_pinv(gen, boundary):
    size = (9, 7)
    psf = invertible_psf(gen, 3, 3)
    A = dense_image_op(psf, size, boundary)
    y = torch.randn(size, generator=gen, dtype=torch.float64)
    want = (torch.linalg.pinv(A) @ y.flatten()).reshape(size)
    x = dx.deconvolve(y, psf, method="pinv", boundary=boundary, solver="cg", tol=1e-12)
    assert (x - want).abs().max() <= 1e-6 * want.abs().max()


def test_cg_min_norm_of_rank_deficient_operator(gen):
    # A 2x2 box with zero boundary on an even grid has a null space: plain
    # CGLS from 0 must return the minimum-norm least-squares solution.
    size = (8, 6)
    psf = torch.ones(2, 2, dtype=torch.float64) / 4
    A = dense_image_op(psf, size, "circular")
    assert torch.linalg.matrix_rank(A) < A.shape[0]
    y = torch.randn(size, generator=gen, dtype=torch.float64)
    want = (torch.linalg.pinv(A, rtol=1e-10) @ y.flatten()).reshape(size)
    x = dx.deconvolve(y, psf, eps=0.0, boundary="circular", solver="cg", tol=1e-12)
    assert (x - want).abs().max() <= 1e-6 * want.abs().max()


@pytest.mark.parametrize("eps", [0.0, 1e-2])
@pytest.mark.parametrize("layer", ["depthwise", "dense"])
def test_conv2d_pinv_valid_equals_dense(gen, eps, layer):
    # "valid": the input (10x9) is larger than the output (8x7): underdetermined,
    # eps = 0 is the minimum-norm solution torch.linalg.pinv gives.
    if layer == "depthwise":
        w = torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64)
        groups, c_in = 2, 2
    else:
        w = torch.randn(2, 3, 3, 2, generator=gen, dtype=torch.float64)
        groups, c_in = 1, 3
    out_size = (8, 7)
    in_shape = (c_in, out_size[0] + 2, out_size[1] + w.shape[-1] - 1)
    A = dense_layer_op(w, in_shape, groups, (1, 1), "valid", "zeros")
    y = torch.randn(2, 2, *out_size, generator=gen, dtype=torch.float64)
    b = torch.randn(2, generator=gen, dtype=torch.float64)
    yb = y - b[:, None, None]
    if eps == 0:
        want = (torch.linalg.pinv(A) @ yb.reshape(2, -1).T).T.reshape(2, *in_shape)
    else:
        want = torch.stack([tikhonov_dense(A, v.flatten(), eps).reshape(in_shape) for v in yb])
    x, info = dx.conv2d_pinv(y, w, bias=b, groups=groups, padding="valid", eps=eps, tol=1e-12,
                             return_info=True)
    assert x.shape == (2, *in_shape)
    assert (x - want).abs().max() <= 1e-6 * want.abs().max()
    assert bool(info.converged.all())


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("layer", ["depthwise", "grouped"])
def test_conv2d_pinv_same_padding_modes_equal_dense(gen, padding_mode, layer):
    if layer == "depthwise":
        w = torch.randn(3, 1, 3, 2, generator=gen, dtype=torch.float64)
        w[:, :, 1, 1] += 3.0
        groups, c_in, dil = 3, 3, (1, 2)
    else:
        w = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
        w[:, :, 1, 1] += 3.0
        groups, c_in, dil = 2, 2, (1, 1)
    size = (7, 8)
    in_shape = (c_in, *size)
    A = dense_layer_op(w, in_shape, groups, dil, "same", padding_mode)
    y = torch.randn(w.shape[0], *size, generator=gen, dtype=torch.float64)
    eps = 1e-3
    want = tikhonov_dense(A, y.flatten(), eps).reshape(in_shape)
    x = dx.conv2d_pinv(y, w, groups=groups, dilation=dil, padding_mode=padding_mode, eps=eps,
                       solver="cg", tol=1e-12)
    assert x.shape == in_shape
    assert (x - want).abs().max() <= 1e-6 * want.abs().max()


# ---------------------------------------------------------------------------
# DCT
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (5, 8), (2, 9, 6)])
def test_dct2_matches_scipy(gen, shape):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    want = scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    assert np.abs(mdct.dct2(x).numpy() - want).max() < 1e-13
    assert (mdct.idct2(mdct.dct2(x)) - x).abs().max() < 1e-13


@pytest.mark.parametrize("size", [(9, 7), (8, 10)])
@pytest.mark.parametrize("method,eps,reg", [("tikhonov", 1e-2, None), ("pinv", 0.0, None),
                                            ("tikhonov", 1e-3, "laplacian")])
def test_dct_solve_equals_dense(gen, size, method, eps, reg):
    half = torch.rand(3, 2, generator=gen, dtype=torch.float64)
    psf = torch.cat([half, half[:-1].flip(0)], 0)       # 5 rows, symmetric
    psf = torch.cat([psf, psf[:, :-1].flip(1)], 1)       # 5x3, symmetric in each axis
    psf[2, 1] += 2.0
    A = dense_image_op(psf, size, "symmetric")
    y = torch.randn(2, *size, generator=gen, dtype=torch.float64)
    if method == "pinv":
        want = (torch.linalg.pinv(A) @ y.reshape(2, -1).T).T.reshape(2, *size)
    else:
        R = (torch.eye(A.shape[0], dtype=A.dtype) if reg is None else
             dense_image_op(torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]],
                                         dtype=torch.float64), size, "symmetric"))
        N = A.T @ A + eps * R.T @ R
        want = torch.linalg.solve(N, A.T @ y.reshape(2, -1).T).T.reshape(2, *size)
    x, info = dx.deconvolve(y, psf, eps=eps, method=method, reg=reg, boundary="symmetric",
                            solver="dct", return_info=True)
    assert (x - want).abs().max() <= 1e-10 * want.abs().max()
    assert info.max_iterations == 0 and float(info.residual.max()) < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (7, 1), (2, 2), (3, 4), (8, 8), (9, 9),
                                   (6, 15), (17, 10), (2, 3, 12, 7), (4, 1, 5, 16)])
def test_dct2_idct2_2d_makhoul_match_scipy(gen, shape, dtype, tol):
    # dct2 / idct2 are one rfft2 / irfft2 of the 2D-reordered array (2D Makhoul).
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    xs = x.numpy()
    got = mdct.dct2(x.to(dtype))
    assert got.dtype == dtype and got.shape == x.shape
    assert np.abs(got.double().numpy() - scipy.fft.dctn(xs, axes=(-2, -1), norm="ortho")).max() < tol
    inv = mdct.idct2(x.to(dtype))
    assert inv.dtype == dtype and inv.shape == x.shape
    assert np.abs(inv.double().numpy() - scipy.fft.idctn(xs, axes=(-2, -1), norm="ortho")).max() < tol


def test_dct2_gradients_are_the_transposes(gen):
    # Orthonormal: the adjoint of dct2 is idct2, so <dct2(x), y> = <x, idct2(y)>.
    x = torch.randn(2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 6, 7, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad((mdct.dct2(x) * y).sum(), x)
    assert (g - mdct.idct2(y)).abs().max() < 1e-13


def _dct_psf(gen, dtype=torch.float64):
    half = torch.rand(3, 2, generator=gen, dtype=dtype)
    psf = torch.cat([half, half[:-1].flip(0)], 0)
    psf = torch.cat([psf, psf[:, :-1].flip(1)], 1)
    psf[2, 1] += 2.0
    return psf


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(9, 7), (8, 10), (2, 3, 16, 12)])
@pytest.mark.parametrize("method,eps,reg", [("tikhonov", 1e-2, None), ("pinv", 0.0, None),
                                            ("tikhonov", 1e-3, "laplacian")])
def test_dct_solve_cpp_scipy_and_torch_transforms_agree(configure, gen, shape, dtype, tol, method,
                                                        eps, reg):
    # Eager CPU calls run the C++ solve (csrc/dct.cpp); DECONV_EXT_CPU_FFT=scipy pocketfft's
    # native DCTs; autograd and compile the dct_solve op; GPU the torch 2D Makhoul
    # transforms. Same answer, cached or not, and equal to scipy.fft's own dctn / idctn.
    import scipy.fft

    from deconv_ext import execution
    from deconv_ext.plans import cache as plan_cache

    psf = _dct_psf(gen, dtype)
    y = torch.randn(*shape, generator=gen, dtype=dtype)
    kw = dict(eps=eps, method=method, reg=reg, boundary="symmetric", solver="dct")
    plan_cache.clear()
    assert execution.route(y, torch.ones(y.shape[-2:], dtype=dtype), fft=False) == "pipeline"
    a = dx.deconvolve(y, psf, **kw)
    b = dx.deconvolve(y, psf, **kw)                      # cached filter
    d = dx.deconvolve(y.clone().requires_grad_(True), psf, **kw).detach()  # the op
    configure(cpu_fft="scipy")
    c = dx.deconvolve(y, psf, **kw)
    filt = sdct._dct_filter(psf, tuple(shape[-2:]), eps, method, reg,
                            10 * max(shape[-2:]) * torch.finfo(dtype).eps, dtype)
    e = mdct.idct2(mdct.dct2(y) * filt)                  # the torch transforms
    ref = scipy.fft.idctn(filt.double().numpy() * scipy.fft.dctn(
        y.double().numpy(), axes=(-2, -1), norm="ortho"), axes=(-2, -1), norm="ortho")
    assert a.dtype == dtype and a.shape == y.shape and a.is_contiguous()
    scale = float(a.abs().max())
    assert (a - b).abs().max() == 0
    for other in (c, d, e, torch.from_numpy(ref).to(dtype)):
        assert (a - other).abs().max() <= tol * scale


def test_dct_solve_per_sample_psf_and_cache_by_content(gen):
    from deconv_ext.plans import cache as plan_cache

    psfs = torch.stack([_dct_psf(gen), _dct_psf(gen)])[:, None]      # (2, 1, 5, 3)
    y = torch.randn(2, 3, 10, 9, generator=gen, dtype=torch.float64)
    plan_cache.clear()
    x = dx.deconvolve(y, psfs, eps=1e-2, boundary="symmetric", solver="dct")
    for n in range(2):
        want = dx.deconvolve(y[n], psfs[n, 0], eps=1e-2, boundary="symmetric", solver="dct")
        assert (x[n] - want).abs().max() < 1e-12
    # A PSF refilled in place gives another filter, not the cached one.
    psf = _dct_psf(gen)
    first = dx.deconvolve(y, psf, eps=1e-2, boundary="symmetric", solver="dct")
    psf.mul_(2.0)
    second = dx.deconvolve(y, psf, eps=1e-2, boundary="symmetric", solver="dct")
    assert (first - second).abs().max() > 1e-3


def test_dct_solve_gradients(gen):
    # With autograd the torch transforms run (the pocketfft path is for no-grad calls).
    psf = _dct_psf(gen)
    y = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda y_: dx.deconvolve(y_, psf, eps=1e-1, boundary="symmetric",
                                                      solver="dct"), (y,))
    p = psf.clone().requires_grad_(True)
    dx.deconvolve(y.detach(), p, eps=1e-1, boundary="symmetric", solver="dct").square().sum().backward()
    assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().max()) > 0


def test_dct_preconditioner_is_exact_for_symmetric_boundary(gen):
    psf = gaussian(7, 1.5)
    y = torch.randn(16, 12, generator=gen, dtype=torch.float64)
    _, info = dx.deconvolve(y, psf, eps=1e-3, boundary="symmetric", solver="cg",
                            precond="dct", return_info=True)
    assert info.max_iterations <= 2


# ---------------------------------------------------------------------------
# The padded fast path
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def camera():
    from skimage import data, transform

    img = transform.resize(data.camera().astype(np.float64) / 255, (96, 96), anti_aliasing=True)
    return torch.from_numpy(img)


@pytest.mark.parametrize("boundary", ["reflect", "zeros"])
def test_psnr_circular_lt_padded_lt_exact(camera, boundary):
    psf = gaussian(9, 2.0)
    gen = torch.Generator().manual_seed(7)
    y = dx.convolve(camera, psf, boundary=boundary)
    y = y + 1e-3 * torch.randn(y.shape, generator=gen, dtype=y.dtype)
    eps = 1e-3
    p_circ = psnr(dx.deconvolve(y, psf, eps=eps), camera)
    p_pad = psnr(dx.deconvolve(y, psf, eps=eps, boundary=boundary), camera)
    p_exact = psnr(dx.deconvolve(y, psf, eps=eps, boundary=boundary, solver="cg"), camera)
    print(f"\n{boundary}: PSNR circular {p_circ:.2f} padded {p_pad:.2f} exact {p_exact:.2f} dB")
    assert p_pad > p_circ + 2.0
    assert p_exact > p_pad + 0.3


def test_padded_path_is_pad_solve_crop(gen):
    # The fast path equals: numpy-pad the observation to the plan's geometry,
    # circular Tikhonov solve there (the reference spec), crop.
    psf = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 13, 11, generator=gen, dtype=torch.float64)
    geo = padded_geometry((13, 11), (5, 4))
    Nh, Nw = geo.fft_size
    assert Nh >= 13 + 4 and Nw >= 11 + 2 and geo.top >= 2 and geo.left >= 2
    padded = np.pad(y.numpy(), ((0, 0), (geo.top, Nh - 13 - geo.top), (geo.left, Nw - 11 - geo.left)),
                    mode="symmetric")
    want = dx.reference.deconvolve(torch.from_numpy(padded), psf, eps=1e-2)
    want = want[..., geo.top:geo.top + 13, geo.left:geo.left + 11]
    got = dx.deconvolve(y, psf, eps=1e-2, boundary="symmetric")
    assert rel_err(got, want) < 1e-12


def test_padded_path_half_dtype_and_torch_backend(gen, monkeypatch):
    psf = gaussian(5, 1.0, torch.float32)
    y = torch.rand(2, 20, 17, generator=gen)
    want = dx.deconvolve(y, psf, eps=1e-2, boundary="reflect", taper=4)
    got = dx.deconvolve(y.half(), psf, eps=1e-2, boundary="reflect", taper=4)
    assert got.dtype == torch.float16 and got.shape == y.shape
    assert rel_err(got.float(), want) < 5e-3
    # The reference: the same extension and taper, then the pure-torch circular solve.
    plan = dx.DeconvPlan(psf, (20, 17), eps=1e-2, boundary="reflect", taper=4)
    geo = plan.geometry
    buf = padding.pad(y, geo.top, geo.left, *geo.fft_size, "reflect")
    buf = taper_border(buf, geo, 4)
    ref = reference.deconvolve(buf, psf, eps=1e-2)[..., geo.top:geo.top + 20, geo.left:geo.left + 17]
    assert rel_err(ref, want) < 1e-5


def test_taper_blends_border_to_mean(gen, camera):
    y = camera[:40, :30].clone()
    geo = padded_geometry((40, 30), (9, 9), taper=6)
    buf = torch.ops.deconv_ext.pad(y, geo.top, geo.left, *geo.fft_size, "reflect")
    t = taper_border(buf, geo, 6)
    inner = (slice(geo.top, geo.top + 40), slice(geo.left, geo.left + 30))
    assert torch.equal(t[inner], y)                       # the image itself is untouched
    assert torch.allclose(t[0], y.mean().expand(t.shape[-1]))  # far border at the mean
    assert torch.allclose(t[-1], t[0]) and torch.allclose(t[:, 0], t[:, -1])  # wraps continuously
    x = dx.deconvolve(dx.convolve(y, gaussian(9, 2.0), "zeros"), gaussian(9, 2.0), eps=1e-3,
                      boundary="zeros", taper=6)
    assert torch.isfinite(x).all() and x.shape == y.shape


# ---------------------------------------------------------------------------
# Robustness, gradients, bad input
# ---------------------------------------------------------------------------

def test_nonconvergence_warns_and_returns_best_finite(gen):
    psf = gaussian(7, 2.0)
    y = torch.randn(2, 24, 20, generator=gen, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="relative residual reached"):
        x, info = dx.deconvolve(y, psf, method="pinv", boundary="reflect", solver="cg",
                                max_iter=3, return_info=True)
    assert torch.isfinite(x).all()
    assert not bool(info.converged.any()) and int(info.iterations.max()) == 3
    assert torch.isfinite(info.residual).all()


def test_zero_observation_gives_zero_without_nan():
    psf = gaussian(5, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = dx.deconvolve(torch.zeros(2, 10, 9, dtype=torch.float64), psf, eps=1e-2,
                          boundary="zeros", solver="cg")
    assert torch.equal(x, torch.zeros_like(x))


def test_cg_gradient_wrt_image(gen):
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64) + torch.eye(3, dtype=torch.float64)
    y = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(t):
        return dx.deconvolve(t, psf, eps=1e-1, boundary="replicate", solver="cg", tol=1e-13)

    assert torch.autograd.gradcheck(f, (y,), atol=1e-7)


@pytest.mark.parametrize("kwargs,match", [
    (dict(boundary="mirror"), "boundary='mirror' is not valid; expected one of 'circular', 'reflect'"),
    (dict(boundary="reflect", solver="cg", tol=0.0), "tol=0.0 is not valid"),
    (dict(boundary="reflect", solver="cg", tol=-1e-3), "tol=-0.001"),
    (dict(boundary="reflect", solver="cg", max_iter=0), "max_iter=0 is not valid"),
    (dict(boundary="reflect", solver="lsqr"), "solver='lsqr' is not valid; expected one of 'fft', 'cg', 'dct'"),
    (dict(boundary="reflect", solver="dct"), "solver='dct' solves boundary='symmetric'"),
    (dict(boundary="reflect", taper=-2), "taper=-2 is not valid"),
    (dict(boundary="reflect", solver="cg", precond="jacobi"), "precond='jacobi' is not valid"),
    (dict(boundary="circular", taper=3), "taper="),
])
def test_bad_input_deconvolve(gen, kwargs, match):
    y = torch.randn(10, 10, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        dx.deconvolve(y, gaussian(3, 1.0), eps=1e-2, **kwargs)


def test_dct_rejects_non_symmetric_psf(gen):
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric in each axis"):
        dx.deconvolve(torch.randn(10, 10, dtype=torch.float64), psf, boundary="symmetric",
                      solver="dct")


def test_per_frequency_eps_needs_circular():
    with pytest.raises(ValueError, match="needs boundary='circular'"):
        dx.deconvolve(torch.randn(8, 8), gaussian(3, 1.0, torch.float32),
                      eps=torch.full((8, 8), 0.1), boundary="reflect")


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding_mode="mirror"), "padding_mode='mirror' is not valid; expected one of 'zeros', 'reflect', 'replicate', 'circular'"),
    (dict(padding="full"), "padding='full' is not valid; expected one of 'same', 'valid'"),
    (dict(padding="valid", solver="fft"), "padding='valid' has no FFT solve"),
    (dict(padding_mode="zeros", tol=0), "tol=0 is not valid"),
    (dict(padding_mode="zeros", max_iter=-1), "max_iter=-1 is not valid"),
])
def test_bad_input_conv2d_pinv(gen, kwargs, match):
    w = torch.randn(2, 1, 3, 3, generator=gen)
    with pytest.raises(ValueError, match=match):
        dx.conv2d_pinv(torch.randn(1, 2, 8, 8), w, groups=2, **kwargs)
