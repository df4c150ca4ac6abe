"""Multi-channel conv layers: pseudo-inverse, Tikhonov, singular values, ConvPinv2d.

The oracle is the dense operator ``A`` of the layer, materialised by applying
``F.conv2d`` with circular padding to basis vectors (tests/oracles.py), never
through the library.
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconv_ext as dx
from deconv_ext import execution, reference
from deconv_ext.execution import threads
from deconv_ext.maths import spectral
from deconv_ext.plans import layer_spectra as mc
from deconv_ext.plans.spectra import psf_spectrum
from oracles import conv2d_circular, dense_layer_operator, rel_err

ops = torch.ops.deconv_ext
f64 = torch.float64

# (C_out, C_in / groups, groups, kernel, dilation, size)
LAYERS = [
    pytest.param(4, 2, 1, (3, 3), (1, 1), (6, 7), id="Cout>Cin-odd-kernel"),
    pytest.param(2, 5, 1, (2, 3), (2, 1), (8, 6), id="Cout<Cin-even-kernel-dilated"),
    pytest.param(6, 2, 3, (3, 2), (1, 2), (7, 8), id="groups3-dilated"),
    pytest.param(4, 3, 2, (2, 2), (1, 1), (5, 6), id="groups2-Cout<Cin"),
    pytest.param(6, 1, 3, (3, 3), (1, 1), (5, 6), id="depth-multiplier"),
    pytest.param(12, 10, 1, (3, 1), (1, 1), (5, 4), id="matmul-path-12x10"),
    pytest.param(3, 3, 1, (4, 4), (2, 2), (9, 7), id="even-dilated-9x7"),
]


def _weight(gen, c_out, c_in_g, k, dtype=f64):
    return torch.randn(c_out, c_in_g, *k, generator=gen, dtype=dtype)


def _dense_operator(w, size, groups=1, dilation=(1, 1)):
    """The oracle's dense matrix, via the equivalent plain layer.

    F.conv2d's grouped + dilated CPU path is slow on the thousands of basis
    images the oracle feeds it, so the weight is first expanded to its
    block-diagonal, explicitly dilated (zeros inserted) equivalent, which has
    the same "same" padding (total ``d (k - 1)``).
    test_dense_operator_expansion_equals_oracle checks the equivalence.
    """
    c_out, c_in_g, kh, kw = w.shape
    dh, dw = dilation
    dense = w.new_zeros(c_out, c_in_g * groups, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    per = c_out // groups
    for o in range(c_out):
        g = o // per
        dense[o, g * c_in_g:(g + 1) * c_in_g, ::dh, ::dw] = w[o]
    return dense_layer_operator(dense, size)


def test_dense_operator_expansion_equals_oracle(gen):
    w = _weight(gen, 4, 2, (3, 2))
    assert torch.equal(_dense_operator(w, (5, 4), 2, (2, 1)),
                       dense_layer_operator(w, (5, 4), 2, (2, 1)))


def _flat(t):
    return t.reshape(t.shape[0], -1).T


def _dense_pinv_solve(A, y, rcond):
    return (torch.linalg.pinv(A, rtol=rcond) @ _flat(y)).T.reshape(y.shape[0], -1, *y.shape[-2:])


def _dense_tikhonov(A, y, eps):
    n = A.shape[1]
    x = torch.linalg.solve(A.T @ A + eps * torch.eye(n, dtype=A.dtype), A.T @ _flat(y))
    return x.T.reshape(y.shape[0], -1, *y.shape[-2:])


# ---------------------------------------------------------------------------
# The transfer matrices
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c_out,c_in_g,groups,k,dil,size", LAYERS)
def test_layer_spectrum_equals_psf_spectrum_of_flipped_kernel(gen, c_out, c_in_g, groups, k,
                                                                dil, size):
    w = _weight(gen, c_out, c_in_g, k)
    K = mc.layer_spectrum(w, size, groups, dil)
    P = psf_spectrum(spectral.conv2d_kernel_as_psf(w, dil), size)
    assert K.shape == (groups, c_out // groups, c_in_g, size[0], size[1] // 2 + 1)
    assert rel_err(torch.view_as_real(K.reshape(P.shape)), torch.view_as_real(P)) <= 1e-14
    rows = mc.layer_spectrum(w, size, groups, dil, rows=(1, 3))
    assert torch.equal(rows, K[..., 1:3, :])


# ---------------------------------------------------------------------------
# Against the dense operator (float64)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c_out,c_in_g,groups,k,dil,size", LAYERS)
def test_pinv_and_tikhonov_equal_dense(gen, c_out, c_in_g, groups, k, dil, size):
    w = _weight(gen, c_out, c_in_g, k)
    bias = torch.randn(c_out, generator=gen, dtype=f64)
    A = _dense_operator(w, size, groups, dil)
    y = torch.randn(2, c_out, *size, generator=gen, dtype=f64)
    rcond = spectral.default_rcond(size, f64)
    expect = _dense_pinv_solve(A, y, rcond)
    assert rel_err(dx.conv2d_pinv(y, w, groups=groups, dilation=dil), expect) <= 1e-8
    # The bias is subtracted first.
    yb = y + bias[:, None, None]
    assert rel_err(dx.conv2d_pinv(yb, w, bias, groups=groups, dilation=dil), expect) <= 1e-8
    for eps in (1e-3, 0.5):
        expect_t = _dense_tikhonov(A, y, eps)
        got = dx.conv2d_pinv(yb, w, bias, groups=groups, dilation=dil, eps=eps)
        assert rel_err(got, expect_t) <= 1e-8, eps


@pytest.mark.parametrize("c_out,c_in_g,groups,k,dil,size", LAYERS[:3])
def test_plan_blur_and_adjoint_equal_dense(gen, c_out, c_in_g, groups, k, dil, size):
    w = _weight(gen, c_out, c_in_g, k)
    bias = torch.randn(c_out, generator=gen, dtype=f64)
    A = _dense_operator(w, size, groups, dil)
    plan = dx.DeconvPlan.for_conv2d(w, size, groups=groups, dilation=dil, bias=bias)
    assert isinstance(plan, dx.Plan) and isinstance(plan, dx.LayerPlan)
    x = torch.randn(3, c_in_g * groups, *size, generator=gen, dtype=f64)
    y = torch.randn(3, c_out, *size, generator=gen, dtype=f64)
    assert rel_err(plan.blur(x), conv2d_circular(x, w, bias, groups, dil)) <= 1e-12
    adj = (A.T @ _flat(y)).T.reshape(3, -1, *size)
    assert rel_err(plan.adjoint(y), adj) <= 1e-12
    # <A x, y> == <x, A^T y>
    lhs = (plan.blur(x) - bias[:, None, None]).mul(y).sum()
    assert abs(float(lhs - x.mul(plan.adjoint(y)).sum())) <= 1e-10 * float(lhs.abs() + 1)


RANK_DEFICIENT = ["duplicated-output-channels", "box2x2-even-size", "rank1-channel-mix",
                  "all-zero"]


def _rank_deficient(gen, kind):
    if kind == "duplicated-output-channels":
        w = _weight(gen, 4, 3, (3, 3))
        w[2] = w[0]
        w[3] = 2 * w[1]
        return w, 1, (6, 5)
    if kind == "box2x2-even-size":
        # Every (o, i) kernel is a multiple of the 2x2 box: zero at the
        # Nyquist row and column of an even size, for every channel pair.
        mix = torch.randn(3, 2, generator=gen, dtype=f64)
        return mix[:, :, None, None] * torch.ones(2, 2, dtype=f64), 1, (6, 8)
    if kind == "rank1-channel-mix":
        u = torch.randn(4, generator=gen, dtype=f64)
        v = torch.randn(3, generator=gen, dtype=f64)
        k = torch.randn(3, 3, generator=gen, dtype=f64)
        return u[:, None, None, None] * v[None, :, None, None] * k, 1, (5, 6)
    return torch.zeros(2, 3, 3, 3, dtype=f64), 1, (5, 5)


@pytest.mark.parametrize("kind", RANK_DEFICIENT)
def test_rank_deficient_pinv_equals_dense(gen, kind):
    w, groups, size = _rank_deficient(gen, kind)
    A = _dense_operator(w, size, groups)
    y = torch.randn(2, w.shape[0], *size, generator=gen, dtype=f64)
    rcond = spectral.default_rcond(size, f64)
    got = dx.conv2d_pinv(y, w, groups=groups)
    assert torch.isfinite(got).all()
    expect = _dense_pinv_solve(A, y, rcond)
    if kind == "all-zero":
        assert torch.equal(got, torch.zeros_like(got))
    else:
        assert rel_err(got, expect) <= 1e-8
        assert rel_err(dx.conv2d_pinv(y, w, groups=groups, eps=1e-2),
                       _dense_tikhonov(A, y, 1e-2)) <= 1e-8


def test_rcond_drops_singular_values_like_dense_pinv(gen):
    w = _weight(gen, 3, 2, (3, 3))
    size = (6, 6)
    A = _dense_operator(w, size)
    s = torch.linalg.svdvals(A)
    rcond = float((s[len(s) // 2] + s[len(s) // 2 + 1]) / 2 / s[0])  # drops about half
    y = torch.randn(1, 3, *size, generator=gen, dtype=f64)
    got = dx.conv2d_pinv(y, w, rcond=rcond)
    assert rel_err(got, _dense_pinv_solve(A, y, rcond)) <= 1e-8


@pytest.mark.parametrize("kind", ["generic-Cout<Cin", "rank-deficient", "groups"])
def test_moore_penrose_conditions_of_the_applied_operator(gen, kind):
    if kind == "generic-Cout<Cin":
        w, groups, size = _weight(gen, 2, 3, (2, 3)), 1, (5, 4)
    elif kind == "rank-deficient":
        w, groups, size = _rank_deficient(gen, "duplicated-output-channels")
    else:
        w, groups, size = _weight(gen, 4, 1, (3, 3)), 2, (4, 5)
    A = _dense_operator(w, size, groups)
    m = A.shape[0]
    basis = torch.eye(m, dtype=f64).reshape(m, w.shape[0], *size)
    P = dx.conv2d_pinv(basis, w, groups=groups).reshape(m, -1).T  # (n, m)
    scale = float(torch.linalg.matrix_norm(A, 2) * torch.linalg.matrix_norm(P, 2))
    tol = 1e-11 * scale
    AP, PA = A @ P, P @ A
    assert float((AP @ A - A).abs().max()) <= tol * float(A.abs().max())
    assert float((PA @ P - P).abs().max()) <= tol * float(P.abs().max())
    assert float((AP - AP.T).abs().max()) <= tol
    assert float((PA - PA.T).abs().max()) <= tol


# ---------------------------------------------------------------------------
# Singular values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c_out,c_in_g,groups,k,dil,size", LAYERS)
def test_svdvals_equal_dense(gen, c_out, c_in_g, groups, k, dil, size):
    w = _weight(gen, c_out, c_in_g, k)
    A = _dense_operator(w, size, groups, dil)
    expect = torch.linalg.svdvals(A)
    s = dx.conv2d_svdvals(w, size, groups=groups, dilation=dil)
    assert s.shape == expect.shape == (size[0] * size[1] * groups * min(c_out // groups, c_in_g),)
    assert bool((s[:-1] >= s[1:]).all())
    assert float((s - expect).abs().max()) <= 1e-12 * float(expect[0])
    assert float(dx.conv2d_opnorm(w, size, groups, dil)) == pytest.approx(float(expect[0]),
                                                                           rel=1e-12)
    assert float(dx.conv2d_cond(w, size, groups, dil)) == pytest.approx(
        float(expect[0] / expect[-1]), rel=1e-8)


def test_svdvals_float32_and_cond_of_singular_layer(gen):
    w = _weight(gen, 3, 2, (3, 3))
    s64 = dx.conv2d_svdvals(w, (8, 7))
    s32 = dx.conv2d_svdvals(w.float(), (8, 7))
    assert s32.dtype == torch.float32
    assert float((s32.double() - s64).abs().max()) <= 1e-5 * float(s64[0])
    assert float(dx.conv2d_cond(torch.zeros(2, 2, 3, 3), (4, 4))) == float("inf")


# ---------------------------------------------------------------------------
# The fused op, the matmul path and the matrix-free mode
# ---------------------------------------------------------------------------

def _mix_ref(Y, g, adjoint):
    """Independent einsum: g (groups, M, N, H, Wf), Y (..., groups*Q, H, Wf)."""
    G, M, N = g.shape[:3]
    lead = Y.shape[:-3]
    Yr = Y.reshape(-1, G, M if adjoint else N, *Y.shape[-2:])
    if adjoint:
        X = torch.einsum("gmnhw,bgmhw->bgnhw", g.conj(), Yr)
    else:
        X = torch.einsum("gmnhw,bgnhw->bgmhw", g, Yr)
    return X.reshape(*lead, -1, *Y.shape[-2:])


@pytest.mark.parametrize("dtype,tol", [(torch.complex64, 1e-6), (torch.complex128, 1e-14)])
@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("groups,M,N", [(1, 3, 3), (2, 2, 5), (3, 8, 1)])
def test_channel_mix_op_equals_einsum_and_matmul(gen, dtype, tol, adjoint, groups, M, N):
    H, Wf = 5, 300  # Wf * H > one chunk of 256 frequencies, not a multiple of it
    g = torch.randn(groups, M, N, H, Wf, generator=gen, dtype=dtype)
    Q = M if adjoint else N
    Y = torch.randn(2, 3, groups * Q, H, Wf, generator=gen, dtype=dtype)
    out = ops.channel_mix(Y, g, adjoint)
    expect = _mix_ref(Y, g, adjoint)
    assert rel_err(torch.view_as_real(out), torch.view_as_real(expect)) <= tol
    via_matmul = mc.apply_matrices(Y, g.permute(0, 3, 4, 1, 2), adjoint, fused=False)
    assert rel_err(torch.view_as_real(via_matmul), torch.view_as_real(expect)) <= tol


def test_channel_mix_reads_lazy_conj_and_noncontiguous(gen):
    g = torch.randn(1, 3, 2, 4, 6, generator=gen, dtype=torch.complex128)
    Y = torch.randn(2, 4, 6, 2, generator=gen, dtype=torch.complex128).permute(0, 3, 1, 2)
    Yc = Y.conj()
    assert Yc.is_conj() and not Y.is_contiguous()
    gc = g.conj()
    out = ops.channel_mix(Yc, gc, False)
    expect = _mix_ref(Yc.resolve_conj(), gc.resolve_conj(), False)
    assert float((out - expect).abs().max()) <= 1e-14
    assert float((ops.channel_mix_outer(Yc, Yc, 1)
                  - torch.einsum("bmhw,bnhw->mnhw", Yc, Yc.conj())[None]).abs().max()) <= 1e-13


@pytest.mark.parametrize("adjoint", [False, True])
def test_channel_mix_gradcheck_and_opcheck(gen, adjoint):
    g = torch.randn(2, 2, 3, 3, 2, generator=gen, dtype=torch.complex128, requires_grad=True)
    Y = torch.randn(2, 2 * (2 if adjoint else 3), 3, 2, generator=gen, dtype=torch.complex128,
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.channel_mix(a, b, adjoint), (Y, g))
    torch.library.opcheck(ops.channel_mix.default, (Y, g, adjoint))
    torch.library.opcheck(ops.channel_mix_outer.default, (Y.detach(), Y.detach(), 2))


def test_batched_linalg_split_equals_direct(gen):
    K = torch.randn(3, 7, 5, 4, 2, generator=gen, dtype=torch.complex128)
    assert torch.equal(execution.batched_linalg(torch.linalg.svdvals, K), torch.linalg.svdvals(K))
    U, S, Vh = execution.batched_linalg(lambda k: torch.linalg.svd(k, full_matrices=False), K)
    assert U.shape == (3, 7, 5, 4, 2) and S.shape == (3, 7, 5, 2) and Vh.shape == (3, 7, 5, 2, 2)
    assert float((U @ (S.to(K.dtype).unsqueeze(-1) * Vh) - K).abs().max()) <= 1e-13
    threads = torch.get_num_threads()
    execution.batched_linalg(torch.linalg.svdvals, K)
    assert torch.get_num_threads() == threads  # restored


@pytest.mark.parametrize("c_out,c_in_g,groups", [(3, 2, 1), (12, 9, 1), (4, 3, 2)])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_matrix_free_equals_stored_filter(configure, gen, monkeypatch, c_out, c_in_g, groups, eps):
    w = _weight(gen, c_out, c_in_g, (3, 3))
    size = (9, 10)
    y = torch.randn(2, c_out, *size, generator=gen, dtype=f64)
    x = torch.randn(2, c_in_g * groups, *size, generator=gen, dtype=f64)
    stored = dx.LayerPlan(w, size, groups, eps=eps)
    free = dx.LayerPlan(w, size, groups, eps=eps, max_filter_bytes=0)
    assert stored.mode == "filter" and stored.filter is not None
    assert free.mode == "matrix_free" and free.filter is None
    assert stored.fused == (max(c_out // groups, c_in_g) <= mc.FUSED_MAX_CHANNELS)
    assert rel_err(free(y), stored(y)) <= 1e-12
    assert rel_err(free.blur(x), stored.blur(x)) <= 1e-12
    assert rel_err(free.adjoint(y), stored.adjoint(y)) <= 1e-12
    # The automatic rule: the stored filter's size against the budget.
    nbytes = mc.filter_bytes(w.shape, groups, size, f64)
    assert nbytes == c_out * c_in_g * size[0] * (size[1] // 2 + 1) * 16
    configure(max_filter_bytes=nbytes - 1)
    assert dx.LayerPlan(w, size, groups, eps=eps).mode == "matrix_free"
    configure(max_filter_bytes=nbytes)
    assert dx.LayerPlan(w, size, groups, eps=eps).mode == "filter"


def test_torch_backend_equals_compiled_path(gen, monkeypatch):
    w = _weight(gen, 3, 4, (3, 2))
    bias = torch.randn(3, generator=gen, dtype=f64)
    y = torch.randn(2, 3, 7, 6, generator=gen, dtype=f64)
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=f64)
    plan = dx.DeconvPlan.for_conv2d(w, (7, 6), bias=bias, dilation=(2, 1))
    fast = (plan(y), plan.blur(x), plan.adjoint(y), dx.conv2d_svdvals(w, (7, 6)),
            dx.conv2d_pinv(y, w, bias, dilation=(2, 1), eps=0.1))
    K = reference.layer_transfer_matrix(w, (7, 6), 1, (2, 1))
    Y = torch.fft.fft2(y).movedim(-3, -1).unsqueeze(-1)
    adjoint = torch.fft.ifft2((K.mH @ Y).squeeze(-1).movedim(-1, -3)).real
    ref = (reference.conv2d_pinv(y, w, bias, dilation=(2, 1)),
           reference.conv2d_forward(x, w, bias, 1, (2, 1)), adjoint,
           reference.conv2d_svdvals(w, (7, 6), 1, (1, 1)),
           reference.conv2d_pinv(y, w, bias, dilation=(2, 1), eps=0.1))
    for a, b in zip(fast, ref):
        assert rel_err(a, b) <= 1e-12


# ---------------------------------------------------------------------------
# dtypes, batch dims, autograd
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c_out,c_in_g,groups", [(3, 3, 1), (16, 16, 1)])
def test_float32_matches_float64(gen, c_out, c_in_g, groups):
    w = _weight(gen, c_out, c_in_g, (3, 3))
    w = 0.1 * w
    w[:, :, 1, 1] += torch.eye(c_out, dtype=f64)  # identity-dominated: cond ~ a few
    x = torch.randn(2, c_in_g, 16, 12, generator=gen, dtype=f64)
    y = conv2d_circular(x, w)
    out32 = dx.conv2d_pinv(y.float(), w.float())
    assert out32.dtype == torch.float32
    assert rel_err(out32, x) <= 1e-5
    half = dx.conv2d_pinv(y.to(torch.bfloat16), w.float())
    assert half.dtype == torch.bfloat16 and rel_err(half, x) <= 3e-2


def test_batch_dims_and_unbatched_input(gen):
    w = _weight(gen, 4, 3, (3, 3))
    plan = dx.DeconvPlan.for_conv2d(w, (6, 7))
    y = torch.randn(2, 3, 4, 6, 7, generator=gen, dtype=f64)
    out = plan(y)
    assert out.shape == (2, 3, 3, 6, 7)
    assert torch.allclose(out[1, 2], plan(y[1, 2]), rtol=0, atol=1e-13)
    assert dx.conv2d_pinv(y[0, 0], w).shape == (3, 6, 7)
    assert plan(y[:0]).shape == (0, 3, 3, 6, 7)
    assert plan.blur(out).shape == (2, 3, 4, 6, 7)


def test_gradients_through_the_pinv(gen):
    w = _weight(gen, 2, 3, (2, 2)).requires_grad_(True)
    y = torch.randn(1, 2, 4, 3, generator=gen, dtype=f64, requires_grad=True)
    # Tikhonov: differentiable in the observation and in the weight.
    assert torch.autograd.gradcheck(lambda a, b: dx.conv2d_pinv(a, b, eps=0.3), (y, w))
    # The stored-filter plan, fused op path: gradient w.r.t. the observation.
    plan = dx.DeconvPlan.for_conv2d(w.detach(), (4, 3))
    assert plan.fused
    assert torch.autograd.gradcheck(plan, (y,))


# ---------------------------------------------------------------------------
# ConvPinv2d
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c_in,c_out,k,groups,padding", [
    (3, 5, 3, 1, "same"), (4, 4, 2, 2, "same"), (3, 3, 5, 1, 2), (2, 6, 3, 2, (1, 1))])
def test_conv_pinv2d_inverts_an_nn_conv2d(gen, c_in, c_out, k, groups, padding):
    torch.manual_seed(7)
    conv = nn.Conv2d(c_in, c_out, k, padding=padding, padding_mode="circular", groups=groups,
                     dtype=f64)
    x = torch.randn(2, c_in, 8, 9, generator=gen, dtype=f64)
    with torch.no_grad():
        y = conv(x)
        assert rel_err(y, conv2d_circular(x, conv.weight, conv.bias, groups)) <= 1e-13
    inv = dx.ConvPinv2d.from_conv(conv, (8, 9))
    x_hat = inv(y)
    expect = dx.conv2d_pinv(y, conv.weight.detach(), conv.bias.detach(), groups=groups)
    assert rel_err(x_hat, expect) <= 1e-13
    if c_out >= c_in:  # injective (generic weights): recovers the input
        assert rel_err(x_hat, x) <= 1e-8
    sd = inv.state_dict()
    assert set(sd) == {"weight", "bias"}
    inv2 = dx.ConvPinv2d(torch.zeros_like(conv.weight), (8, 9), groups=groups,
                         bias=torch.zeros(c_out, dtype=f64))
    inv2.load_state_dict(sd)
    assert rel_err(inv2(y), expect) <= 1e-13
    buf = io.BytesIO()
    torch.save(inv, buf)
    buf.seek(0)
    inv3 = torch.load(buf, weights_only=False)
    assert rel_err(inv3(y), expect) <= 1e-13


def test_conv_pinv2d_dtype_moves_rebuild_the_filter(gen):
    conv = nn.Conv2d(3, 4, 3, padding="same", padding_mode="circular")
    inv = dx.ConvPinv2d.from_conv(conv, (8, 8), eps=1e-3)
    y = torch.randn(2, 4, 8, 8, generator=gen)
    assert inv(y).dtype == torch.float32
    inv = inv.double()
    assert inv.weight.dtype == f64 and inv.plan.dtype == f64
    assert inv(y.double()).dtype == f64
    assert "3 -> " not in repr(inv) and "4 -> 3" in repr(inv)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(stride=2), NotImplementedError, r"stride=\(2, 2\).*stride 1 only"),
    (dict(padding_mode="zeros"), NotImplementedError,
     r"padding_mode='zeros'.*conv2d_pinv\(output, weight, bias, padding_mode='zeros', solver='cg'\)"),
    (dict(padding_mode="reflect"), NotImplementedError, r"padding_mode='reflect'.*solver='cg'"),
    (dict(padding=0), NotImplementedError, r"padding=\(0, 0\).*padding='same'.*solver='cg'"),
    (dict(padding="valid"), NotImplementedError, r"padding='valid'"),
    (dict(padding=1, kernel_size=2), NotImplementedError, r"padding=\(1, 1\)"),
])
def test_conv_pinv2d_rejects_unsupported_layers(kwargs, exc, match):
    args = dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="circular")
    args.update(kwargs)
    conv = nn.Conv2d(**args)
    with pytest.raises(exc, match=match):
        dx.ConvPinv2d.from_conv(conv, (8, 8))


def test_conv_pinv2d_rejects_non_conv():
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d, got Linear"):
        dx.ConvPinv2d.from_conv(nn.Linear(3, 3), (8, 8))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

BAD_PINV = [
    (dict(weight=torch.rand(4, 3, 3)), ValueError, r"weight has shape \(4, 3, 3\)"),
    (dict(weight=torch.rand(5, 3, 3, 3)), ValueError, "output has 4 channels but weight has C_out=5"),
    (dict(groups=3), ValueError, r"groups=3 is not valid.*dividing C_out=4"),
    (dict(groups=0), ValueError, "groups=0 is not valid"),
    (dict(groups=True), ValueError, "groups=True is not valid"),
    (dict(groups=2.0), ValueError, r"groups=2.0 is not valid"),
    (dict(dilation=0), ValueError, "dilation=0 is not valid"),
    (dict(dilation=4), ValueError, r"input_size \(8, 9\) is smaller than the dilated kernel \(9x9"),
    (dict(weight=torch.rand(4, 3, 10, 3)), ValueError, "smaller than the dilated kernel"),
    (dict(weight=torch.randint(0, 3, (4, 3, 3, 3))), TypeError, "weight has dtype torch.int64"),
    (dict(weight=torch.rand(4, 3, 3, 3, dtype=torch.complex64)), TypeError, "weight has dtype"),
    (dict(eps=-1.0), ValueError, "eps=-1.0 is not valid"),
    (dict(eps=torch.ones(8, 9)), TypeError, "scalar eps"),
    (dict(rcond=1.5), ValueError, "rcond=1.5 is not valid"),
    (dict(bias=torch.rand(3)), ValueError, r"bias must be a tensor of shape \(4,\)"),
    (dict(output=torch.rand(2, 4, 8, 9, dtype=torch.complex64)), TypeError, "output has dtype"),
]


@pytest.mark.parametrize("override,exc,match", BAD_PINV)
def test_bad_input_to_conv2d_pinv(override, exc, match):
    args = dict(output=torch.rand(2, 4, 8, 9), weight=torch.rand(4, 3, 3, 3))
    args.update(override)
    output, weight = args.pop("output"), args.pop("weight")
    with pytest.raises(exc, match=match):
        dx.conv2d_pinv(output, weight, **args)


def test_bad_input_to_plan_and_svdvals():
    w = torch.rand(4, 3, 3, 3)
    plan = dx.DeconvPlan.for_conv2d(w, (8, 9))
    with pytest.raises(ValueError, match=r"output has shape \(2, 3, 8, 9\); expected \(\.\.\., 4, 8, 9\)"):
        plan(torch.rand(2, 3, 8, 9))
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 8, 9\); expected \(\.\.\., 3, 8, 9\)"):
        plan.blur(torch.rand(2, 4, 8, 9))
    with pytest.raises(ValueError, match="spatial size"):
        plan(torch.rand(2, 4, 8, 8))
    with pytest.raises(TypeError, match="plan computes in torch.float32"):
        plan(torch.rand(2, 4, 8, 9, dtype=f64))
    with pytest.raises(ValueError, match="max_filter_bytes=-1 is not valid"):
        dx.LayerPlan(w, (8, 9), max_filter_bytes=-1)
    with pytest.raises(ValueError, match=r"input_size=\(8,\) is not valid"):
        dx.conv2d_svdvals(w, (8,))
    with pytest.raises(ValueError, match=r"input_size \(2, 9\) is smaller than the dilated kernel"):
        dx.conv2d_svdvals(w, (2, 9))
    with pytest.raises(ValueError, match="groups=2 is not valid"):
        dx.conv2d_opnorm(torch.rand(3, 1, 3, 3), (8, 8), groups=2)


def test_multichannel_plan_compiles_fullgraph(gen):
    w = _weight(gen, 4, 3, (3, 3), dtype=torch.float32)
    plan = dx.DeconvPlan.for_conv2d(w, (8, 9))
    assert plan.fused
    y = torch.randn(2, 4, 8, 9, generator=gen)
    compiled = torch.compile(lambda t: plan(t), fullgraph=True)
    assert torch.allclose(compiled(y), plan(y), rtol=0, atol=1e-6)
