"""Reliability of the library's own state and inputs at the edges (issue 18's reproductions).

Hangs and crashes run in a subprocess with a timeout, so that a hang is a
failure, not a stuck suite.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import deconv_ext as dx
from deconv_ext import reference
from oracles import rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, env=None, timeout=60):
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


MEASURE = """
import torch, deconv_ext as dx
x = torch.rand(3, 24, 20, generator=torch.Generator().manual_seed(0))
y = dx.deconvolve(x, torch.rand(3, 3))
assert torch.isfinite(y).all()
print("ok")
"""


@pytest.mark.parametrize("kind", ["fifo", "devzero", "directory", "corrupt"])
def test_a_strange_cache_file_neither_blocks_nor_fails(tmp_path, kind):
    cache = tmp_path / "deconv_ext"
    cache.mkdir()
    path = cache / "fft_choice.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("{not json")
    proc = _run(MEASURE, env={"XDG_CACHE_HOME": str(tmp_path), "DECONV_EXT_CPU_FFT": "auto"},
                timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
    assert proc.stderr.count("FFT choices are kept in memory only") <= 1
    assert not list(cache.glob("*.tmp")), "a temporary file was left behind"


def test_an_unwritable_cache_warns_once_and_works(tmp_path):
    # A regular file where the cache folder should be: nothing can be written
    # below it (even as root, unlike a read-only mode).
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    code = MEASURE + "y = dx.deconvolve(torch.rand(2, 30, 16), torch.rand(3, 3)); print('ok2')"
    proc = _run(code, env={"XDG_CACHE_HOME": str(blocker), "DECONV_EXT_CPU_FFT": "auto"})
    assert proc.returncode == 0 and "ok2" in proc.stdout, proc.stderr[-2000:]
    assert proc.stderr.count("FFT choices are kept in memory only") == 1


def test_concurrent_processes_keep_every_measured_shape(tmp_path):
    code = """
    import sys, torch, deconv_ext as dx
    i = int(sys.argv[1])
    for n in range(6):
        dx.deconvolve(torch.rand(1, 8 + 2 * n, 10 + i), torch.rand(3, 3))
    """
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), DECONV_EXT_CPU_FFT="auto")
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(i)], cwd=ROOT,
                              env=env) for i in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    saved = json.loads((tmp_path / "deconv_ext" / "fft_choice.json").read_text())
    assert len(saved) == 24 and set(saved.values()) <= {"pipeline", "scipy"}


def test_fork_while_another_thread_measures_does_not_hang(tmp_path):
    code = """
    import os, threading, time, torch, deconv_ext as dx
    from deconv_ext.execution import fft_choice
    started = threading.Event()
    real = fft_choice._measure
    def slow(*a):
        started.set(); time.sleep(1.0); return real(*a)
    fft_choice._measure = slow
    t = threading.Thread(target=lambda: dx.deconvolve(torch.rand(30, 22), torch.rand(3, 3)))
    t.start(); started.wait()
    pid = os.fork()
    if pid == 0:
        dx.deconvolve(torch.rand(28, 26), torch.rand(3, 3))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    t.join()
    print("child", status)
    """
    proc = _run(code, env={"XDG_CACHE_HOME": str(tmp_path), "DECONV_EXT_CPU_FFT": "auto"},
                timeout=120)
    assert proc.returncode == 0 and "child 0" in proc.stdout, proc.stderr[-2000:]


def test_absurd_sizes_are_refused_at_once():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="image_size"):
        dx.DeconvPlan(torch.rand(3, 3), (10 ** 14, 8), boundary="reflect")
    with pytest.raises(ValueError, match="taper"):
        dx.deconvolve(torch.rand(9, 9), torch.rand(3, 3), boundary="reflect", taper=10 ** 13)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("shape", [(1, 0), (0, 5), (2, 0, 7), (3, 4, 0)])
def test_empty_images_give_empty_results(shape):
    x = torch.rand(*shape)
    psf = torch.rand(3, 3)
    assert dx.convolve(x, psf).shape == x.shape
    assert dx.deconvolve(x, psf).shape == x.shape
    assert dx.deconvolve(x, psf, boundary="reflect").shape == x.shape


def test_empty_layer_output_gives_empty_input():
    w = torch.rand(2, 3, 3, 3)
    assert dx.conv2d_pinv(torch.rand(1, 2, 0, 4), w).shape == (1, 3, 0, 4)


def test_an_inference_mode_call_does_not_poison_later_autograd():
    gen = torch.Generator().manual_seed(5)
    y = torch.rand(2, 16, 12, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    with torch.inference_mode():
        dx.deconvolve(y, psf, eps=1e-2)
    yg = y.clone().requires_grad_()
    out = dx.deconvolve(yg, psf, eps=1e-2)
    out.sum().backward()
    yr = y.clone().requires_grad_()
    reference.deconvolve(yr, psf, eps=1e-2).sum().backward()
    assert rel_err(yg.grad, yr.grad) <= 1e-10


@pytest.mark.parametrize("call", ["deconvolve", "plan", "convolve"])
def test_second_order_gradients_wrt_the_psf_raise(call):
    gen = torch.Generator().manual_seed(2)
    y = torch.rand(12, 10, generator=gen, dtype=torch.float64)
    p = torch.rand(3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    fn = {"deconvolve": lambda p: dx.deconvolve(y, p, eps=1e-2),
          "plan": lambda p: dx.DeconvPlan(p, (12, 10))(y),
          "convolve": lambda p: dx.convolve(y, p)}[call]
    (g,) = torch.autograd.grad(fn(p).pow(2).sum(), p, create_graph=True)
    assert g.norm() > 0
    with pytest.raises(NotImplementedError, match="second-order gradients w.r.t. the kernel"):
        torch.autograd.grad(g.sum(), p)


def test_cg_on_a_nan_plane_is_nan_and_not_converged():
    gen = torch.Generator().manual_seed(3)
    y = torch.rand(2, 12, 10, generator=gen, dtype=torch.float64)
    y[0, 3, 3] = float("nan")
    psf = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        x, info = dx.deconvolve(y, psf, eps=1e-2, boundary="reflect", solver="cg",
                                return_info=True)
    assert torch.isnan(x[0]).all() and torch.isfinite(x[1]).all()
    assert info.converged.tolist() == [False, True]
    clean, _ = dx.deconvolve(y[1:], psf, eps=1e-2, boundary="reflect", solver="cg",
                             return_info=True)
    assert rel_err(x[1], clean[0]) <= 1e-4  # both stopped by the CG tolerance


def test_cg_with_a_psf_requiring_grad_says_so():
    psf = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="solver='cg'"):
        dx.deconvolve(torch.rand(10, 9, dtype=torch.float64), psf, boundary="zeros", solver="cg")


@pytest.mark.parametrize("what", ["plan", "blur", "boundary", "depthwise", "dct"])
def test_jit_trace_records_the_ops(what):
    """A traced function must compute the same on new input (it once recorded only
    ``aten::empty``, returning uninitialised memory)."""
    gen = torch.Generator().manual_seed(4)
    psf = dx.gaussian(1.0, 5)
    x = torch.rand(2, 20, 18, generator=gen)
    if what == "depthwise":
        conv = torch.nn.Conv2d(3, 3, 3, padding="same", padding_mode="circular", groups=3,
                               bias=False)
        fn, x = dx.ConvPinv2d.from_conv(conv, (20, 18)), torch.rand(1, 3, 20, 18, generator=gen)
    elif what == "dct":
        fn = lambda a: dx.deconvolve(a, psf, boundary="symmetric", solver="dct")  # noqa: E731
    else:
        plan = dx.DeconvPlan(psf, (20, 18), boundary="reflect" if what == "boundary" else
                             "circular")
        fn = plan.blur if what == "blur" else plan
    traced = torch.jit.trace(lambda a: fn(a), x, check_trace=False)
    assert any(n.kind().startswith("deconv_ext::") for n in traced.graph.nodes())
    fresh = torch.rand(x.shape, generator=gen)
    assert torch.allclose(traced(fresh), fn(fresh), rtol=0, atol=1e-6)


def test_an_eps_tensor_that_does_not_broadcast_is_named():
    with pytest.raises(ValueError, match=r"eps of shape \(2, 2, 8, 8\) does not broadcast to image"):
        dx.deconvolve(torch.rand(8, 8), torch.rand(3, 3), eps=torch.rand(2, 2, 8, 8))
    plan = dx.DeconvPlan(torch.rand(3, 3), (8, 8), eps=torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="the plan's eps tensor"):
        plan(torch.rand(8, 8))
    assert plan(torch.rand(2, 2, 8, 8)).shape == (2, 2, 8, 8)


def test_device_tensor_cache_keys_follow_the_object_and_its_version():
    # The branch GPU PSFs take (no copy to the host), run here on "meta".
    from deconv_ext.plans import cache

    t = torch.empty(3, 3, device="meta")
    key = cache._digest(t)
    assert cache._digest(t) == key                     # the same object, unchanged: a hit
    t.add_(1.0)
    changed = cache._digest(t)
    assert changed != key                               # changed in place: a new key
    other = torch.empty(3, 3, device="meta")
    assert cache._digest(other) not in (key, changed)   # an equal-looking new tensor: new key
    del t
    reborn = torch.empty(3, 3, device="meta")           # may reuse the freed id
    assert cache._digest(reborn) not in (key, changed)


def _dense_operator(op) -> torch.Tensor:
    """The matrix of an exact forward model (solvers/operators.py), column by column."""
    H, W = op.in_size
    n = H * W
    basis = torch.eye(n, dtype=torch.float64).reshape(n, H, W)
    return op.matvec(basis).reshape(n, -1).T


# (seed, image size, PSF size, boundary): cond(A) 3e3 - 2e4, where a relative
# normal-equations residual of 1e-6 left CG 2-65% from the minimum-norm
# solution while it reported converged=True.
CG_PINV_CASES = [(0, (10, 9), (4, 3), "symmetric"), (5, (8, 9), (4, 3), "zeros"),
                 (1, (9, 8), (3, 4), "reflect"), (2, (9, 11), (3, 3), "replicate")]


@pytest.mark.parametrize("seed,size,ksize,boundary", CG_PINV_CASES)
def test_cg_pinv_reaches_the_minimum_norm_solution_it_reports(seed, size, ksize, boundary):
    from deconv_ext.solvers.operators import ConvOperator

    gen = torch.Generator().manual_seed(seed)
    psf = torch.rand(ksize, generator=gen, dtype=torch.float64)
    y = torch.rand(size, generator=gen, dtype=torch.float64)
    A = _dense_operator(ConvOperator(psf, size, boundary, torch.float64))
    want = (torch.linalg.pinv(A, rtol=1e-13) @ y.flatten()).reshape(size)
    x, info = dx.deconvolve(y, psf, method="pinv", boundary=boundary, solver="cg",
                            return_info=True)
    assert bool(info.converged) and float(info.residual) <= 1e-6
    err = float((x - want).norm() / x.norm())
    assert err <= 1e-6
    assert err <= float(info.error)  # the reported bound bounds the error


def test_cg_pinv_says_when_it_cannot_certify_the_solution():
    # Issue 18's reproduction: cond(A) = 6e4; converged=True at 8-23% (here 82%) error.
    from deconv_ext.solvers.operators import ConvOperator

    gen = torch.Generator().manual_seed(0)
    psf = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(12, 10, generator=gen, dtype=torch.float64)
    A = _dense_operator(ConvOperator(psf, (12, 10), "reflect", torch.float64))
    want = (torch.linalg.pinv(A, rtol=1e-13) @ y.flatten()).reshape(12, 10)
    with pytest.warns(RuntimeWarning,
                      match="estimated relative error bound .*cond\\(A\\) estimate"):
        x, info = dx.deconvolve(y, psf, method="pinv", boundary="reflect", solver="cg",
                                max_iter=400, return_info=True)
    assert not bool(info.converged) and float(info.error) > 1e-6
    assert float((x - want).norm() / want.norm()) <= float(info.error)
    x, info = dx.deconvolve(y, psf, method="pinv", boundary="reflect", solver="cg",
                            max_iter=3000, return_info=True)
    assert bool(info.converged) and float((x - want).norm() / x.norm()) <= 1e-6


def test_cg_tikhonov_reports_no_error_bound():
    gen = torch.Generator().manual_seed(6)
    y = torch.rand(11, 9, generator=gen, dtype=torch.float64)
    _, info = dx.deconvolve(y, torch.rand(3, 3, generator=gen, dtype=torch.float64), eps=1e-2,
                            boundary="reflect", solver="cg", return_info=True)
    assert info.error is None and bool(info.converged)


def _nan_at(t: torch.Tensor, *index) -> torch.Tensor:
    t = t.clone()
    t[index] = float("nan")
    return t


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_reg_kernel_is_refused(bad):
    # It once made |R|^2 NaN at every frequency, which the solve took for
    # eps |R|^2 = 0: the pseudo-inverse, silently.
    gen = torch.Generator().manual_seed(7)
    y = torch.rand(16, 12, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    reg = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    reg[0, 2] = bad
    for call in (lambda: dx.deconvolve(y, psf, eps=1e-2, reg=reg),
                 lambda: dx.deconvolve(y, psf, eps=1e-2, reg=reg, boundary="reflect", solver="cg"),
                 lambda: dx.DeconvPlan(psf, (16, 12), eps=1e-2, reg=reg)):
        with pytest.raises(ValueError, match=r"reg kernel must be finite; got \d NaN and \d"):
            call()


def test_a_nan_eps_tensor_is_refused_and_named():
    eps = _nan_at(torch.full((16, 12), 1e-2, dtype=torch.float64), 2, 3)
    y = torch.rand(16, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"eps tensor must be finite and >= 0 everywhere; got 1 NaN"):
        dx.deconvolve(y, torch.rand(3, 3, dtype=torch.float64), eps=eps)


@pytest.mark.parametrize("what", ["eps_nan", "eps_negative", "eps_inf", "reg_nan"])
def test_bad_eps_or_reg_values_under_compile_give_nan_not_the_pinv(what):
    """Compiled code cannot raise on values without a host sync (a graph break):
    the result is NaN instead of silently the pseudo-inverse at those frequencies."""
    gen = torch.Generator().manual_seed(8)
    y = torch.rand(2, 16, 12, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    eps = torch.rand(16, 12, generator=gen, dtype=torch.float64) * 1e-2 + 1e-3
    reg = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    fn = torch.compile(lambda y, e, r: dx.deconvolve(y, psf, eps=e, reg=r), fullgraph=True,
                       backend="aot_eager")
    good = fn(y, eps, reg)
    assert rel_err(good, reference.deconvolve(y, psf, eps=eps, reg=reg)) <= 1e-10
    value = {"eps_nan": float("nan"), "eps_negative": -1.0, "eps_inf": float("inf"),
             "reg_nan": float("nan")}[what]
    if what.startswith("eps"):
        eps = eps.clone()
        eps[3, 4] = value
    else:
        reg = reg.clone()
        reg[1, 1] = value
    assert torch.isnan(fn(y, eps, reg)).all()


@pytest.mark.parametrize("layout,which", [(lay, w) for lay in ("coo", "csr")
                                          for w in ("image", "psf", "eps", "weight")
                                          if (lay, w) != ("csr", "weight")])  # CSR is 2D
def test_sparse_tensors_are_named_and_refused(layout, which):
    gen = torch.Generator().manual_seed(9)
    y = torch.rand(12, 10, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)

    def sparse(t):
        return t.to_sparse() if layout == "coo" else t.to_sparse_csr()

    calls = {"image": (lambda: dx.deconvolve(sparse(y), psf), "image"),
             "psf": (lambda: dx.convolve(y, sparse(psf)), "psf"),
             "eps": (lambda: dx.deconvolve(y, psf, eps=sparse(torch.full((12, 10), 0.1,
                                                                         dtype=torch.float64))),
                     "eps tensor"),
             "weight": (lambda: dx.conv2d_pinv(y[None], sparse(psf)[None, None]), "weight")}
    call, name = calls[which]
    with pytest.raises(TypeError, match=f"{name} has layout torch.sparse_{layout}; expected a "
                                        f"dense \\(torch.strided\\) tensor; convert it with "
                                        f"\\.to_dense\\(\\)"):
        call()


def test_lazily_negated_views_work_like_their_values():
    # torch._neg_view once failed in the plan cache's hash ("view is not supported for
    # tensors with negative bit set"); a complex conj view is a dtype error like any complex.
    gen = torch.Generator().manual_seed(10)
    y = torch.rand(2, 12, 10, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    neg = torch._neg_view(psf)
    assert neg.is_neg()
    want = reference.deconvolve(y, -psf, eps=1e-2)
    assert rel_err(dx.deconvolve(y, neg, eps=1e-2), want) <= 1e-12
    assert rel_err(dx.convolve(torch._neg_view(y), neg), dx.convolve(y, psf)) <= 1e-12
    assert rel_err(dx.DeconvPlan(neg, (12, 10))(y), reference.deconvolve(y, -psf)) <= 1e-12
    reg = torch._neg_view(torch.rand(3, 3, generator=gen, dtype=torch.float64))
    assert rel_err(dx.deconvolve(y, psf, reg=reg),
                   reference.deconvolve(y, psf, reg=reg.resolve_neg())) <= 1e-12
    assert dx.filter_reach(neg).margin == dx.filter_reach(-psf).margin
    with pytest.raises(TypeError, match="psf has dtype torch.complex128; expected a real"):
        dx.deconvolve(y, torch.complex(psf, psf).conj())


@pytest.mark.parametrize("transform", ["vmap", "grad"])
@pytest.mark.parametrize("target", ["deconvolve", "plan", "psf", "convolve", "conv2d_pinv"])
def test_torch_func_transforms_get_a_clear_error(transform, target):
    gen = torch.Generator().manual_seed(11)
    y = torch.rand(3, 12, 10, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    plan = dx.DeconvPlan(psf, (12, 10))
    w = torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64)
    y0 = y[0]
    fns = {"deconvolve": (lambda a: dx.deconvolve(a, psf), y, "image"),
           "plan": (lambda a: plan(a), y, "image"),
           "psf": (lambda p: dx.deconvolve(y0, p), psf[None].repeat(3, 1, 1), "psf"),
           "convolve": (lambda a: dx.convolve(a, psf), y, "image"),
           "conv2d_pinv": (lambda a: dx.conv2d_pinv(a, w, groups=2), y[:, None].repeat(1, 2, 1, 1),
                           "output")}
    fn, arg, name = fns[target]
    if transform == "vmap":
        match = f"{name} is batched by torch.vmap, which deconv_ext's ops do not support"
        run = lambda: torch.vmap(fn)(arg)  # noqa: E731
    else:
        match = f"{name} is traced by a torch.func transform .*use torch.autograd.grad"
        arg = arg[0]
        run = lambda: torch.func.grad(lambda a: fn(a).sum())(arg)  # noqa: E731
    with pytest.raises(NotImplementedError, match=match):
        run()


def test_torch_func_works_on_the_reference_the_error_points_to():
    gen = torch.Generator().manual_seed(12)
    y = torch.rand(12, 10, generator=gen, dtype=torch.float64)
    psf = torch.rand(3, 3, generator=gen, dtype=torch.float64)
    g = torch.func.grad(lambda a: reference.deconvolve(a, psf, eps=1e-2).square().sum())(y)
    yg = y.clone().requires_grad_()
    dx.deconvolve(yg, psf, eps=1e-2).square().sum().backward()
    assert rel_err(g, yg.grad) <= 1e-10


def test_jit_script_of_a_module_holding_conv_pinv_says_what_to_use():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            conv = torch.nn.Conv2d(2, 2, 3, padding="same", padding_mode="circular")
            self.inv = dx.ConvPinv2d.from_conv(conv, (8, 8))

        def forward(self, x):
            return self.inv(x)

    for module in (Net(), Net().inv):
        with pytest.raises(NotImplementedError, match="ConvPinv2d cannot be compiled by "
                                                      "torch.jit.script .*use torch.jit.trace"):
            torch.jit.script(module)


def test_a_relative_xdg_cache_home_is_ignored(tmp_path):
    from deconv_ext import config

    home = tmp_path / "home"
    home.mkdir()
    assert config.from_environment({"XDG_CACHE_HOME": "rel/cache", "HOME": str(home)}).cache_dir \
        == str(home / ".cache" / "deconv_ext")
    assert config.from_environment({"XDG_CACHE_HOME": str(tmp_path / "abs")}).cache_dir \
        == str(tmp_path / "abs" / "deconv_ext")
    # With no absolute folder at all the choices stay in memory: never a relative path.
    assert config.from_environment({"XDG_CACHE_HOME": "rel", "HOME": "also/rel"}).cache_dir in (
        "", os.path.join(os.path.expanduser("~"), ".cache", "deconv_ext"))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, XDG_CACHE_HOME="relcache", HOME=str(home), DECONV_EXT_CPU_FFT="auto",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MEASURE)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
    assert list(work.iterdir()) == []  # nothing written into the working directory
    assert (home / ".cache" / "deconv_ext" / "fft_choice.json").is_file()


def test_no_absolute_cache_folder_keeps_choices_in_memory(tmp_path, monkeypatch):
    from deconv_ext import config
    from deconv_ext.execution import fft_choice

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fft_choice, "_warned", False)
    with config.override(cache_dir="", cpu_fft="auto"):
        assert fft_choice.cache_path() == ""
        with pytest.warns(RuntimeWarning, match="no absolute cache folder.*kept in memory only"):
            fft_choice.choose((1, 10, 14), torch.float32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype,eps", [(torch.float32, 1.4e-45), (torch.float32, 1e-40),
                                       (torch.float32, 2.9e-39), (torch.float64, 1e-310)])
def test_a_subnormal_eps_gives_a_finite_result(dtype, eps):
    # A 2x2 box has exact spectral zeros on an even grid: there 1 / (0 + eps)
    # overflowed to inf and 0 * inf made the whole image NaN.
    gen = torch.Generator().manual_seed(13)
    y = torch.rand(2, 16, 12, generator=gen, dtype=dtype)
    box = torch.full((2, 2), 0.25, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    want = dx.deconvolve(y, box, eps=tiny)
    assert torch.isfinite(want).all()
    assert torch.equal(dx.deconvolve(y, box, eps=eps), want)
    assert torch.isfinite(dx.deconvolve(y, box, eps=eps, boundary="reflect")).all()
    yg = y.clone().requires_grad_()  # the dispatcher route
    out = dx.deconvolve(yg, box, eps=eps)
    assert torch.equal(out.detach(), want)
    out.sum().backward()
    assert torch.isfinite(yg.grad).all()
    e = torch.full((16, 12), eps, dtype=dtype)
    assert torch.isfinite(dx.deconvolve(y, box, eps=e)).all()
    # An invertible PSF: a subnormal eps is the inverse.
    psf = torch.tensor([[0.1, 0.2, 0.1], [0.2, 1.0, 0.2], [0.1, 0.2, 0.1]], dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(dx.deconvolve(y, psf, eps=eps),
                   reference.deconvolve(y.double(), psf.double(), eps=0.0)) <= tol


@pytest.mark.parametrize("scale", [1e-25, 1e-20, 1e-18, 1e20, 1e25, 1e38])
@pytest.mark.parametrize("kind", ["tikhonov", "pinv", "reflect"])
def test_a_scaled_psf_in_float32_gives_the_scaled_answer(scale, kind):
    """deconvolve(y, s psf, s^2 eps) = deconvolve(y, psf, eps) / s: |K|^2 once
    overflowed (s = 1e20: error 0.25; 1e25: zeros) or its inverse did (1e-20: NaN)."""
    gen = torch.Generator().manual_seed(14)
    y = torch.rand(2, 16, 12, generator=gen)
    psf = torch.rand(3, 3, generator=gen)
    psf = psf / psf.sum()
    kw = {"tikhonov": dict(eps=1e-2), "pinv": dict(method="pinv"),
          "reflect": dict(eps=1e-2, boundary="reflect")}[kind]
    if kind == "reflect":
        want = dx.deconvolve(y.double(), psf.double(), **kw)
    else:
        want = reference.deconvolve(y.double(), psf.double(), **kw)
    scaled = dict(kw, eps=kw["eps"] * scale ** 2) if "eps" in kw else kw
    got = dx.deconvolve(y, psf * scale, **scaled)
    assert torch.isfinite(got).all()
    assert rel_err(got.double() * scale, want) <= 1e-5
    plan = dx.DeconvPlan(psf * scale, (16, 12), **scaled)
    assert rel_err(plan(y).double() * scale, want) <= 1e-5
    # blur applies the PSF as it is.
    boundary = kw.get("boundary", "circular")
    assert rel_err(plan.blur(got).double(),
                   dx.convolve(got.double(), (psf * scale).double(), boundary)) <= 1e-5
    # A linear loss: d loss / d out = scale * w stays finite in float32 even at 1e38.
    w = torch.rand(y.shape, generator=gen)
    yg = y.clone().requires_grad_()
    (dx.deconvolve(yg, psf * scale, **scaled) * scale * w).sum().backward()
    yr = y.double().clone().requires_grad_()
    (dx.deconvolve(yr, psf.double(), **kw) * w.double()).sum().backward()
    assert rel_err(yg.grad.double(), yr.grad) <= 1e-4


def test_the_default_cpu_fft_is_fixed_and_measures_nothing(tmp_path):
    # Issue 18: the timed choice flipped between runs; measuring is opt-in now.
    code = """
    import torch, deconv_ext as dx
    from deconv_ext import config
    from deconv_ext.execution import fft_choice
    def refuse(*a):
        raise AssertionError("measured an FFT choice by default")
    fft_choice._measure = refuse
    assert config.get().cpu_fft == "pipeline", config.get()
    for shape in [(3, 24, 20), (2, 31, 17)]:
        dx.deconvolve(torch.rand(shape), torch.rand(3, 3))
    print("ok")
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DECONV_EXT_CPU_FFT", "DECONV_EXT_FFT")}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
    assert not (tmp_path / "deconv_ext").exists()


def test_the_fft_choice_file_stays_bounded(tmp_path, monkeypatch):
    from deconv_ext import config
    from deconv_ext.execution import fft_choice

    folder = tmp_path / "deconv_ext"
    folder.mkdir()
    old = {f"old|{i}": "scipy" for i in range(fft_choice._MAX_ENTRIES + 40)}
    (folder / "fft_choice.json").write_text(json.dumps(old))
    monkeypatch.setattr(fft_choice, "_measure", lambda shape, dtype: "pipeline")
    monkeypatch.setattr(fft_choice, "_choices", {})
    monkeypatch.setattr(fft_choice, "_known", {})
    monkeypatch.setattr(fft_choice, "_loaded_from", None)
    with config.override(cache_dir=str(folder), cpu_fft="auto"):
        assert fft_choice.choose((1, 9, 11), torch.float64) == "pipeline"
    saved = json.loads((folder / "fft_choice.json").read_text())
    assert len(saved) == fft_choice._MAX_ENTRIES
    assert list(saved.values())[-1] == "pipeline"  # the newest entry is kept, the oldest go
    assert "old|0" not in saved and f"old|{len(old) - 1}" in saved


@pytest.mark.parametrize("call,match", [
    (lambda: dx.gaussian(1e308), r"sigma=1e\+308: the kernel would be wider than any image"),
    (lambda: dx.gaussian(20000), r"sigma=20000: the kernel would be 120001 pixels; expected at "
                                 r"most 8193"),
    (lambda: dx.gaussian(2, 1e400), r"size=inf is not valid; expected an int in \[1, 8193\]"),
    (lambda: dx.gaussian(float("nan")), "sigma=nan is not valid; expected a finite number > 0"),
    (lambda: dx.box(float("nan")), r"size=nan is not valid; expected an int"),
    (lambda: dx.box(float("inf")), r"size=inf is not valid"),
    (lambda: dx.box(10 ** 12), r"size=1000000000000 is not valid"),
    (lambda: dx.box((3,)), r"size=\(3,\) is not valid; expected an int or a pair"),
    (lambda: dx.motion(1e9, 0.0), r"length=1e\+09: the kernel would be wider than any image"),
    (lambda: dx.motion(1e5, 0.0), r"length=100000: the kernel would be 100003 pixels"),
    (lambda: dx.disk(1e6), r"radius=1e\+06: the kernel would be 2000001 pixels"),
])
def test_psf_constructors_refuse_absurd_parameters_at_once(call, match):
    # Issue 18: OverflowError, "cannot convert float NaN to integer", or a
    # kernel of 1.4e10 pixels (gaussian(20000)) being built.
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        call()
    assert time.perf_counter() - t0 < 5


def test_psf_constructor_parameters_must_be_numbers():
    with pytest.raises(TypeError, match="sigma='2' is not valid; expected a finite number > 0"):
        dx.gaussian("2")


def test_disk_memory_stays_that_of_the_kernel():
    # The 8x8 sub-pixel samples once lived all at once (64 kernels of float64).
    big = dx.disk(40.0, dtype=torch.float64)
    assert big.shape == (81, 81) and abs(float(big.sum()) - 1) < 1e-12
    inside = big[40, 40] * (81 * 81)
    assert float(big[40, 40]) == float(big.max()) and float(inside) > 1
    assert float(big[0, 0]) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_random_inputs_into_every_public_function_give_a_result_or_a_clear_error(seed):
    """tests/fuzz_public.py: dtypes, layouts, sizes (0, absurd), NaN/Inf/extreme values into
    deconvolve, convolve, DeconvPlan, conv2d_pinv, conv2d_svdvals and the PSF constructors;
    in a subprocess, so that a signal or a hang fails here."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fuzz_public.py"),
                           str(seed), "600"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-6000:], proc.stderr[-3000:])


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_cg_in_float32_is_scale_invariant(scale):
    # Found by tests/fuzz_public.py: a float32 CG with a 1e30 weight overflowed
    # its norms (||A^T y||^2) and returned NaN with residual NaN.
    gen = torch.Generator().manual_seed(15)
    w = torch.rand(2, 1, 3, 3, generator=gen)
    out = torch.rand(1, 2, 8, 7, generator=gen)
    want = dx.conv2d_pinv(out.double(), w.double(), groups=2, padding="valid", eps=1e-2)
    got, info = dx.conv2d_pinv(out, w * scale, groups=2, padding="valid", eps=1e-2 * scale ** 2,
                               return_info=True)
    assert bool(info.converged.all()) and torch.isfinite(info.residual).all()
    assert rel_err(got.double() * scale, want) <= 1e-4
    psf = torch.rand(3, 4, generator=gen)
    y = torch.rand(2, 11, 9, generator=gen)
    want = dx.deconvolve(y.double(), psf.double(), eps=1e-2, boundary="reflect", solver="cg",
                         tol=1e-10)
    got, info = dx.deconvolve(y * scale, psf * scale, eps=1e-2 * scale ** 2, boundary="reflect",
                              solver="cg", return_info=True)
    assert bool(info.converged.all())
    # CG's tol=1e-6 on the normal residual bounds the error by cond(N) tol ~ 4e-3 here.
    assert rel_err(got.double(), want) <= 2e-3
