"""The Triton back end's launch machinery, on CPU through the Triton interpreter:

* 64-bit offsets: the launch plan at sizes past 2**31 elements (shapes only),
  and every launcher on small views with strides past 2**31 elements into a
  sparse file (no memory is touched but the few pages read or written);
* samples sharing a spectrum: the spectrum is read once per block of
  samples (counted loads), the backward sums them in registers and allocates
  nothing of y's size;
* ``pad_backward`` loops over the preimage slots its tile needs only
  (counted loads), for every boundary rule and odd geometries;
* the CUDA pipeline functions (``deconv_ext.execution.torch_pipeline``) with the launchers:
  the inverse FFT's ``1 / (H W)`` folded into the per-frequency pass, results
  equal to the C++ ops.

Kernel compilation for sm_90 (vector widths, no FMA contraction, no 32-bit
index products in the 64-bit specialisations) is checked by
``tests/test_triton.py::test_kernels_compile_for_sm90``.
"""
import collections

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from deconv_ext import execution as _ops  # noqa: E402

if not _ops.available():
    pytest.skip("the C++ extension is not built", allow_module_level=True)

from deconv_ext.execution import torch_pipeline as pipeline  # noqa: E402
from deconv_ext import triton_kernels as tk  # noqa: E402
from deconv_ext.triton_kernels import _layout  # noqa: E402
from deconv_ext.triton_kernels import pad_crop as tk_pad  # noqa: E402
from deconv_ext.triton_kernels import spectral as tk_spec  # noqa: E402

ops = torch.ops.deconv_ext
interpreted = pytest.mark.skipif(not tk.INTERPRETED, reason="counts loads in the Triton interpreter")


def cspec(shape, dtype, gen):
    """A random complex tensor with no zero entries."""
    z = torch.complex(torch.randn(shape, generator=gen, dtype=torch.float64),
                      torch.randn(shape, generator=gen, dtype=torch.float64))
    return (z + 0.05 * torch.sgn(z)).to(dtype)


def close(a, b, rtol, atol):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def loads(monkeypatch):
    """Every load the interpreter executes: (program id, element addresses, mask)."""
    from triton.runtime import interpreter

    seen = []
    orig = interpreter.InterpreterBuilder.create_masked_load

    def spy(self, ptrs, mask, *args):
        seen.append((self.grid_idx[0], np.asarray(ptrs.data).ravel().copy(),
                     np.asarray(mask.data).ravel().copy()))
        return orig(self, ptrs, mask, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", spy)
    return seen


def touching(seen, t):
    """The loads (program id per load) that read some element of ``t``'s storage."""
    lo = t.untyped_storage().data_ptr()
    hi = lo + t.untyped_storage().nbytes()
    return [pid for pid, addr, mask in seen if np.any(mask & (addr >= lo) & (addr < hi))]


def reads(seen, t):
    """How many times each element (address) of ``t``'s storage was read: a set."""
    lo = t.untyped_storage().data_ptr()
    hi = lo + t.untyped_storage().nbytes()
    count = collections.Counter()
    for _, addr, mask in seen:
        count.update(addr[mask & (addr >= lo) & (addr < hi)].tolist())
    assert len(count) * t.element_size() == t.untyped_storage().nbytes() * (
        2 if t.is_complex() else 1)  # every float of t read (complex: re and im)
    return set(count.values())


# ---------------------------------------------------------------------------
# 64-bit offsets
# ---------------------------------------------------------------------------


def test_plan_offsets_past_int32(monkeypatch):
    """The launch plan's arithmetic at sizes no test machine holds."""
    monkeypatch.setattr(tk_spec, "BLOCK_OVERRIDE", (1024, 4))  # the GPU's, not the interpreter's
    c64 = torch.float32
    # One coalesced row of 2**31 + 5 complex elements (k broadcast): 64-bit
    # indices, and the blocks cover the whole row.
    L = 2**31 + 5
    plan = tk_spec.plan_launch([L], [[1], [1], [0]], (True, True, True), (2,), c64, 1)
    (offs, (D0, D1, D2, Lp), st, nblk, grid), = plan.launches
    assert plan.int64 and Lp == L and nblk * plan.block >= L > (nblk - 1) * plan.block
    assert grid == nblk < 2**31
    # Just below: 2**30 - 1 complex elements is 2**31 - 2 floats; the
    # imaginary part of the last one is float 2**31 - 1: 64-bit.
    n = 2**30 - 1
    assert not tk_spec.plan_launch([n - 1], [[1], [1], [1]], (True,) * 3, (), c64, 1).int64
    assert tk_spec.plan_launch([n + 1], [[1], [1], [1]], (True,) * 3, (), c64, 1).int64
    # 4096 samples of a 1024 x 513 spectrum: a program loops over the samples
    # (k's stride along them is 0), offsets past 2**31 floats, per-sample
    # thresholds stride 1 along the samples.
    shape = [4096, 1024, 513]
    y = [1024 * 513, 513, 1]
    plan = tk_spec.plan_launch(shape, [y, y, [0, 513, 1], [1, 0, 0], [0, 0, 0]],
                               tk_spec._SOLVE_PAIRS, (2, 4), c64, target=1)
    assert plan.ns == 4096 and plan.loop == [1024 * 513, 1024 * 513, 0, 1, 0]
    assert plan.int64 and plan.nch == 1 and plan.aligned
    # Too few programs for the device: the samples split into chunks.
    plan = tk_spec.plan_launch(shape, [y, y, [0, 513, 1], [1, 0, 0], [0, 0, 0]],
                               tk_spec._SOLVE_PAIRS, (2, 4), c64, target=8 * 513)
    assert plan.launches[0][3] == 513  # blocks of 1024 in a row of 1024 * 513
    assert plan.nch == 8 and plan.spb == 512 and plan.launches[0][4] == 8 * 513
    # Rows of 961 (odd) complex elements: 16-byte row starts when sliced
    # from rows of 962, not when packed.
    plan = tk_spec.plan_launch([3, 5, 961], [[962 * 5, 962, 1]] * 3, (True,) * 3, (2,), c64, 1)
    assert plan.aligned and plan.ns == 1
    plan = tk_spec.plan_launch([3, 5, 961], [[961 * 5, 961, 1]] * 2 + [[0, 961, 1]], (True,) * 3,
                               (2,), c64, 1)
    assert not plan.aligned and plan.ns == 3 and plan.loop == [961 * 5, 961 * 5, 0]
    assert _layout.needs_int64([2, 3], [[2**31 - 3, 1]]) is True
    assert _layout.needs_int64([2, 3], [[2**31 - 4, 1]]) is False


@pytest.fixture
def sparse(tmp_path):
    """A storage of 2**31 + 2**20 float32 (or half as many complex64) backed
    by a sparse file: views with strides past 2**31 elements, no memory."""
    n = 2**31 + 2**20

    def make(dtype):
        path = tmp_path / f"sparse_{str(dtype).split('.')[-1]}.bin"
        count = n if dtype == torch.float32 else n // 2
        return torch.from_file(str(path), shared=True, size=count, dtype=dtype)

    return make


def _fill(view, gen, dtype):
    src = cspec(view.shape, dtype, gen) if dtype.is_complex else torch.randn(
        view.shape, generator=gen, dtype=torch.float64).to(dtype)
    view.copy_(src)
    return src


def test_spectral_views_past_int32(sparse, gen):
    """y, k, reg and grad at element offsets past 2**31 floats in one storage."""
    big = sparse(torch.complex64)
    real = sparse(torch.float32)
    # y: (2, 3, 5) with a sample stride past 2**30 complex (2**31 floats).
    y = big.as_strided((2, 3, 5), (2**30 + 3, 7, 1), 11)
    k = big.as_strided((3, 5), (9, 1), 2**30 + 2**18)
    reg = real.as_strided((5,), (1,), 2**31 + 77)
    yc = _fill(y, gen, torch.complex64)
    kc = _fill(k, gen, torch.complex64)
    rc = (torch.rand(5, generator=gen) + 0.5)
    reg.copy_(rc)
    th = torch.full((2, 1, 1), 0.3)
    for r, e in ((None, 0.1), (reg, 0.2), (None, 0.0)):
        rr = rc if r is not None else None
        close(tk.spectral_solve(y, k, r, e, th), ops.spectral_solve(yc, kc, rr, e, th), 2e-6, 1e-6)
    close(tk.spectral_mul(y, k, True), ops.spectral_mul(yc, kc, True), 2e-6, 1e-6)
    grad = big.as_strided((2, 3, 5), (2**30 - 101, 5, 1), 2**17)
    gc = _fill(grad, gen, torch.complex64)
    for a, b in zip(tk.spectral_solve_backward(grad, y, k, reg, 0.2, th),
                    ops.spectral_solve_backward(gc, yc, kc, rc, 0.2, th)):
        close(a, b, 2e-5, 2e-5)
    # In place, into the view: only the view's elements change.
    expect = ops.spectral_solve(yc, kc, None, 0.1, th)
    tk.spectral_solve_(y, k, None, 0.1, th)
    close(y, expect, 2e-6, 1e-6)
    close(k, kc, 0, 0)


def test_pad_views_past_int32(sparse, gen):
    big = sparse(torch.float32)
    # (2, 4, 6) planes 2**31 + 9 floats apart, rows 1000 apart, transposed columns.
    x = big.as_strided((2, 4, 6), (2**31 + 9, 1000, 3), 5)
    xc = _fill(x, gen, torch.float32)
    for mode in ("reflect", "replicate", "circular", "zeros"):
        close(tk.pad(x, 2, 3, 9, 11, mode), ops.pad(xc, 2, 3, 9, 11, mode), 0, 0)
        g = big.as_strided((2, 9, 11), (2**31 - 2**19, 2**14, 1), 2**20)
        gc = _fill(g, gen, torch.float32)
        close(tk.pad_backward(g, 2, 3, 4, 6, mode), ops.pad_backward(gc, 2, 3, 4, 6, mode),
              1e-6, 1e-6)
    close(tk.crop(x, 1, 2, 3, 3, torch.float64), ops.crop(xc, 1, 2, 3, 3, torch.float64), 0, 0)


# ---------------------------------------------------------------------------
# Samples sharing a spectrum
# ---------------------------------------------------------------------------


@interpreted
@pytest.mark.parametrize("spb", [None, 3, 1])
def test_spectrum_read_once_per_block_of_samples(spb, loads, gen, monkeypatch):
    """k (3, 5, 6) shared by 4 samples: read once per program chunk of samples."""
    monkeypatch.setattr(tk_spec, "SAMPLES_OVERRIDE", spb)
    y = cspec((4, 3, 5, 6), torch.complex64, gen)
    k = cspec((3, 5, 6), torch.complex64, gen)
    reg = torch.rand(5, 6, generator=gen) + 0.5
    th = torch.rand(4, 1, 1, 1, generator=gen) * 0.1
    chunks = 1 if spb is None else -(-4 // spb)
    for run, expect in ((lambda: tk.spectral_solve(y, k, reg, 0.2, th),
                         lambda: ops.spectral_solve(y, k, reg, 0.2, th)),
                        (lambda: tk.spectral_mul(y, k, False), lambda: ops.spectral_mul(y, k, False))):
        loads.clear()
        got = run()
        close(got, expect(), 2e-6, 1e-6)
        assert reads(loads, k) == {chunks}        # once per chunk of samples
        assert reads(loads, y) == {1}
    loads.clear()
    grad = cspec(y.shape, torch.complex64, gen)
    gk, greg = tk.spectral_solve_backward(grad, y, k, reg, 0.2, th)
    # reg is shared by the channels too: once per (channel, chunk) program.
    assert reads(loads, k) == {chunks} and reads(loads, reg) == {3 * chunks}
    assert reads(loads, y) == {1} and reads(loads, grad) == {1}
    ck, creg = ops.spectral_solve_backward(grad, y, k, reg, 0.2, th)
    close(gk, ck, 2e-5, 2e-5)
    close(greg, creg, 2e-5, 2e-5)


# (y, k, reg or None, thresh, samples summed in the kernel): per-channel k
# with shared reg, per-sample k, k shared over two dims that do not coalesce
# (the larger is looped, torch sums the other), 2-D.
BROADCASTS = [((4, 3, 5, 6), (3, 5, 6), (5, 6), (4, 1, 1, 1), 4),
              ((4, 3, 5, 6), (4, 1, 5, 6), None, (1,), 3),
              ((2, 3, 4, 5, 6), (1, 3, 1, 5, 6), (1, 1, 1, 5, 6), (2, 1, 4, 1, 1), 4),
              ((5, 7), (5, 7), (5, 1), (), 1)]


@pytest.mark.parametrize("spb", [None, 2])
@pytest.mark.parametrize("shapes", BROADCASTS)
def test_backward_sums_in_kernel(shapes, spb, gen, monkeypatch):
    """Gradients w.r.t. k and reg equal the C++ op and torch autograd, and no
    tensor of y's size is allocated: the partial sums are y's size over the
    samples summed in the kernel (k's size where k is shared), per chunk."""
    from torch.utils._python_dispatch import TorchDispatchMode

    monkeypatch.setattr(tk_spec, "SAMPLES_OVERRIDE", spb)
    ys, ks, rs, ts, ns = shapes
    y = cspec(ys, torch.complex128, gen)
    k = cspec(ks, torch.complex128, gen)
    reg = None if rs is None else torch.rand(rs, generator=gen, dtype=torch.float64) + 0.5
    th = torch.full(ts, 0.05, dtype=torch.float64)
    grad = cspec(ys, torch.complex128, gen)
    eps = 0.3

    allocs = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name in ("empty", "empty_strided", "zeros", "new_empty", "new_zeros", "clone",
                        "sum", "mul", "add", "contiguous", "zeros_like", "empty_like"):
                for o in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(o, torch.Tensor):
                        allocs.append((name, o.numel()))
            return out

    with Sizes():
        gk, greg = tk.spectral_solve_backward(grad, y, k, reg, eps, th)
    chunks = 1 if spb is None else -(-ns // spb)
    assert max(n for _, n in allocs) == y.numel() // ns * chunks, allocs
    ck, creg = ops.spectral_solve_backward(grad, y, k, reg, eps, th)
    close(gk, ck, 1e-12, 1e-12)
    close(greg, creg, 1e-12, 1e-12)
    # Independent oracle: autograd through the formula.
    kk = k.clone().requires_grad_()
    rr = reg.clone().requires_grad_() if reg is not None else None
    e = torch.tensor(eps, dtype=torch.float64, requires_grad=reg is None)
    p = e * (rr if rr is not None else 1.0)
    (torch.conj(kk) * y / (kk.real ** 2 + kk.imag ** 2 + p)).backward(grad)
    close(gk, kk.grad, 1e-10, 1e-10)
    close(greg, rr.grad if rr is not None else e.grad, 1e-10, 1e-10)


# ---------------------------------------------------------------------------
# pad_backward: per-tile trip counts
# ---------------------------------------------------------------------------


def _index_map(n, before, total, mode):
    """Source index (or -1) of each of ``total`` extended indices, by numpy.pad."""
    after = total - n - before
    np_mode = {"zeros": "constant", "reflect": "reflect", "symmetric": "symmetric",
               "replicate": "edge", "circular": "wrap"}[mode]
    if n == 1 and np_mode == "reflect":
        np_mode = "edge"
    kw = {"constant_values": -1} if np_mode == "constant" else {}
    full = np.pad(np.arange(n), (max(before, 0), max(after, 0)), mode=np_mode, **kw)
    return full[max(-before, 0): max(-before, 0) + total]


def _tile_counts(n, before, total, mode, tile):
    """Per tile of ``tile`` source indices: the most preimages any of them has."""
    m = _index_map(n, before, total, mode)
    counts = np.bincount(m[m >= 0], minlength=n)
    return [int(counts[i:i + tile].max()) for i in range(0, n, tile)]


MODES = ["zeros", "reflect", "symmetric", "replicate", "circular"]


@interpreted
@pytest.mark.parametrize("mode", MODES)
def test_pad_backward_trip_counts(mode, loads, gen, monkeypatch):
    """A 24 x 40 image padded 5..11 rows and 9..7 columns, 4 x 8 tiles:
    interior tiles load once; no tile loads more slots than its border needs."""
    monkeypatch.setattr(tk_pad, "TILE_OVERRIDE", (4, 8, 1))
    h, w, top, left, GH, GW = 24, 40, 5, 9, 40, 56
    g = torch.randn(GH, GW, generator=gen, dtype=torch.float64)
    got = tk.pad_backward(g, top, left, h, w, mode)
    close(got, ops.pad_backward(g, top, left, h, w, mode), 0, 0)
    per_program = collections.Counter(pid for pid, _, _ in loads)
    rows = _tile_counts(h, top, GH, mode, 4)
    cols = _tile_counts(w, left, GW, mode, 8)
    nbw = len(cols)
    for tr, cr in enumerate(rows):
        for tc, cc in enumerate(cols):
            n = per_program[tr * nbw + tc]
            if cr == 1 and cc == 1:
                assert n == 1, (tr, tc, n)
            elif mode == "replicate":  # slots are the preimages themselves
                assert n == cr * cc, (tr, tc, n, cr, cc)
            else:  # a tile's slot range may skip one parity or period per axis
                assert cr * cc <= n <= (2 * cr + 1) * (2 * cc + 1), (tr, tc, n, cr, cc)


# (h, w, top, left, GH, GW): the window partly or wholly off the image,
# pads many times the image, 1-pixel axes, negative offsets.
ODD_GEOMETRIES = [(4, 5, -3, -2, 3, 4), (3, 4, 7, 9, 14, 19), (1, 6, 2, -1, 7, 4),
                  (5, 1, -1, 3, 9, 8), (4, 4, -9, 6, 5, 5), (2, 3, 11, 12, 6, 7),
                  (6, 7, 0, 0, 6, 7)]


@pytest.mark.parametrize("geom", ODD_GEOMETRIES)
@pytest.mark.parametrize("tile", [(2, 4, 1), None])
def test_pad_backward_geometries(geom, tile, gen, monkeypatch):
    """Bit-equal to the C++ op (the same summation order) and the adjoint of pad."""
    monkeypatch.setattr(tk_pad, "TILE_OVERRIDE", tile)
    h, w, top, left, GH, GW = geom
    g = torch.randn(2, GH, GW, generator=gen, dtype=torch.float64)
    x = torch.randn(2, h, w, generator=gen, dtype=torch.float64)
    for mode in MODES:
        got = tk.pad_backward(g, top, left, h, w, mode)
        close(got, ops.pad_backward(g, top, left, h, w, mode), 0, 0)
        lhs = float((ops.pad(x, top, left, GH, GW, mode) * g).sum())
        rhs = float((x * got).sum())
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (mode, lhs, rhs)


# ---------------------------------------------------------------------------
# The CUDA pipeline functions with the launchers
# ---------------------------------------------------------------------------


def test_pipeline_folds_the_inverse_fft_scale(gen, monkeypatch):
    """deconv_ext.execution.torch_pipeline (the CUDA kernels of deconv2d / filter2d) with the
    Triton launchers: irfft2(norm="forward") after a solve that applies
    1 / (H W), and results equal to the C++ ops."""
    norms, scales = [], []
    irfft2 = torch.fft.irfft2

    def spy_irfft2(*a, **kw):
        norms.append(kw.get("norm"))
        return irfft2(*a, **kw)

    monkeypatch.setattr(torch.fft, "irfft2", spy_irfft2)

    class Launchers:
        def __getattr__(self, name):
            fn = getattr(tk, name)

            def call(*a, **kw):
                scales.append((name, kw.get("scale")))
                return fn(*a, **kw)
            return call

    kern = Launchers()
    for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-12)):
        cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
        H, W = 9, 14
        x = torch.rand(2, 3, H, W, generator=gen, dtype=torch.float64).to(dtype) + 0.1
        k = cspec((3, H, W // 2 + 1), cdt, gen)
        reg = torch.rand(H, W // 2 + 1, generator=gen, dtype=torch.float64).to(dtype)
        th = torch.full((2, 1, 1, 1), 0.2, dtype=dtype)
        for adjoint in (False, True):
            for r, e in ((None, 0.05), (reg, 0.1), (None, 0.0)):
                norms.clear()
                scales.clear()
                got = pipeline.deconv2d(kern, x, k, r, e, th, adjoint)
                assert norms == ["forward"] and scales == [("spectral_solve_", 1.0 / (H * W))]
                close(got, ops.deconv2d(x, k, r, e, th, adjoint), tol, tol)
        for conj in (False, True):
            norms.clear()
            got = pipeline.filter2d(kern, x, k, conj)
            assert norms == ["forward"]
            close(got, ops.filter2d(x, k, conj), tol, tol)
        g = torch.rand(2, 3, H, W, generator=gen, dtype=torch.float64).to(dtype)
        for a, b in zip(pipeline.deconv2d_grad_k(kern, g, x, k, reg, 0.1, th, False),
                        ops.deconv2d_grad_k(g, x, k, reg, 0.1, th, False)):
            close(a, b, tol * 10, tol * 10)
        close(pipeline.filter2d_grad_k(kern, g, x, list(k.shape), True),
              ops.filter2d_grad_k(g, x, list(k.shape), True), tol * 10, tol * 10)


# ---------------------------------------------------------------------------
# The GPU check's scripts, checked without a GPU
# ---------------------------------------------------------------------------

SCRIPTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_script_parses():
    import subprocess

    res = subprocess.run(["bash", "-n", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_bench_gpu_arguments_and_dry_run(tmp_path, monkeypatch):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPTS / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for bad in (["--device", "cpu"], ["--budget", "0"], ["--only", "nonsense"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    args = bench.parse_args(["--device", "cpu", "--dry-run", "--only", "correct", "graphs"])
    assert args.only == ["correct", "graphs"] and args.budget > 0
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.main(["--device", "cpu", "--dry-run"]) == 0
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())["rows"]
    sections = {r["section"] for r in rows}
    assert {"correct", "bandwidth", "e2e", "host", "graphs", "boundary", "multichan"} <= sections
    assert not bench.failed(rows), bench.failed(rows)
    assert sum(1 for r in rows if r.get("ok")) >= 40  # the correctness rows ran
    assert "| correct |" in (tmp_path / "bench_gpu.md").read_text()
    # A failing comparison is a failing row (the script's exit status).
    run = bench.Run(torch.device("cpu"), True, 10.0, bench.Timer(torch.device("cpu"), 0, 1))
    run.compare("x", torch.ones(3), torch.ones(3) * 1.1, 1e-3)
    assert bench.failed(run.rows)
    run.guarded("s", "boom", lambda: 1 / 0)
    assert "ZeroDivisionError" in run.rows[-1]["error"]


# ---------------------------------------------------------------------------
# CUDA (run by benchmarks/gpu_check.sh)
# ---------------------------------------------------------------------------

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_cuda_multichannel_matches_cpu(gen):
    import deconv_ext as dx

    w = torch.randn(3, 3, 5, 5, generator=gen) * 0.2
    w[torch.arange(3), torch.arange(3), 2, 2] += 1.0
    out = torch.randn(2, 3, 40, 36, generator=gen)
    for eps in (0.0, 1e-3):
        close(dx.conv2d_pinv(out.cuda(), w.cuda(), eps=eps).cpu(), dx.conv2d_pinv(out, w, eps=eps),
              1e-3, 1e-3)
        plan_c = dx.DeconvPlan.for_conv2d(w.cuda(), (40, 36), eps=eps)
        plan = dx.DeconvPlan.for_conv2d(w, (40, 36), eps=eps)
        close(plan_c(out.cuda()).cpu(), plan(out), 1e-3, 1e-3)
    wd = torch.rand(3, 1, 3, 3, generator=gen) + 0.1  # depthwise: the element-wise plan
    plan_c = dx.DeconvPlan.for_conv2d(wd.cuda(), (40, 36), groups=3, eps=1e-3)
    close(plan_c(out.cuda()).cpu(), dx.DeconvPlan.for_conv2d(wd, (40, 36), groups=3, eps=1e-3)(out),
          1e-4, 1e-4)


@pytest.mark.cuda
@cuda
def test_cuda_layer_plan_calls_do_not_sync(gen):
    """Multi-channel plan calls (the stored filter, and matrix-free Tikhonov
    that solves per row block) never wait for the host."""
    import deconv_ext as dx

    w = (torch.randn(3, 3, 5, 5, generator=gen) * 0.2).cuda()
    out = torch.randn(2, 3, 40, 36, generator=gen).cuda()
    plans = [dx.LayerPlan(w, (40, 36), eps=1e-3),
             dx.LayerPlan(w, (40, 36), eps=1e-3, max_filter_bytes=0)]
    expect = dx.LayerPlan(w.cpu(), (40, 36), eps=1e-3)(out.cpu())
    for plan in plans:
        plan(out)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = plan(out)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        close(got.cpu(), expect, 1e-3, 1e-3)


@pytest.mark.cuda
@cuda
def test_cuda_plan_call_graph_capturable(gen):
    """A plan call is captured in a CUDA graph with no host synchronisation."""
    import deconv_ext as dx

    plan = dx.DeconvPlan(torch.rand(3, 5, 5, generator=gen).cuda() + 0.1, (64, 48), eps=1e-2)
    static = (torch.rand(2, 3, 64, 48, generator=gen) + 0.1).cuda()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up: kernels compiled, allocator primed
            plan(static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            out = plan(static)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    fresh = (torch.rand(2, 3, 64, 48, generator=gen) + 0.1).cuda()
    static.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    close(out, plan(fresh), 1e-6, 1e-6)


@pytest.mark.cuda
@cuda
def test_cuda_one_shot_calls_reuse_their_plan_without_syncing(gen):
    """Repeated one-shot ``deconvolve`` with the same CUDA PSF builds its plan
    once and, after that, neither rebuilds it nor synchronises with the host."""
    import deconv_ext as dx
    from deconv_ext.plans import cache

    cache.clear()
    psf = (torch.rand(5, 5, generator=gen) + 0.1).cuda()
    y = (torch.rand(2, 3, 64, 48, generator=gen) + 0.1).cuda()
    first = dx.deconvolve(y, psf, 1e-2)
    assert len(cache._plans) == 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = dx.deconvolve(y, psf, 1e-2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(cache._plans) == 1
    close(again, first, 0, 0)
    psf.mul_(2.0)  # changed in place: a new plan, the right answer
    close(dx.deconvolve(y, psf, 1e-2).cpu(), dx.deconvolve(y.cpu(), psf.cpu(), 1e-2), 1e-4, 1e-4)
    assert len(cache._plans) == 2


@pytest.mark.cuda
@cuda
def test_cuda_row_past_int32():
    """One coalesced row of 2**31 + 5 complex elements (the column index
    itself past int32), in place: the last elements are right."""
    n = 2**31 + 5
    free, _ = torch.cuda.mem_get_info()
    if free < n * 8 + (2 << 30):
        pytest.skip("not enough GPU memory for a 2**31-element spectrum")
    y = torch.full((n,), 1 + 2j, dtype=torch.complex64, device="cuda")
    y[-1] = 3 - 1j
    k = torch.full((1,), 2 - 1j, dtype=torch.complex64, device="cuda")
    th = torch.zeros((), device="cuda")
    ops.spectral_solve_(y, k, None, 0.0, th)  # pinv: y / k
    expect = torch.tensor([(1 + 2j) / (2 - 1j), (3 - 1j) / (2 - 1j)], dtype=torch.complex64)
    got = torch.stack([y[0], y[2**31 - 1], y[2**31], y[-1]]).cpu()
    close(got, expect[[0, 0, 0, 1]], 1e-6, 1e-6)
    del y
    torch.cuda.empty_cache()


def test_launchers_report_a_device_mismatch_as_the_cpp_ops_do():
    """Errors from inside ops are RuntimeError, from C++ and Triton alike."""
    y = torch.ones(4, 3, dtype=torch.complex64)
    k = torch.ones(4, 3, dtype=torch.complex64, device="meta")
    thr = torch.zeros(())
    with pytest.raises(RuntimeError, match="is on meta"):
        tk.spectral_solve(y, k, None, 0.1, thr)
    with pytest.raises(RuntimeError, match="is on meta"):
        tk_pad._check_same_device(torch.ones(1), "x", torch.ones(1, device="meta"), "out")
