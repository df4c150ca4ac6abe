"""Reliability: numerical robustness, NaN/Inf policy, concurrency, memory,
determinism, and plans as real objects (pickle, torch.save, .to, state_dict).

Every random input is seeded; float64 wherever exactness is claimed.
"""
from __future__ import annotations

import gc
import io
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import deconv_ext as dx
from deconv_ext import execution
from deconv_ext.execution import threads
from oracles import (conv2d_circular, dense_image_operator, invertible_psf, rel_err)

F64 = torch.float64


def rng(seed=1234):
    return torch.Generator().manual_seed(seed)


def dense_pinv_solve(psf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``pinv(A, rtol) @ y`` for the circular blur's dense matrix (scipy oracle)."""
    from deconv_ext.maths import spectral

    size = tuple(y.shape[-2:])
    A = torch.from_numpy(dense_image_operator(psf.numpy(), size))
    P = torch.linalg.pinv(A, rtol=spectral.default_rcond(size, F64))
    return (P @ y.reshape(-1)).reshape(size)


# ---------------------------------------------------------------------------
# Numerical robustness
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_all_zero_kernel_gives_zeros_everywhere(dtype):
    y = torch.randn(2, 9, 8, generator=rng(), dtype=F64).to(dtype)
    zero = torch.zeros(3, 3, dtype=dtype)
    for kw in (dict(method="pinv"), dict(eps=0.0), dict(eps=0.1), dict(eps=0.1, reg="laplacian"),
               dict(eps=torch.rand(9, 8, generator=rng(1), dtype=F64).to(dtype)),
               dict(eps=0.1, boundary="reflect"), dict(method="pinv", boundary="zeros")):
        out = dx.deconvolve(y, zero, **kw)
        assert torch.equal(out, torch.zeros_like(out)), kw
    # A zero layer: every singular value is 0, so the pseudo-inverse is 0.
    w = torch.zeros(4, 3, 3, 3, dtype=dtype)
    out = dx.conv2d_pinv(torch.randn(2, 4, 9, 8, generator=rng(), dtype=F64).to(dtype), w)
    assert out.shape == (2, 3, 9, 8) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("psf,size", [
    (torch.ones(2, 2, dtype=F64) / 4, (8, 6)),        # zeros at the Nyquist row/column
    (torch.ones(3, 3, dtype=F64) / 9, (9, 12)),       # zeros at the 3-periodic frequencies
    (torch.tensor([[1.0, -1.0]], dtype=F64), (5, 7)),  # derivative: K(0) = 0 exactly
])
def test_kernels_with_exact_spectral_zeros(psf, size):
    y = torch.randn(*size, generator=rng(), dtype=F64)
    got = dx.deconvolve(y, psf, method="pinv")
    assert torch.isfinite(got).all()
    assert rel_err(got, dense_pinv_solve(psf, y)) <= 1e-10
    # Tikhonov with eps = 0 is the same limit; eps > 0 stays finite and smaller.
    assert rel_err(dx.deconvolve(y, psf, eps=0.0), got) <= 1e-12
    tik = dx.deconvolve(y, psf, eps=1e-6)
    assert torch.isfinite(tik).all()
    # The solution has no component in the null space: blur then solve again
    # reproduces it (P A x = x for x in the range of P).
    assert rel_err(dx.deconvolve(dx.convolve(got, psf), psf, method="pinv"), got) <= 1e-10


def test_eps_from_zero_to_1e12_shrinks_monotonically():
    size = (16, 12)
    psf = invertible_psf(rng(), 5, 3)
    y = torch.randn(2, *size, generator=rng(1), dtype=F64)
    epss = [0.0, 1e-12, 1e-8, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e8, 1e12]
    norms = []
    for eps in epss:
        x = dx.deconvolve(y, psf, eps=eps)
        assert torch.isfinite(x).all(), eps
        norms.append(float(x.norm()))
    # Per frequency |X| = |K||Y| / (|K|^2 + eps): non-increasing in eps.
    assert all(b <= a * (1 + 1e-12) for a, b in zip(norms, norms[1:])), norms
    assert norms[-1] < 1e-9 * norms[0]
    # The eps -> inf limit: eps * x_eps -> A^T y, relative error ~ |K|^2 / eps.
    x_big = dx.deconvolve(y, psf, eps=1e12)
    plan = dx.DeconvPlan(psf, size)
    assert rel_err(1e12 * x_big, plan.adjoint(y)) <= 1e-10
    # And eps = 0 is the exact inverse for this invertible PSF.
    assert rel_err(dx.convolve(dx.deconvolve(y, psf, eps=0.0), psf), y) <= 1e-12


@pytest.mark.parametrize("scale", [1e-30, 1e30, 1e-300, 1e300])
@pytest.mark.parametrize("kw", [dict(method="pinv"), dict(eps=1e-2), dict(eps=1e-2, reg="laplacian")])
def test_tiny_and_huge_values_scale_linearly(scale, kw):
    y = torch.randn(2, 11, 10, generator=rng(), dtype=F64)
    psf = torch.rand(3, 4, generator=rng(1), dtype=F64)
    base = dx.deconvolve(y, psf, **kw)
    out = dx.deconvolve(y * scale, psf, **kw)
    assert torch.isfinite(out).all()
    # Powers of ten are not exact in binary: compare out / scale, not out * (1/scale).
    assert rel_err(out / scale, base) <= 1e-12
    blur = dx.convolve(y * scale, psf)
    assert torch.isfinite(blur).all() and rel_err(blur / scale, dx.convolve(y, psf)) <= 1e-13


@pytest.mark.parametrize("size,ksize", [
    ((1, 1), (1, 1)), ((1, 9), (1, 3)), ((1, 8), (1, 8)), ((7, 1), (4, 1)), ((6, 1), (6, 1)),
    ((2, 1), (1, 1)),
])
def test_degenerate_image_shapes(size, ksize):
    y = torch.randn(*size, generator=rng(), dtype=F64)
    psf = torch.rand(*ksize, generator=rng(1), dtype=F64) + 0.1
    got = dx.deconvolve(y, psf, method="pinv")
    assert got.shape == y.shape
    assert rel_err(got, dense_pinv_solve(psf, y)) <= 1e-10
    plan = dx.DeconvPlan(psf, size, method="pinv")
    assert rel_err(plan.blur(got), torch.from_numpy(
        dense_image_operator(psf.numpy(), size) @ got.reshape(-1).numpy()).reshape(size)) <= 1e-12
    if size == (1, 1):
        assert torch.allclose(got, y / psf, rtol=1e-14, atol=0)
    # A 1x1 spatial layer is a plain matrix: its pseudo-inverse is torch.linalg.pinv.
    w = torch.randn(4, 3, 1, 1, generator=rng(2), dtype=F64)
    out = torch.randn(2, 4, *size, generator=rng(3), dtype=F64)
    want = torch.einsum("io,nohw->nihw", torch.linalg.pinv(w[:, :, 0, 0]), out)
    assert rel_err(dx.conv2d_pinv(out, w), want) <= 1e-12


@pytest.mark.parametrize("size", [(6, 6), (7, 5), (8, 9)])
def test_kernel_as_large_as_the_image(size):
    y = torch.randn(*size, generator=rng(), dtype=F64)
    psf = torch.rand(*size, generator=rng(1), dtype=F64)
    assert rel_err(dx.deconvolve(y, psf, method="pinv"), dense_pinv_solve(psf, y)) <= 1e-10
    # The largest layer kernel that fits ("same" padding) as well.
    w = torch.randn(2, 2, *size, generator=rng(2), dtype=F64)
    x = torch.randn(1, 2, *size, generator=rng(3), dtype=F64)
    plan = dx.DeconvPlan.for_conv2d(w, size)
    assert rel_err(plan.blur(x), conv2d_circular(x, w)) <= 1e-12


def test_noncontiguous_and_channels_last_inputs():
    g = rng()
    base = torch.randn(2, 3, 12, 10, generator=g, dtype=F64)
    psf = torch.rand(3, 3, generator=g, dtype=F64)
    views = {
        "transposed": torch.randn(2, 3, 10, 12, generator=g, dtype=F64).transpose(-1, -2),
        "sliced": torch.randn(2, 3, 24, 10, generator=g, dtype=F64)[:, :, ::2],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": base[:1].expand(2, 3, 12, 10),
    }
    plan = dx.DeconvPlan(psf, (12, 10), eps=1e-2)
    for name, v in views.items():
        assert not v.is_contiguous(), name
        c = v.contiguous()
        for fn in (lambda t: dx.deconvolve(t, psf, eps=1e-2), lambda t: dx.convolve(t, psf),
                   plan, plan.blur, plan.adjoint,
                   lambda t: dx.deconvolve(t, psf, eps=1e-2, boundary="reflect")):
            out = fn(v)
            assert out.shape == v.shape
            assert rel_err(out, fn(c)) <= 1e-14, name
    # A non-contiguous PSF and a channels-last layer input/weight.
    psf_t = torch.rand(4, 3, generator=g, dtype=F64).T
    assert rel_err(dx.deconvolve(base, psf_t), dx.deconvolve(base, psf_t.contiguous())) <= 1e-14
    w = torch.randn(3, 3, 3, 3, generator=g, dtype=F64)
    y = conv2d_circular(base, w)
    out = dx.conv2d_pinv(y.contiguous(memory_format=torch.channels_last),
                         w.contiguous(memory_format=torch.channels_last))
    assert rel_err(out, dx.conv2d_pinv(y, w)) <= 1e-13


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dt):
    g = rng()
    x = torch.rand(2, 3, 16, 12, generator=g)
    psf = invertible_psf(g, 3, 3, dtype=torch.float32)
    y = dx.convolve(x, psf)
    ref = dx.deconvolve(y, psf, eps=1e-3)
    tol = 1e-2 if dt == torch.float16 else 4e-2    # input rounding, amplified <= 3x
    out = dx.deconvolve(y.to(dt), psf.to(dt), eps=1e-3)
    assert out.dtype == dt and out.shape == y.shape and torch.isfinite(out).all()
    assert rel_err(out.float(), ref) <= tol
    assert dx.convolve(y.to(dt), psf).dtype == dt
    plan = dx.DeconvPlan(psf, (16, 12), eps=1e-3)        # a float32 plan serves half images
    assert plan(y.to(dt)).dtype == dt and rel_err(plan(y.to(dt)).float(), ref) <= tol
    w = torch.randn(3, 3, 3, 3, generator=g) * 0.05
    w[torch.arange(3), torch.arange(3), 1, 1] += 1.0
    yl = conv2d_circular(x, w)
    out = dx.conv2d_pinv(yl.to(dt), w.to(dt))
    assert out.dtype == dt and rel_err(out.float(), x) <= 2 * tol


# ---------------------------------------------------------------------------
# NaN / Inf: propagate by default (documented), check_finite=True raises
# ---------------------------------------------------------------------------

def test_nonfinite_values_propagate_by_default_per_plane():
    y = torch.randn(3, 10, 9, generator=rng(), dtype=F64)
    psf = torch.rand(3, 3, generator=rng(1), dtype=F64)
    clean = dx.deconvolve(y, psf)
    for bad in (float("nan"), float("inf"), -float("inf")):
        yb = y.clone()
        yb[1, 4, 5] = bad
        out = dx.deconvolve(yb, psf)
        # As through an FFT: the plane holding the value is garbage, no
        # exception, and the other planes of the batch are untouched.
        assert not torch.isfinite(out[1]).any()
        assert torch.equal(out[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("where", ["image", "psf", "reg"])
def test_check_finite_names_the_argument_deconvolve(where):
    y = torch.randn(10, 9, generator=rng(), dtype=F64)
    psf = torch.rand(3, 3, generator=rng(1), dtype=F64)
    reg = torch.rand(2, 2, generator=rng(2), dtype=F64)
    args = dict(image=y, psf=psf, reg=reg)
    args[where] = args[where].clone()
    args[where][0, 1] = float("nan")
    with pytest.raises(ValueError, match=rf"^{where} contains non-finite values \(1 NaN"):
        dx.deconvolve(args["image"], args["psf"], eps=0.1, reg=args["reg"], check_finite=True)
    if where != "reg":
        with pytest.raises(ValueError, match=rf"^{where} contains non-finite"):
            dx.convolve(args["image"], args["psf"], check_finite=True)


def test_check_finite_conv2d_pinv_and_finite_inputs_unchanged():
    g = rng()
    out = torch.randn(2, 4, 8, 8, generator=g, dtype=F64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    for name in ("output", "weight", "bias"):
        args = dict(output=out.clone(), weight=w.clone(), bias=b.clone())
        args[name].view(-1)[1] = float("inf")
        with pytest.raises(ValueError, match=rf"^{name} contains non-finite values \(0 NaN, 1"):
            dx.conv2d_pinv(args["output"], args["weight"], args["bias"], check_finite=True)
    # Finite inputs: identical results with and without the check.
    assert torch.equal(dx.conv2d_pinv(out, w, b, check_finite=True), dx.conv2d_pinv(out, w, b))
    psf = torch.rand(3, 3, generator=g, dtype=F64)
    y = out[0, 0]
    assert torch.equal(dx.deconvolve(y, psf, check_finite=True), dx.deconvolve(y, psf))
    # The check comes before the other validation (an integer image is still a TypeError).
    with pytest.raises(TypeError, match="image has dtype"):
        dx.deconvolve(torch.ones(4, 4, dtype=torch.int64), psf, check_finite=True)


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------

N_THREADS = 8


def run_threads(fn, n=N_THREADS):
    """Run ``fn(i)`` in ``n`` threads released together; re-raise any error."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def body(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _plans():
    g = rng()
    psf = torch.rand(2, 5, 5, generator=g, dtype=F64)
    w_small = torch.randn(4, 3, 3, 3, generator=g, dtype=F64)     # fused C++ channel mix
    w_big = torch.randn(10, 9, 3, 3, generator=g, dtype=F64)      # batched matmul
    return {
        "circular": (dx.DeconvPlan(psf, (24, 20), eps=1e-2, reg="laplacian"), (3, 2, 24, 20)),
        "pinv": (dx.DeconvPlan(psf, (24, 20), method="pinv"), (3, 2, 24, 20)),
        "boundary": (dx.DeconvPlan(psf, (24, 20), eps=1e-2, boundary="symmetric", taper=2),
                     (3, 2, 24, 20)),
        "multichannel": (dx.DeconvPlan.for_conv2d(w_small, (16, 12)), (3, 4, 16, 12)),
        "multichannel_matmul": (dx.DeconvPlan.for_conv2d(w_big, (16, 12), eps=1e-3),
                                (2, 10, 16, 12)),
    }


@pytest.mark.parametrize("name", ["circular", "pinv", "boundary", "multichannel",
                                  "multichannel_matmul"])
def test_one_plan_from_8_threads_is_bit_identical_to_serial(name):
    plan, shape = _plans()[name]
    inputs = [torch.randn(*shape, generator=rng(i), dtype=F64) for i in range(N_THREADS)]
    # blur/adjoint of a multi-channel plan act on C_in channels; use the solve's output.
    serial = []
    for y in inputs:
        x = plan(y)
        serial.append((x, plan.adjoint(y), plan.blur(x)))

    def work(i):
        outs = []
        for _ in range(5):      # repeat: interleave with the other threads
            x = plan(inputs[i])
            outs.append((x, plan.adjoint(inputs[i]), plan.blur(x)))
        return outs

    for i, outs in enumerate(run_threads(work)):
        for triple in outs:
            for got, want in zip(triple, serial[i]):
                assert torch.equal(got, want), (name, i)


def test_lazily_cached_operator_is_safe_under_concurrent_first_use():
    # A fresh multi-channel plan builds its K cache on the first blur/adjoint:
    # 8 threads race to do it.
    w = torch.randn(6, 4, 3, 3, generator=rng(), dtype=F64)
    xs = [torch.randn(2, 4, 10, 10, generator=rng(i), dtype=F64) for i in range(N_THREADS)]
    want = [dx.DeconvPlan.for_conv2d(w, (10, 10)).blur(x) for x in xs]
    plan = dx.DeconvPlan.for_conv2d(w, (10, 10))
    got = run_threads(lambda i: plan.blur(xs[i]))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_plan_construction_from_threads_is_safe():
    g = rng()
    psf = torch.rand(4, 4, generator=g, dtype=F64)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=F64)
    y = torch.randn(2, 20, 18, generator=g, dtype=F64)
    yl = torch.randn(2, 6, 20, 18, generator=g, dtype=F64)
    ref = (dx.DeconvPlan(psf, (20, 18), eps=1e-3)(y), dx.DeconvPlan.for_conv2d(w, (20, 18))(yl),
           dx.deconvolve(y, psf, boundary="reflect"))

    def build(i):
        return (dx.DeconvPlan(psf, (20, 18), eps=1e-3)(y),
                dx.DeconvPlan.for_conv2d(w, (20, 18))(yl),
                dx.deconvolve(y, psf, boundary="reflect"))

    for got in run_threads(build):
        for a, b in zip(got, ref):
            assert torch.equal(a, b)


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_plan_build_leaves_other_threads_thread_count_alone(two_threads):
    """Regression: batched_linalg used to call torch.set_num_threads(1) for the
    whole process while building a plan. Threads started meanwhile took 1 as
    their setting for good (65 of 100 here), and the restore overwrote a
    setting another thread made in between."""
    w = torch.randn(6, 6, 3, 3, generator=rng(), dtype=F64)
    stop = threading.Event()
    errors = []

    def builder():
        try:
            while not stop.is_set():
                dx.LayerPlan(w, (32, 32))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    seen = []

    def probe():
        seen.append(torch.get_num_threads())

    b = threading.Thread(target=builder)
    b.start()
    try:
        for _ in range(60):
            t = threading.Thread(target=probe)
            t.start()
            t.join()
        # A user setting made while plans are being built survives them.
        torch.set_num_threads(3)
        for _ in range(20):
            dx.LayerPlan(w, (32, 32))   # the main thread builds too
    finally:
        stop.set()
        b.join()
    assert not errors
    assert seen == [2] * 60
    assert torch.get_num_threads() == 3
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen[-1] == 3


def test_batched_linalg_workers_run_single_threaded(two_threads):
    seen = []
    K = torch.randn(64, 3, 3, generator=rng(), dtype=torch.complex128)

    def fn(k):
        seen.append(torch.get_num_threads())
        return torch.linalg.svdvals(k)

    S = execution.batched_linalg(fn, K)
    assert torch.equal(S, torch.linalg.svdvals(K))
    assert len(seen) == 2 and torch.get_num_threads() == 2
    if threads._omp_set_num_threads() is not None:      # torch built with OpenMP (CI: yes)
        assert seen == [1, 1]


# ---------------------------------------------------------------------------
# Memory: no growth over 10,000 calls
# ---------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_10000_calls_keep_resident_memory_flat():
    g = rng()
    psf = torch.rand(5, 5, generator=g)
    y = torch.randn(4, 32, 32, generator=g)
    plan = dx.DeconvPlan(psf, (32, 32), eps=1e-2)
    w = torch.randn(3, 3, 3, 3, generator=g)
    yl = torch.randn(1, 3, 16, 16, generator=g)
    lplan = dx.DeconvPlan.for_conv2d(w, (16, 16))

    def step(i):
        plan(y)
        if i % 10 == 0:              # the one-shot functions build a plan per call
            dx.deconvolve(y, psf, eps=1e-2)
            lplan(yl)
            plan.blur(y)

    for i in range(2000):            # warm-up: allocator caches, lazy inits
        step(i)
    gc.collect()
    before = _rss_bytes()
    for i in range(10_000):
        step(i)
    gc.collect()
    grown = _rss_bytes() - before
    # One leaked 4x32x32 float32 result per call would be >= 160 MB.
    assert grown <= 8 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 10,000 calls"


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------

def _deterministic_outputs():
    g = rng(7)
    y = torch.randn(3, 2, 30, 28, generator=g, dtype=F64)
    y32 = y.float()
    psf = torch.rand(2, 5, 4, generator=g, dtype=F64)
    w = torch.randn(5, 4, 3, 3, generator=g, dtype=F64)
    yl = torch.randn(2, 5, 30, 28, generator=g, dtype=F64)
    return [
        dx.deconvolve(y, psf, eps=1e-2),
        dx.deconvolve(y32, psf.float(), method="pinv"),
        dx.deconvolve(y, psf, eps=1e-3, reg="laplacian", boundary="reflect"),
        dx.convolve(y, psf, boundary="zeros"),
        dx.conv2d_pinv(yl, w),
        dx.conv2d_pinv(yl.float(), w.float(), eps=1e-2),
        dx.DeconvPlan(psf, (30, 28), eps=1e-2).adjoint(y),
    ]


def test_same_inputs_give_bit_identical_outputs():
    first = _deterministic_outputs()
    for _ in range(3):      # fresh plans each time
        for a, b in zip(first, _deterministic_outputs()):
            assert torch.equal(a, b)


def test_bit_identical_across_processes():
    """Run to run: a fresh interpreter computes the same bytes."""
    # Same machine AND same thread count (FFT rounding may depend on the split).
    code = (f"import sys, hashlib, torch; torch.set_num_threads({torch.get_num_threads()});"
            "sys.path.insert(0, '.');"
            "import test_reliability as t;"
            "print(hashlib.sha256(b''.join(o.numpy().tobytes() for o in "
            "t._deterministic_outputs())).hexdigest())")
    tests = os.path.dirname(os.path.abspath(__file__))  # not the source tree: see test_cpu_fft
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tests, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import hashlib

    here = hashlib.sha256(b"".join(o.numpy().tobytes() for o in _deterministic_outputs()))
    assert proc.stdout.strip().splitlines()[-1] == here.hexdigest()


# ---------------------------------------------------------------------------
# Plans are real objects
# ---------------------------------------------------------------------------

def _object_plans():
    g = rng(3)
    psf = torch.rand(2, 4, 3, generator=g, dtype=F64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=F64)
    wd = torch.randn(3, 1, 3, 2, generator=g, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    size = (14, 12)
    return {
        "tikhonov": (dx.DeconvPlan(psf, size, eps=1e-2), (2, 2, *size)),
        "pinv": (dx.DeconvPlan(psf, size, method="pinv"), (2, 2, *size)),
        "laplacian": (dx.DeconvPlan(psf, size, eps=1e-2, reg="laplacian"), (2, 2, *size)),
        "reg_kernel": (dx.DeconvPlan(psf, size, eps=1e-2, reg=torch.rand(2, 2, generator=g,
                                                                          dtype=F64)), (2, 2, *size)),
        "wiener": (dx.DeconvPlan(psf, size, eps=torch.rand(*size, generator=g, dtype=F64)),
                   (2, 2, *size)),
        "boundary": (dx.DeconvPlan(psf, size, eps=1e-2, boundary="replicate", taper=3),
                     (2, 2, *size)),
        "depthwise": (dx.DeconvPlan.for_conv2d(wd, size, groups=3, dilation=(1, 2),
                                               bias=b[:3]), (2, 3, *size)),
        "multichannel": (dx.DeconvPlan.for_conv2d(w, size, bias=b), (2, 4, *size)),
        "matrix_free": (dx.LayerPlan(w, size, eps=1e-2, max_filter_bytes=0), (2, 4, *size)),
    }


@pytest.mark.parametrize("name", list(_object_plans()))
def test_plan_pickles_and_torch_saves(name):
    plan, shape = _object_plans()[name]
    y = torch.randn(*shape, generator=rng(), dtype=F64)
    want = plan(y)
    blob = pickle.dumps(plan)
    buf = io.BytesIO()
    torch.save(plan, buf)
    buf.seek(0)
    # A plan is a Python object, not a tensor dict: torch.load needs weights_only=False.
    loaded = [pickle.loads(blob), torch.load(buf, weights_only=False)]
    for p in loaded:
        assert type(p) is type(plan) and repr(p) == repr(plan)
        assert torch.equal(p(y), want)
    # The definition is stored, not the derived spectra / filters.
    spectrum = getattr(plan, "spectrum", None)
    filt = getattr(plan, "filter", None)
    derived = spectrum if spectrum is not None else filt
    if derived is not None:
        assert "spectrum" not in plan.__getstate__() and "filter" not in plan.__getstate__()


@pytest.mark.parametrize("name", ["tikhonov", "pinv", "wiener", "boundary", "depthwise"])
def test_plan_to_moves_between_float32_and_float64(name):
    plan, shape = _object_plans()[name]
    y = torch.randn(*shape, generator=rng(), dtype=F64)
    p32 = plan.to(dtype=torch.float32)
    assert p32.dtype == torch.float32 and plan.dtype == F64          # a copy
    assert p32(y.float()).dtype == torch.float32
    assert rel_err(p32(y.float()), plan(y)) <= 1e-4
    with pytest.raises(TypeError, match="plan computes in torch.float32"):
        p32(y)
    # Positional dtype and (device, dtype), as Tensor.to; rebuilt, not cast:
    # float32 -> float64 equals a plan built in float64 from the float32 data.
    p64 = p32.to(torch.float64)
    p64b = p32.to("cpu", torch.float64)
    assert torch.equal(p64(y), p64b(y))
    back = p64.to(torch.float32)
    assert torch.equal(back(y.float()), p32(y.float()))
    assert torch.equal(plan.to("cpu")(y), plan(y))
    assert plan.to(torch.float16).dtype == torch.float32     # half images compute in float32
    with pytest.raises(TypeError, match="dtype=torch.int64 is not valid"):
        plan.to(dtype=torch.int64)


def test_multichannel_plan_to_dtype_keyword():
    plan, shape = _object_plans()["multichannel"]
    y = torch.randn(*shape, generator=rng(), dtype=F64)
    p32 = plan.to(dtype=torch.float32)
    assert rel_err(p32(y.float()), plan(y)) <= 1e-4
    assert torch.equal(p32.to(dtype=F64).to(dtype=torch.float32)(y.float()), p32(y.float()))


def test_multichannel_plan_to_positional_dtype():
    plan, shape = _object_plans()["multichannel"]
    assert plan.to(torch.float32).dtype == torch.float32


@pytest.mark.parametrize("groups,c_in", [(1, 3), (3, 3)])
def test_convpinv2d_state_dict_round_trip(groups, c_in):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, 3, 3, padding="same", padding_mode="circular", groups=groups,
                           dtype=F64)
    inv = dx.ConvPinv2d.from_conv(conv, (10, 9))
    y = torch.randn(2, 3, 10, 9, generator=rng(), dtype=F64)
    want = inv(y)
    buf = io.BytesIO()
    torch.save(inv.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)      # plain tensors: the safe loader works
    assert set(state) == {"weight", "bias"}
    other = torch.nn.Conv2d(c_in, 3, 3, padding="same", padding_mode="circular",
                            groups=groups, dtype=F64)
    fresh = dx.ConvPinv2d.from_conv(other, (10, 9))
    assert not torch.equal(fresh(y), want)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(y), want)             # the plan was rebuilt from the buffers
    # float32 round trip via the module API rebuilds the plan in the new dtype.
    f32 = fresh.float()
    assert rel_err(f32(y.float()), want) <= 1e-4
