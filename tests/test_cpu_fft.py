"""The C++ pipelines' own 2D real FFTs (csrc/fft.cpp, issue 8): MKL's DFTI
called directly where torch ships MKL, torch.fft otherwise. Checked against
scipy.fft (pocketfft, an independent implementation) on every code path:
one 2D descriptor, rows-then-columns for planes of 2^20 elements or more,
tiny planes, batches, both precisions, and the torch.fft fallback."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.fft
import torch

from deconv_ext import _C

# Subprocesses run in the tests folder: they import the deconv_ext under test
# (installed, or on PYTHONPATH), never a source tree's by accident.
TESTS = os.path.dirname(os.path.abspath(__file__))


def filter2d_oracle(x: torch.Tensor, k: torch.Tensor, conj: bool) -> np.ndarray:
    """irfft2(K rfft2(x)) by scipy.fft in float64/complex128."""
    X = scipy.fft.rfft2(x.double().numpy())
    K = k.to(torch.complex128).numpy()
    return scipy.fft.irfft2(X * (np.conj(K) if conj else K), s=x.shape[-2:])


def rel(a: torch.Tensor, b: np.ndarray) -> float:
    b = torch.from_numpy(np.asarray(b))
    return ((a.double() - b).norm() / b.norm()).item()


def test_mkl_dfti_is_used_where_torch_ships_mkl():
    from deconv_ext import build_check

    # A build records whether it had MKL's header (pip package mkl-include,
    # pinned in requirements.txt); a build without it takes torch.fft.
    built = build_check.recorded()
    expected = (torch.backends.mkl.is_available() and platform.machine() == "x86_64"
                and os.environ.get("DECONV_EXT_MKL") != "0"
                and (built is None or built["mkl_dfti"]))
    assert _C.mkl_dfti_enabled() == expected


SHAPES = [(512, 512), (17, 12), (2, 2), (3, 2), (2, 9), (1, 7), (6, 1), (1, 1), (33, 64),
          (1024, 1025), (1031, 1024)]  # the last two: 2^20 or more elements per plane


@pytest.mark.parametrize("size", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_filter2d_equals_scipy(gen, size, dtype, tol):
    batch = (2,) if size[0] * size[1] > 1e5 else (3, 2)
    x = torch.randn(*batch, *size, generator=gen, dtype=dtype)
    k = torch.randn(*batch, size[0], size[1] // 2 + 1, generator=gen,
                    dtype=torch.complex128).to(torch.complex64 if dtype == torch.float32
                                              else torch.complex128)
    for conj in (False, True):
        got = _C.filter2d(x, k, conj)
        assert got.dtype == dtype and got.shape == x.shape
        assert rel(got, filter2d_oracle(x, k, conj)) <= tol


def test_kernel_gradient_transform_equals_scipy(gen):
    """filter2d_grad_k runs rfft2 of the image and of the gradient (non-contiguous here)."""
    x = torch.randn(2, 40, 36, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 36, 40, generator=gen, dtype=torch.float64).transpose(-1, -2)
    got = torch.ops.deconv_ext.filter2d_grad_k(grad, x, [40, 19], False)
    # d/dK of sum(grad * irfft2(K X)) = sum over the batch of conj(X) rfft2(grad)/(HW) with
    # the columns that stand for two full-spectrum bins doubled (the irfft2 adjoint).
    G = scipy.fft.rfft2(grad.numpy()) / (40 * 36)
    G[..., 1:18] *= 2
    expect = (G * np.conj(scipy.fft.rfft2(x.numpy()))).sum(0)
    assert rel(torch.view_as_real(got), np.stack([expect.real, expect.imag], -1)) <= 1e-13


def test_many_shapes_in_turn_and_thread_counts(gen):
    """More shapes than the descriptor cache holds, twice, under 1 and 2 threads."""
    threads = torch.get_num_threads()
    sizes = [(8 + i, 6 + (i * 7) % 11) for i in range(40)]
    k_of = {s: torch.randn(s[0], s[1] // 2 + 1, generator=gen, dtype=torch.complex128)
            for s in sizes}
    x_of = {s: torch.randn(2, *s, generator=gen, dtype=torch.float64) for s in sizes}
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            for s in sizes:
                got = _C.filter2d(x_of[s], k_of[s], False)
                assert rel(got, filter2d_oracle(x_of[s], k_of[s], False)) <= 1e-13
    finally:
        torch.set_num_threads(threads)


def test_concurrent_calls_share_descriptors(gen):
    x = torch.randn(4, 96, 80, generator=gen, dtype=torch.float32)
    k = torch.randn(96, 41, generator=gen, dtype=torch.complex64)
    expect = _C.filter2d(x, k, False)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(_C.filter2d(x, k, False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    assert len(results) == 120 and all(torch.equal(r, expect) for r in results)


FALLBACK = r"""
import torch, deconv_ext, numpy as np, scipy.fft
from deconv_ext import _C
assert not _C.mkl_dfti_enabled()
g = torch.Generator().manual_seed(5)
for size in [(512, 512), (17, 12), (300, 520)]:  # 512x257 and 300x261: inverted in blocks
    x = torch.randn(2, *size, generator=g, dtype=torch.float64)
    k = torch.randn(size[0], size[1] // 2 + 1, generator=g, dtype=torch.complex128)
    got = _C.filter2d(x, k, False).numpy()
    want = scipy.fft.irfft2(scipy.fft.rfft2(x.numpy()) * k.numpy(), s=size)
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < 1e-13, (size, err)
print("ok")
"""


def test_torch_fft_fallback_equals_scipy():
    """DECONV_EXT_MKL=0: the torch.fft route (builds of torch without MKL take it)."""
    env = dict(os.environ, DECONV_EXT_MKL="0")
    proc = subprocess.run([sys.executable, "-c", FALLBACK], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "replicate", "zeros", "circular"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_fused_padded_solve_equals_the_ops(gen, mode, dtype):
    """_C.padded_deconv2d (eager fast path) == crop(deconv2d(pad(image))) by the ops."""
    ops = torch.ops.deconv_ext
    image = torch.rand(5, 2, 23, 18, generator=gen, dtype=torch.float64).to(dtype)  # 3 chunks
    cdtype = torch.complex64 if dtype != torch.float64 else torch.complex128
    rdtype = torch.float32 if dtype != torch.float64 else torch.float64
    Nh, Nw, top, left = 30, 28, 4, 5
    k = torch.randn(5, 1, Nh, Nw // 2 + 1, generator=gen, dtype=torch.complex128).to(cdtype)
    reg = torch.rand(Nh, Nw // 2 + 1, generator=gen, dtype=torch.float64).to(rdtype)
    thresh = torch.full((5, 1, 1, 1), 1e-3, dtype=rdtype)
    got = _C.padded_deconv2d(image, top, left, Nh, Nw, mode, k, reg, 0.05, thresh)
    buf = ops.pad(image, top, left, Nh, Nw, mode)
    want = ops.crop(ops.deconv2d(buf, k, reg, 0.05, thresh, False), top, left, 23, 18, dtype)
    assert got.dtype == dtype and got.shape == image.shape
    tol = {torch.float64: 1e-13, torch.float32: 1e-5, torch.float16: 1e-3}[dtype]
    assert rel(got, want.double().numpy()) <= tol


def test_fused_padded_solve_rejects_a_misfit():
    k = torch.zeros(30, 15, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="does not fit"):
        _C.padded_deconv2d(torch.rand(20, 20), 12, 0, 30, 28, "reflect", k, None, 0.1,
                           torch.zeros(()))
    with pytest.raises(RuntimeError, match="half spectrum"):
        _C.padded_deconv2d(torch.rand(20, 20), 0, 0, 30, 30, "reflect", k, None, 0.1,
                           torch.zeros(()))


@pytest.mark.parametrize("shape", [(9, 7), (8, 10), (1, 4), (5, 1), (1, 1), (2, 2), (3, 2, 33, 20),
                                   (1, 512, 384)], ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_dct_solve_equals_scipy_dctn(gen, shape, dtype, tol):
    """_C.dct_solve (Makhoul 2D around the pipelines' FFTs) == scipy's idctn(F dctn(x))."""
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    f = torch.randn(*shape[-2:], generator=gen, dtype=torch.float64)
    want = scipy.fft.idctn(f.numpy() * scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho"),
                           axes=(-2, -1), norm="ortho")
    got = _C.dct_solve(x.to(dtype), f.to(dtype))
    assert got.dtype == dtype and got.shape == x.shape
    assert rel(got, want) <= tol


def test_dct_solve_rejects_a_wrong_filter():
    with pytest.raises(RuntimeError, match="filter must be"):
        _C.dct_solve(torch.rand(6, 5), torch.rand(5, 6))
    with pytest.raises(RuntimeError, match="filter must be"):
        _C.dct_solve(torch.rand(6, 5), torch.rand(6, 5, dtype=torch.float64))


def test_bad_dtypes_and_lazy_views_of_the_fft_paths(gen):
    """Found in review: half/bfloat16 or mismatched grads reached raw MKL calls (heap
    corruption); a lazily negated view was read without its sign; an empty batch
    had no descriptor."""
    g = torch.randn(8, 8, generator=gen)
    k = torch.randn(8, 5, generator=gen, dtype=torch.complex64)
    for bad in (g.half(), g.bfloat16(), g.to(torch.int32)):
        with pytest.raises(RuntimeError, match="expected a float32 or float64|must match"):
            torch.ops.deconv_ext.filter2d_grad_k(bad, bad, [8, 5], False)
    with pytest.raises(RuntimeError, match="must match image"):
        torch.ops.deconv_ext.deconv2d_grad_k(g.half(), g, k, None, 0.1, torch.zeros(()), False)
    with pytest.raises(RuntimeError, match="must match image"):
        torch.ops.deconv_ext.deconv2d_grad_k(g, g.double(), k.to(torch.complex128), None, 0.1,
                           torch.zeros((), dtype=torch.float64), False)
    x = torch.randn(3, 10, 12, generator=gen, dtype=torch.float64)
    kk = torch.randn(10, 7, generator=gen, dtype=torch.complex128)
    neg = torch._neg_view(x)
    assert neg.is_neg() and neg.is_contiguous()
    assert rel(_C.filter2d(neg, kk, False), filter2d_oracle(-x, kk, False)) <= 1e-13
    f = torch.randn(10, 12, generator=gen, dtype=torch.float64)
    assert torch.allclose(_C.dct_solve(neg, f), -_C.dct_solve(x, f), rtol=0, atol=1e-13)
    empty = torch.zeros(0, 3, 10, 12, dtype=torch.float64)
    assert torch.ops.deconv_ext.filter2d_grad_k(empty, empty, [10, 7], False).abs().sum() == 0
    assert _C.filter2d(empty, kk, False).shape == empty.shape


@pytest.mark.parametrize("shape", [(3, 37, 50), (2, 64, 63), (1, 1100, 1001)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_exposed_transforms_match_scipy(gen, shape, dtype):
    # _C.rfft2 / _C.irfft2: what a solve that chooses eps from the spectrum
    # runs around it. The last shape passes 2^20 elements (rows, then columns).
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    Y = _C.rfft2(x)
    want = scipy.fft.rfft2(x.double().numpy())
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    scale = np.abs(want).max()
    assert Y.dtype == (torch.complex64 if dtype == torch.float32 else torch.complex128)
    assert np.abs(Y.to(torch.complex128).numpy() - want).max() <= tol * scale
    back = _C.irfft2(Y.clone(), shape[-1])
    assert back.dtype == dtype and back.shape == x.shape
    assert (back.double() - x.double()).abs().max() <= tol * float(x.abs().max()) * 10


def test_the_exposed_inverse_refuses_a_spectrum_that_does_not_fit():
    Y = torch.zeros(4, 9, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="width 20"):
        _C.irfft2(Y, 20)
    with pytest.raises(RuntimeError, match="complex64/complex128"):
        _C.irfft2(torch.zeros(4, 9), 16)
