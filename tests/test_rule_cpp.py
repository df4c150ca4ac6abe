"""The C++ fast paths of choosing eps by a rule, against the torch reference.

* the data half of the rule sums (``bin_power``) against ``bin_sums``;
* the search (``rule_search``) against ``parameter_choice.search``, every rule;
* the solve with a chosen per-plane eps against the same solve with a
  materialised operand, and one image against a batch of it.
"""
import pytest
import torch

import deconv_ext as dx
from deconv_ext import execution
from deconv_ext.execution.library import cpp
from deconv_ext.maths import parameter_choice as pc
from deconv_ext.maths.parameter_choice import bin_sums


def _power(Y):
    return (Y.real.double() ** 2 + Y.imag.double() ** 2)


@pytest.mark.parametrize("shape", [(1, 1, 37, 20), (3, 2, 64, 33), (512, 257), (2, 9, 1)])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("per_row_weights", [False, True])
def test_bin_power_equals_the_torch_sums(shape, dtype, per_row_weights):
    g = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    Y = torch.randn(shape, dtype=dtype, generator=g)
    H, Wf = shape[-2:]
    nb = 53
    idx = torch.randint(0, nb, (H, Wf), generator=g)
    w = torch.rand((H, Wf) if per_row_weights else (Wf,), dtype=torch.float64, generator=g)
    want = bin_sums(idx, _power(Y) * w, nb, 2)
    got = cpp.bin_power(Y, idx, w, nb)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # Strided and lazily conjugated views: the same sums.
    view = Y.transpose(-1, -2).contiguous().transpose(-1, -2).conj()
    torch.testing.assert_close(cpp.bin_power(view, idx, w, nb), want, rtol=1e-12, atol=0)
    # The routed function: the C++ binning on eager CPU tensors.
    torch.testing.assert_close(execution.bin_power(Y, idx, w, nb), want, rtol=1e-12, atol=0)


def test_bin_power_refuses_indices_out_of_range_and_bad_shapes():
    Y = torch.randn(4, 3, dtype=torch.complex128)
    w = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"idx entries must lie in \[0, 5\)"):
        cpp.bin_power(Y, torch.full((4, 3), 5), w, 5)
    with pytest.raises(ValueError, match="idx of shape"):
        cpp.bin_power(Y, torch.zeros(3, 4, dtype=torch.int64), w, 5)
    with pytest.raises(ValueError, match="weights of shape"):
        cpp.bin_power(Y, torch.zeros(4, 3, dtype=torch.int64),
                      torch.ones(4, dtype=torch.float64), 5)
    with pytest.raises(TypeError, match="weights must be Double"):
        cpp.bin_power(Y, torch.zeros(4, 3, dtype=torch.int64), w.float(), 5)


def test_a_per_plane_reg_broadcast_along_rows_solves_as_materialised():
    # The fused solve's fast path for one reg value per plane (stride 0).
    g = torch.Generator().manual_seed(3)
    Y = torch.randn(3, 16, 9, dtype=torch.complex64, generator=g)
    k = torch.randn(16, 9, dtype=torch.complex64, generator=g)
    e = torch.rand(3, 1, 1, generator=g) + 0.01
    t = torch.tensor(0.0)
    a, b = Y.clone(), Y.clone()
    cpp.spectral_solve_(a, k, e, 1.0, t)
    cpp.spectral_solve_(b, k, e.expand(3, 16, 9).contiguous(), 1.0, t)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # (FMA contraction may differ)
    want = k.conj() * Y / (k.abs() ** 2 + e)
    torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reg", [None, "laplacian"])
def test_one_image_and_a_batch_of_it_choose_and_solve_alike(reg):
    # One system passes the chosen eps as the op's scalar; a batch passes a
    # per-plane operand: the same eps and the same solution.
    g = torch.Generator().manual_seed(5)
    x = torch.rand(48, 41, dtype=torch.float64, generator=g)
    psf = dx.gaussian(1.5)
    y = dx.convolve(x, psf) + 1e-2 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    one, c1 = dx.deconvolve(y, psf, eps="auto", reg=reg, return_info=True)
    two, c2 = dx.deconvolve(torch.stack([y, y]), psf, eps="auto", reg=reg, return_info=True)
    torch.testing.assert_close(c2.eps, c1.eps.expand(2), rtol=1e-12, atol=0)
    torch.testing.assert_close(two[0], one, rtol=1e-10, atol=1e-12)
    ref = dx.deconvolve(y, psf, eps=float(c1.eps), reg=reg)
    torch.testing.assert_close(one, ref, rtol=1e-10, atol=1e-12)


def _problem(seed, n, psf, sigma, reg, rule):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, n, n + 3, dtype=torch.float64, generator=g)
    y = dx.convolve(x, psf) + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    y[2] = y[0].flip(-1)  # rows with different data
    plan = dx.DeconvPlan(psf, y.shape[-2:], eps=rule, reg=reg, dtype=torch.float64)
    fine, _ = plan._bins.spectra(torch.fft.rfft2(y).abs() ** 2, 2, risk=rule == "risk")
    return fine, torch.full((3,), sigma ** 2, dtype=torch.float64)


@pytest.mark.parametrize("rule", ["gcv", "upre", "risk", "discrepancy", "lcurve"])
@pytest.mark.parametrize("reg", [None, "laplacian"])
@pytest.mark.parametrize("case", range(4))
def test_rule_search_in_cpp_follows_the_reference(rule, reg, case):
    psf = [dx.gaussian(1.5), dx.box(5), dx.motion(7, 30), dx.disk(2)][case]
    n = [40, 64, 37, 96][case]
    sigma = [1e-3, 1e-2, 5e-2, 2e-2][case]
    fine, s2 = _problem(case, n, psf, sigma, reg, rule)
    for eps_range in (None, (1e-6, 10.0)):
        want = pc.search(fine, rule, s2, 1.0, eps_range, 1e-2)
        got = cpp.rule_search(fine.q, fine.wa, fine.wy, fine.wr, fine.wry, fine.res_extra,
                              fine.dof_extra, fine.n_data, s2, rule, 1.0,
                              *(eps_range or (0.0, 0.0)), 1e-2, pc.COARSEN,
                              pc.POINTS_PER_DECADE, pc.RANGE_DECADES, pc.REFINE_POINTS)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-9)
        torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-12)
        assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
        # The routed search is the C++ one on the CPU.
        routed = execution.rule_search(fine, rule, s2, 1.0, eps_range, 1e-2)
        assert torch.equal(routed[0], got[0])


def test_rule_search_on_data_that_no_eps_moves_is_flat():
    fine, s2 = _problem(0, 32, dx.gaussian(1.0), 1e-2, None, "gcv")
    fine = fine._replace(wy=torch.zeros_like(fine.wy))
    for rule in ("gcv", "discrepancy"):
        want = pc.search(fine, rule, s2, 1.0, None, 1e-2)
        got = execution.rule_search(fine, rule, s2, 1.0, None, 1e-2)
        assert got[2].all() and torch.equal(got[2], want[2])


def test_rule_search_refuses_bad_arguments():
    fine, s2 = _problem(1, 32, dx.gaussian(1.0), 1e-2, None, "gcv")
    args = (fine.q, fine.wa, fine.wy, fine.wr, fine.wry, fine.res_extra, fine.dof_extra,
            fine.n_data)
    tail = (1.0, 0.0, 0.0, 1e-2, pc.COARSEN, pc.POINTS_PER_DECADE, pc.RANGE_DECADES,
            pc.REFINE_POINTS)
    with pytest.raises(ValueError, match="rule must be one of"):
        cpp.rule_search(*args, s2, "auto", *tail)
    with pytest.raises(ValueError, match="needs s2"):
        cpp.rule_search(*args, None, "upre", *tail)
    with pytest.raises(ValueError, match="wy of shape"):
        cpp.rule_search(fine.q, fine.wa, fine.wy[:, :5], *args[3:], s2, "gcv", *tail)
    with pytest.raises(TypeError, match="q must be Double"):
        cpp.rule_search(fine.q.float(), *args[1:], s2, "gcv", *tail)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_the_routed_solve_of_the_padded_choice_equals_the_torch_reference(dtype):
    # The padded choice's solve at the prior's eps: the fused C++ solve on a
    # copy, against conj(K) Y / (|K|^2 + reg) with 0 where that vanishes.
    g = torch.Generator().manual_seed(11)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    Y = torch.randn(2, 16, 9, dtype=dtype, generator=g)
    K = torch.randn(16, 9, dtype=dtype, generator=g)
    K[0, 0] = 0
    full = torch.rand(16, 9, dtype=real, generator=g)
    full[0, 0] = 0                                       # |K|^2 + reg = 0 there
    for reg in (full, torch.full((2, 1, 1), 0.3, dtype=real)):
        before = Y.clone()
        got = execution.RULE_KERNELS.solve(Y, K, reg)
        want = pc.tikhonov_spectrum(Y, K, reg)
        tol = 1e-6 if dtype == torch.complex64 else 1e-14
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        assert bool((got[..., 0, 0] == 0).all()) and torch.equal(Y, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s", [(30, 41), (36, 48), (35, 45)])
def test_the_routed_transforms_of_the_padded_choice_equal_torch_fft(dtype, s):
    # Zero-padded forward transforms and the inverse (which may overwrite its input).
    g = torch.Generator().manual_seed(s[0] * s[1])
    x = torch.rand(2, 30, 41, dtype=dtype, generator=g)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    want = torch.fft.rfft2(x, s=s)
    torch.testing.assert_close(execution.RULE_KERNELS.rfft2(x, s), want, rtol=tol, atol=tol)
    back = execution.RULE_KERNELS.irfft2(want.clone(), s)
    torch.testing.assert_close(back, torch.fft.irfft2(want, s=s), rtol=tol, atol=tol)
