"""Foundation: the circular pseudo-inverse / Tikhonov solve, both conventions,
checked against independent oracles (scipy.ndimage, F.conv2d, dense operator
matrices, scikit-image) and the C++ path against the reference."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import deconv_ext as dx
from deconv_ext import reference
from deconv_ext.maths import spectral
from oracles import (conv2d_circular, dense_image_operator, dense_layer_operator, invertible_psf,
                     rel_err)

ops = torch.ops.deconv_ext


def wrap_convolve(x: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """scipy.ndimage.convolve(mode="wrap") over the leading dims (psf broadcast)."""
    xs = x.numpy()
    ps = np.broadcast_to(psf.numpy(), xs.shape[:-2] + psf.shape[-2:])
    out = np.empty_like(xs)
    for idx in np.ndindex(*xs.shape[:-2]):
        out[idx] = ndi.convolve(xs[idx], ps[idx], mode="wrap")
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------
# Exact inversion of invertible blurs (float64, <= 1e-10)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,ksize", [
    ((12, 9), (3, 3)), ((10, 14), (4, 2)), ((2, 3, 11, 8), (5, 4)), ((3, 16, 13), (2, 5)),
    ((7, 7), (7, 6)),
])
@pytest.mark.parametrize("method", ["pinv", "tikhonov0"])
def test_deconvolve_inverts_scipy_wrap_convolve(gen, shape, ksize, method):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    psf = invertible_psf(gen, *ksize)
    y = wrap_convolve(x, psf)
    kw = dict(method="pinv") if method == "pinv" else dict(method="tikhonov", eps=0.0)
    assert rel_err(dx.deconvolve(y, psf, **kw), x) <= 1e-10
    assert rel_err(dx.convolve(x, psf), y) <= 1e-12


def test_deconvolve_per_channel_and_per_sample_psf(gen):
    x = torch.randn(2, 3, 10, 9, generator=gen, dtype=torch.float64)
    per_channel = torch.stack([invertible_psf(gen, 3, 4) for _ in range(3)])  # (3, 3, 4)
    per_sample = torch.stack([invertible_psf(gen, 5, 3) for _ in range(2)])[:, None]  # (2, 1, 5, 3)
    for psf in (per_channel, per_sample):
        y = wrap_convolve(x, psf)
        out = dx.deconvolve(y, psf, method="pinv")
        assert out.shape == x.shape
        assert rel_err(out, x) <= 1e-10


@pytest.mark.parametrize("ksize,dilation,size", [
    ((3, 3), (1, 1), (12, 9)), ((4, 2), (1, 1), (10, 11)), ((3, 2), (2, 3), (13, 12)),
    ((2, 2), (3, 1), (9, 8)),
])
def test_conv2d_pinv_inverts_circular_depthwise_conv(gen, ksize, dilation, size):
    C = 3
    x = torch.randn(2, C, *size, generator=gen, dtype=torch.float64)
    w = torch.stack([invertible_psf(gen, *ksize) for _ in range(C)])[:, None]  # (C, 1, kh, kw)
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    y = conv2d_circular(x, w, bias, groups=C, dilation=dilation)
    out = dx.conv2d_pinv(y, w, bias, groups=C, dilation=dilation)
    assert rel_err(out, x) <= 1e-10
    plan = dx.DeconvPlan.for_conv2d(w, size, groups=C, dilation=dilation, bias=bias)
    assert rel_err(plan.blur(x), y) <= 1e-12
    assert rel_err(plan(y), x) <= 1e-10


# ---------------------------------------------------------------------------
# Against the materialised operator: pinv, Tikhonov, Laplacian, per-frequency eps
# ---------------------------------------------------------------------------

def _pinv_solution(A: np.ndarray, y: torch.Tensor, size, rcond=None) -> torch.Tensor:
    if rcond is None:
        rcond = spectral.default_rcond(size, torch.float64)
    At = torch.from_numpy(A)
    return (torch.linalg.pinv(At, rtol=rcond) @ y.reshape(-1)).reshape(size)


@pytest.mark.parametrize("psf_kind,size", [
    ("box2", (8, 6)),        # exact spectral zeros on even sizes
    ("box3", (9, 12)),       # zeros at 3-periodic frequencies
    ("random", (7, 10)),
    ("random_even", (16, 12)),
])
def test_pinv_equals_dense_pinv(gen, psf_kind, size):
    if psf_kind == "box2":
        psf = torch.ones(2, 2, dtype=torch.float64) / 4
    elif psf_kind == "box3":
        psf = torch.ones(3, 3, dtype=torch.float64) / 9
    elif psf_kind == "random":
        psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    else:
        psf = torch.rand(4, 2, generator=gen, dtype=torch.float64)
    A = dense_image_operator(psf.numpy(), size)
    y = torch.randn(*size, generator=gen, dtype=torch.float64)
    expect = _pinv_solution(A, y, size)
    got = dx.deconvolve(y, psf, method="pinv")
    assert rel_err(got, expect) <= 1e-10
    if psf_kind.startswith("box"):
        # Rank deficiency is real: the dense operator has a null space.
        assert np.linalg.matrix_rank(A) < A.shape[0]


def test_pinv_rcond_drops_small_singular_values(gen):
    size = (10, 8)
    psf = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    A = dense_image_operator(psf.numpy(), size)
    y = torch.randn(*size, generator=gen, dtype=torch.float64)
    s = np.linalg.svd(A, compute_uv=False)
    distinct = np.unique(np.round(s, 8))  # singular values come with multiplicity
    rcond = float(np.sqrt(distinct[0] * distinct[1]) / s[0])  # between the two smallest
    expect = _pinv_solution(A, y, size, rcond=rcond)
    got = dx.deconvolve(y, psf, method="pinv", rcond=rcond)
    assert rel_err(got, expect) <= 1e-10
    assert rel_err(got, _pinv_solution(A, y, size)) > 1e-3  # the threshold mattered


@pytest.mark.parametrize("eps", [1e-3, 0.1, 10.0])
def test_tikhonov_equals_dense_normal_equations(gen, eps):
    size = (9, 8)
    psf = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    A = torch.from_numpy(dense_image_operator(psf.numpy(), size))
    y = torch.randn(*size, generator=gen, dtype=torch.float64)
    n = A.shape[1]
    expect = torch.linalg.solve(A.T @ A + eps * torch.eye(n, dtype=A.dtype), A.T @ y.reshape(-1))
    got = dx.deconvolve(y, psf, eps=eps)
    assert rel_err(got, expect.reshape(size)) <= 1e-10


def test_laplacian_and_kernel_regularisers_equal_dense_solve(gen):
    size = (8, 11)
    eps = 0.05
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64) + 0.1
    A = torch.from_numpy(dense_image_operator(psf.numpy(), size))
    lap = np.array(reference.LAPLACIAN)
    L = torch.from_numpy(dense_image_operator(lap, size))
    y = torch.randn(*size, generator=gen, dtype=torch.float64)
    expect = torch.linalg.solve(A.T @ A + eps * L.T @ L, A.T @ y.reshape(-1)).reshape(size)
    assert rel_err(dx.deconvolve(y, psf, eps=eps, reg="laplacian"), expect) <= 1e-10
    assert rel_err(dx.deconvolve(y, psf, eps=eps, reg=torch.from_numpy(lap)), expect) <= 1e-10


def test_per_frequency_eps_equals_dense_wiener(gen):
    size = (8, 7)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    e = torch.rand(*size, generator=gen, dtype=torch.float64) * 0.2 + 0.01  # not symmetric
    # Dense regulariser E = F^-1 diag(e_sym) F, built column by column.
    e_sym = 0.5 * (e + torch.roll(torch.flip(e, (0, 1)), (1, 1), (0, 1)))
    basis = torch.eye(size[0] * size[1], dtype=torch.float64).reshape(-1, *size)
    E = torch.fft.ifft2(e_sym * torch.fft.fft2(basis)).real.reshape(len(basis), -1).T
    A = torch.from_numpy(dense_image_operator(psf.numpy(), size))
    y = torch.randn(*size, generator=gen, dtype=torch.float64)
    expect = torch.linalg.solve(A.T @ A + E, A.T @ y.reshape(-1)).reshape(size)
    assert rel_err(dx.deconvolve(y, psf, eps=e), expect) <= 1e-10


def test_conv2d_pinv_equals_dense_pinv_depthwise_rank_deficient(gen):
    size, C = (8, 6), 2
    w = torch.rand(C, 1, 2, 2, generator=gen, dtype=torch.float64)
    w[0] = 0.25  # a box: exact spectral zeros
    A = dense_layer_operator(w, size, groups=C)
    y = torch.randn(1, C, *size, generator=gen, dtype=torch.float64)
    rcond = spectral.default_rcond(size, torch.float64)
    expect = (torch.linalg.pinv(A, rtol=rcond) @ y.reshape(-1)).reshape(y.shape)
    assert rel_err(dx.conv2d_pinv(y, w, groups=C), expect) <= 1e-10
    eps = 0.3
    expect_t = torch.linalg.solve(A.T @ A + eps * torch.eye(A.shape[1], dtype=A.dtype),
                                  A.T @ y.reshape(-1)).reshape(y.shape)
    assert rel_err(dx.conv2d_pinv(y, w, groups=C, eps=eps), expect_t) <= 1e-10


# ---------------------------------------------------------------------------
# scikit-image
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("size,ksize", [((32, 27), (5, 5)), ((20, 24), (4, 3))])
@pytest.mark.parametrize("balance", [1e-3, 0.1])
def test_laplacian_tikhonov_equals_skimage_wiener(gen, size, ksize, balance):
    from skimage.restoration import wiener

    img = torch.rand(*size, generator=gen, dtype=torch.float64)
    psf = torch.rand(*ksize, generator=gen, dtype=torch.float64)
    psf /= psf.sum()
    expect = wiener(img.numpy(), psf.numpy(), balance, clip=False)
    got = dx.deconvolve(img, psf, eps=balance, reg="laplacian")
    assert rel_err(got, torch.from_numpy(expect)) <= 1e-10


# ---------------------------------------------------------------------------
# C++ path == reference
# ---------------------------------------------------------------------------

CASES = [
    # image shape, psf shape, kwargs
    ((13, 10), (3, 3), dict(eps=1e-2)),
    ((2, 3, 12, 15), (3, 5, 4), dict(eps=0.0)),
    ((4, 2, 9, 8), (4, 1, 2, 2), dict(method="pinv")),
    ((3, 11, 11), (4, 4), dict(eps=0.05, reg="laplacian")),
    ((2, 16, 9), (5, 3), dict(eps=1e-3, reg="kernel")),
    ((5, 7), (2, 2), dict(eps="tensor")),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("img_shape,psf_shape,kw", CASES)
def test_cpp_path_equals_reference(gen, monkeypatch, dtype, tol, img_shape, psf_shape, kw):
    kw = dict(kw)
    H, W = img_shape[-2:]
    if kw.get("reg") == "kernel":
        kw["reg"] = torch.rand(3, 2, generator=gen, dtype=dtype)
    if kw.get("eps") == "tensor":
        kw["eps"] = torch.rand(H, W, generator=gen, dtype=dtype) * 0.1
    img = torch.randn(*img_shape, generator=gen, dtype=dtype)
    psf = torch.rand(*psf_shape, generator=gen, dtype=dtype)
    fast = dx.deconvolve(img, psf, **kw)
    ref = reference.deconvolve(img, psf, **kw)
    assert fast.dtype == img.dtype and fast.shape == img.shape
    assert rel_err(fast, ref) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_solve_op_reads_lazy_conj_and_noncontiguous(gen, dtype):
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    Y = torch.randn(3, 6, 5, generator=gen, dtype=cdt)
    Kraw = torch.randn(5, 6, generator=gen, dtype=cdt).T  # non-contiguous
    K = Kraw.conj()  # lazy conjugate bit
    assert K.is_conj()
    thr = torch.zeros((), dtype=dtype)
    got = ops.spectral_solve(Y, K, None, 0.1, thr)
    Kp = K.resolve_conj()
    expect = Kp.conj() * Y / (Kp.abs() ** 2 + 0.1)
    assert rel_err(torch.view_as_real(got), torch.view_as_real(expect)) <= 1e-5
    Yc = Y.conj()
    got = ops.spectral_mul(Yc, K, False)
    assert rel_err(torch.view_as_real(got), torch.view_as_real(Yc.resolve_conj() * Kp)) <= 1e-6


def test_spectral_solve_zero_denominator_gives_zero_not_nan():
    Y = torch.randn(4, 3, dtype=torch.complex128)
    K = torch.zeros(4, 3, dtype=torch.complex128)
    for eps, reg in [(0.0, None), (1.0, torch.zeros(4, 3, dtype=torch.float64))]:
        out = ops.spectral_solve(Y, K, reg, eps, torch.zeros((), dtype=torch.float64))
        assert torch.equal(out, torch.zeros_like(out))


def test_all_zero_psf_gives_zeros(gen):
    img = torch.randn(9, 8, generator=gen, dtype=torch.float64)
    for kw in (dict(method="pinv"), dict(eps=0.1), dict(eps=0.1, reg="laplacian")):
        out = dx.deconvolve(img, torch.zeros(3, 3, dtype=torch.float64), **kw)
        assert torch.equal(out, torch.zeros_like(out))


def test_zero_sum_psf_with_laplacian_is_finite(gen):
    img = torch.randn(16, 16, generator=gen, dtype=torch.float32)
    psf = torch.tensor([[1.0, -1.0]])  # K(0) == 0, and the Laplacian is 0 at DC too
    out = dx.deconvolve(img, psf, eps=0.1, reg="laplacian")
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------
# DeconvPlan: reuse, forward, adjoint
# ---------------------------------------------------------------------------

def test_plan_blur_adjoint_and_reuse(gen):
    size = (10, 13)
    psf = torch.rand(2, 3, 3, generator=gen, dtype=torch.float64)
    plan = dx.DeconvPlan(psf, size, eps=1e-3)
    x = torch.randn(4, 2, *size, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 2, *size, generator=gen, dtype=torch.float64)
    assert rel_err(plan.blur(x), wrap_convolve(x, psf)) <= 1e-12
    # <A x, y> == <x, A^T y>
    lhs = (plan.blur(x) * y).sum()
    rhs = (x * plan.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-10 * float(lhs.abs())
    for _ in range(2):  # the plan is reusable and stateless per call
        assert rel_err(plan(y), dx.deconvolve(y, psf, eps=1e-3)) <= 1e-12


def test_half_dtypes_compute_in_float32(gen):
    img = torch.rand(2, 17, 12, generator=gen)
    psf = invertible_psf(gen, 3, 3, dtype=torch.float32)
    ref = dx.deconvolve(img, psf, eps=1e-2)
    for dt in (torch.float16, torch.bfloat16):
        out = dx.deconvolve(img.to(dt), psf.to(dt), eps=1e-2)
        assert out.dtype == dt and out.shape == img.shape
        assert rel_err(out.float(), ref) <= 2e-2


def test_empty_batch_returns_empty():
    img = torch.randn(0, 3, 8, 8)
    out = dx.deconvolve(img, torch.rand(3, 3))
    assert out.shape == img.shape
    assert dx.convolve(img, torch.rand(3, 3)).shape == img.shape


def test_missing_backend_name_is_clear():
    from deconv_ext import config

    for var in ("DECONV_EXT_KERNELS", "DECONV_EXT_BACKEND"):
        with pytest.raises(ValueError, match=f"{var}='fftw3' is not valid.*'auto', 'triton'"):
            config.from_environment({var: "fftw3"})
    assert config.from_environment({"DECONV_EXT_BACKEND": "cpp"}).kernels == "auto"
    with pytest.raises(ValueError, match="call deconv_ext.reference directly"):
        config.from_environment({"DECONV_EXT_BACKEND": "torch"})


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before any work
# ---------------------------------------------------------------------------

BAD = [
    (dict(image=torch.rand(8)), ValueError, "image"),
    (dict(image=torch.ones(8, 8, dtype=torch.int64)), TypeError, "image.*int64"),
    (dict(image=torch.ones(8, 8, dtype=torch.bool)), TypeError, "image.*bool"),
    (dict(image=torch.ones(8, 8, dtype=torch.complex64)), TypeError, "image.*complex64"),
    (dict(psf=torch.rand(9, 3)), ValueError, "psf.*larger than the image"),
    (dict(psf=torch.rand(4, 3, 3)), ValueError, "psf.*does not broadcast"),
    (dict(psf=torch.rand(3, 2, 3, 3)), ValueError, "psf.*does not broadcast"),
    (dict(psf=torch.rand(1, 2, 3, 3, 3)), ValueError, "psf.*does not broadcast"),
    (dict(eps=-1.0), ValueError, "eps=-1.0"),
    (dict(eps=float("nan")), ValueError, "eps=nan"),
    (dict(eps=torch.full((8, 8), -0.1)), ValueError, "eps tensor"),
    (dict(rcond=1.0), ValueError, r"rcond=1.0.*\[0, 1\)"),
    (dict(rcond=-0.1), ValueError, "rcond"),
    (dict(method="wiener"), ValueError, "method='wiener'.*'tikhonov', 'pinv'"),
    (dict(reg="tv"), ValueError, "reg='tv'.*'laplacian'"),
    (dict(boundary="periodic"), ValueError, "boundary='periodic'.*'circular'"),
    (dict(psf=torch.rand(3, 3, device="meta")), ValueError, "psf is on meta"),
]


@pytest.mark.parametrize("override,exc,match", BAD)
def test_bad_input_to_deconvolve(override, exc, match):
    args = dict(image=torch.rand(2, 3, 8, 8), psf=torch.rand(3, 3))
    args.update(override)
    image, psf = args.pop("image"), args.pop("psf")
    with pytest.raises(exc, match=match):
        dx.deconvolve(image, psf, **args)


def test_bad_input_to_conv2d_pinv():
    out = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="output has 3 channels but weight has C_out=4"):
        dx.conv2d_pinv(out, torch.rand(4, 1, 3, 3), groups=4)
    with pytest.raises(ValueError, match="weight has shape"):
        dx.conv2d_pinv(out, torch.rand(3, 3, 3))
    with pytest.raises(ValueError, match="eps"):
        dx.conv2d_pinv(out, torch.rand(3, 1, 3, 3), groups=3, eps=-1.0)


def test_plan_rejects_wrong_image(gen):
    plan = dx.DeconvPlan(torch.rand(3, 3), (8, 8))
    with pytest.raises(ValueError, match="spatial size"):
        plan(torch.rand(8, 9))
    with pytest.raises(TypeError, match="plan computes in torch.float32"):
        plan(torch.rand(8, 8, dtype=torch.float64))


@pytest.mark.parametrize("psf_lead", [(), (3,), (7, 1), (7, 3)])
def test_large_batches_solved_in_chunks_equal_reference(gen, monkeypatch, psf_lead):
    """A batch past the chunk size (2**18 elements) is solved chunk by chunk
    along dim 0; per-sample kernels must follow their samples."""
    img = torch.randn(7, 3, 200, 180, generator=gen, dtype=torch.float64)  # 4 chunks of 2 samples
    psf = torch.rand(*psf_lead, 4, 3, generator=gen, dtype=torch.float64) + 0.1
    plan = dx.DeconvPlan(psf, (200, 180), method="pinv")
    got = (plan(img), plan.blur(img), plan.adjoint(img))
    K = reference.psf_transfer(psf, (200, 180))
    expect = (reference.deconvolve(img, psf, method="pinv"), reference.convolve(img, psf),
              torch.fft.ifft2(K.conj() * torch.fft.fft2(img)).real)
    for a, b in zip(got, expect):
        assert rel_err(a, b) <= 1e-10


def test_next_fast_size_is_the_smallest_even_7_smooth_size():
    def smooth(m):
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        return m == 1

    for n in list(range(2, 300)) + [520, 1025, 4097]:
        m = spectral.next_fast_size(n)
        assert m >= n and m % 2 == 0 and smooth(m)
        assert not any(smooth(k) for k in range(n + (n % 2), m, 2))
