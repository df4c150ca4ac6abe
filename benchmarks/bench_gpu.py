"""GPU validation and benchmark of the Triton path (run by benchmarks/gpu_check.sh).

Sections (rows of one table), each guarded so that one failure does not stop
the others, under a global time budget (``--budget`` seconds; sections that
would start after it are reported as skipped):

1. ``correct``: every op and public method on CUDA against the CPU (C++)
   path: odd sizes (3x1080x1920), transposed and sliced inputs, > 4-D
   batches, float64, laplacian and pinv, padded boundaries, backward. A
   failing row makes the exit status 1.
2. ``bandwidth``: fused solve GB/s as % of a device copy of the same bytes:
   aligned and odd half-spectrum widths, shared and per-channel spectra
   larger than L2.
3. ``e2e``: DeconvPlan / one-shot deconvolve / correct torch / seed formula
   vs the bare cuFFT rfft2 + irfft2 round trip (= 1.00) at 16x3x1024^2 and
   an odd size, with a torch.profiler kernel list (the pass count).
4. ``host``: host overhead per call at 256^2 (CPU time of queued calls).
5. ``graphs``: CUDA-graph capture of a plan call, torch.compile
   (mode="reduce-overhead"), a side stream.
6. ``boundary``: pad_backward and one CG iteration at 4096^2, 31x31 PSF.
7. ``multichannel``: a 3 -> 3 conv2d inverse at 1024^2.
8. ``memory``: peak memory of 16x3x8192^2 float32 forward and backward.

Timing: CUDA events, medians after warm-up, random data never zero, inputs
rotated over buffers so that L2 never serves a repeat. Results: JSON
(``bench_gpu.json``) and a markdown table (``bench_gpu.md``) under ``--out``
(default ``$OUT``, else benchmarks/out/).

``--device cpu --dry-run`` runs the code paths the CPU can run (tiny shapes,
the kernels in the Triton interpreter): a check of the script, not a
measurement. Written for torch >= 2.4 and triton >= 3.0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import deconv_ext as dx  # noqa: E402

ops = torch.ops.deconv_ext


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


class Timer:
    """Median time of ``fn(buffer)`` over rotating buffers, CUDA events on a GPU."""

    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, fn: Callable[[torch.Tensor], object], bufs: Sequence[torch.Tensor]) -> float:
        n = len(bufs)
        for i in range(self.warmup):
            fn(bufs[i % n])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.reps)]
            for i, (a, b) in enumerate(events):
                a.record()
                fn(bufs[i % n])
                b.record()
            torch.cuda.synchronize()
            return statistics.median(a.elapsed_time(b) * 1e-3 for a, b in events)
        times = []
        for i in range(self.reps):
            t0 = time.perf_counter()
            fn(bufs[i % n])
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def n_buffers(nbytes: int, l2_bytes: int = 64 << 20) -> int:
    """Enough input buffers that consecutive calls never find theirs in L2."""
    return max(2, min(6, math.ceil(2 * l2_bytes / max(nbytes, 1)) + 1))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rand_image(shape, device, gen, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, device=device, dtype=torch.float32) + 0.1).to(dtype)


def rand_spectrum(shape, dtype, device, gen) -> torch.Tensor:
    re = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    im = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    return (torch.complex(re, im) + 0.01).to(dtype)  # never zero


def gaussian_psf(size: int, sigma: float, device, dtype=torch.float32) -> torch.Tensor:
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


# ---------------------------------------------------------------------------
# The methods compared end to end
# ---------------------------------------------------------------------------


def seed_formula(image: torch.Tensor, psf: torch.Tensor, eps: float) -> torch.Tensor:
    """The seed article's version: full complex FFTs, kernel spectrum per call,
    no origin correction, ``K / (|K| + eps)^2``."""
    image_fft = torch.fft.fft2(image)
    kernel_fft = torch.fft.fft2(psf, s=(image.shape[-2], image.shape[-1]))
    mag = torch.abs(kernel_fft) + eps
    return torch.fft.ifft2(image_fft * (kernel_fft / mag ** 2)).real


def correct_torch(image: torch.Tensor, psf: torch.Tensor, eps: float) -> torch.Tensor:
    """Correct pure torch, filter per call: half spectrum, PSF origin rolled to
    (0, 0), ``conj(K) Y / (|K|^2 + eps)``."""
    H, W = image.shape[-2:]
    kh, kw = psf.shape[-2:]
    k = torch.roll(F.pad(psf, (0, W - kw, 0, H - kh)), (-(kh // 2), -(kw // 2)), dims=(-2, -1))
    K = torch.fft.rfft2(k)
    X = torch.conj(K) * torch.fft.rfft2(image) / (K.real ** 2 + K.imag ** 2 + eps)
    return torch.fft.irfft2(X, s=(H, W))


# ---------------------------------------------------------------------------
# The run: rows, budget, guarded sections
# ---------------------------------------------------------------------------


class Run:
    def __init__(self, device: torch.device, dry: bool, budget: float, timer: Timer):
        self.device, self.dry, self.timer = device, dry, timer
        self.t0 = time.time()
        self.deadline = self.t0 + budget
        self.rows: List[dict] = []
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.cpu_gen = torch.Generator().manual_seed(0)

    def left(self) -> float:
        return self.deadline - time.time()

    def add(self, section: str, case: str, **kw) -> None:
        row = dict(section=section, case=case, **kw)
        self.rows.append(row)
        print(f"[bench_gpu] {section:12} {case[:70]:70} "
              + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in kw.items()), flush=True)

    def guarded(self, section: str, case: str, fn: Callable[[], None]) -> None:
        """Run one case; an exception becomes an error row, not a stop."""
        if self.left() <= 0:
            self.add(section, case, skipped="time budget spent")
            return
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (reported, the others still run)
            traceback.print_exc()
            self.add(section, case, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def compare(self, case: str, got: torch.Tensor, expect: torch.Tensor, tol: float) -> None:
        """A correctness row: max |got - expect| / max |expect| <= tol."""
        got = got.detach().to("cpu", torch.float64) if not got.is_complex() else got.detach().cpu()
        expect = expect.detach().to("cpu", torch.float64) if not expect.is_complex() else expect.cpu()
        if got.shape != expect.shape:
            self.add("correct", case, ok=False, error=f"shape {tuple(got.shape)} != {tuple(expect.shape)}")
            return
        scale = max(float(expect.abs().max()) if expect.numel() else 0.0, 1e-30)
        err = float((got - expect).abs().max()) / scale if got.numel() else 0.0
        ok = bool(err <= tol) and bool(torch.isfinite(got).all())
        self.add("correct", case, rel_err=err, tol=tol, ok=ok)


# ---------------------------------------------------------------------------
# 1. Correctness against the CPU path
# ---------------------------------------------------------------------------


def section_correct(run: Run, sizes: dict) -> None:
    dev, g = run.device, run.cpu_gen
    H, W = sizes["odd"]
    cpu = torch.device("cpu")

    def both(fn, *tensors):
        """fn on the device tensors and on their CPU copies (the C++ path).

        fn gets the per-op namespace first: the ops (their CUDA kernels are
        the Triton launchers), or in a CPU dry run the launchers themselves,
        with DECONV_EXT_KERNELS=triton for the public API (the interpreter).
        """
        moved = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in tensors]
        if not run.dry:
            return fn(ops, *moved), fn(ops, *tensors)
        from deconv_ext import triton_kernels as tk

        from deconv_ext import config

        with config.override(kernels="triton"):
            got = fn(tk, *moved)
        return got, fn(ops, *tensors)

    def ops_case():
        for cdt, tol in ((torch.complex64, 1e-4), (torch.complex128, 1e-10)):
            rdt = torch.float32 if cdt == torch.complex64 else torch.float64
            Wf = W // 2 + 1
            y = torch.randn(2, 3, H, Wf, generator=g, dtype=cdt)
            k = torch.randn(3, H, Wf, generator=g, dtype=cdt)
            reg = torch.rand(H, Wf, generator=g, dtype=rdt)
            th = torch.full((2, 1, 1, 1), 0.05, dtype=rdt)
            name = str(cdt).split(".")[-1]
            for r, e, m in ((None, 1e-2, "tikhonov"), (reg, 1e-2, "tikhonov+reg"), (None, 0.0, "pinv")):
                a, b = both(lambda o, *t: o.spectral_solve(*t), y, k, r, e, th)
                run.compare(f"spectral_solve {m} {name} {tuple(y.shape)}", a, b, tol)
            yt = y.transpose(-1, -2)[..., 1:]  # transposed and sliced
            a, b = both(lambda o, yy, kk: o.spectral_mul(yy, kk, True), yt, k.transpose(-1, -2)[..., 1:])
            run.compare(f"spectral_mul conj, transposed+sliced {name}", a, b, tol)
            gr = torch.randn(y.shape, generator=g, dtype=cdt)
            for i, (a, b) in enumerate(zip(*both(lambda o, *t: o.spectral_solve_backward(*t),
                                                 gr, y, k, reg, 1e-2, th))):
                run.compare(f"spectral_solve_backward d{'k' if i == 0 else 'reg'} {name}", a, b,
                            tol * 10)
            a, b = both(lambda o, *t: o.spectral_mul_grad_k(*t), gr, y, [3, H, Wf], False)
            run.compare(f"spectral_mul_grad_k {name}", a, b, tol * 10)
        x = torch.randn(3, W, H, generator=g).transpose(-1, -2)  # transposed
        for mode in ("reflect", "symmetric", "replicate", "circular", "zeros"):
            a, b = both(lambda o, xx: o.pad(xx, 15, 17, H + 30, W + 34, mode), x)
            run.compare(f"pad {mode} {tuple(x.shape)} transposed", a, b, 0.0)
            gg = torch.randn(3, H + 30, W + 34, generator=g)
            a, b = both(lambda o, t: o.pad_backward(t, 15, 17, H, W, mode), gg)
            run.compare(f"pad_backward {mode}", a, b, 1e-6)
        a, b = both(lambda o, xx: o.crop(xx, 3, 5, H - 9, W - 11, torch.bfloat16), x)
        run.compare("crop -> bfloat16", a, b, 0.0)

    def public_case():
        img = torch.rand(3, H, W, generator=g) + 0.1
        psf = gaussian_psf(9, 2.0, cpu)
        for kw, tol in ((dict(eps=1e-2), 1e-4), (dict(eps=1e-3, reg="laplacian"), 1e-4),
                        (dict(method="pinv"), 1e-3), (dict(eps=1e-2, boundary="reflect"), 1e-4),
                        (dict(eps=1e-2, boundary="replicate"), 1e-4)):
            a, b = both(lambda o, i, p: dx.deconvolve(i, p, **kw), img, psf)
            run.compare(f"deconvolve {kw} 3x{H}x{W}", a, b, tol)
        x64 = torch.rand(2, 2, 2, 2, 40, 36, generator=g, dtype=torch.float64) + 0.1  # 6-D, float64
        p64 = torch.rand(2, 1, 2, 5, 5, generator=g, dtype=torch.float64) + 0.1
        a, b = both(lambda o, i, p: dx.deconvolve(i, p, eps=1e-3), x64, p64)
        run.compare("deconvolve 6-D float64, per-channel psf", a, b, 1e-10)
        sl = (torch.rand(2, 3, W + 8, H + 4, generator=g) + 0.1).transpose(-1, -2)[..., 2:H + 2, 3:W + 3]
        a, b = both(lambda o, i, p: dx.deconvolve(i, p, eps=1e-2), sl, psf)
        run.compare("deconvolve sliced+transposed input", a, b, 1e-4)
        plan_c = dx.DeconvPlan(psf.to(dev), (H, W), eps=1e-2, reg="laplacian")
        plan = dx.DeconvPlan(psf, (H, W), eps=1e-2, reg="laplacian")
        run.compare("DeconvPlan laplacian", plan_c(img.to(dev)), plan(img), 1e-4)
        run.compare("DeconvPlan.blur", plan_c.blur(img.to(dev)), plan.blur(img), 1e-5)
        run.compare("DeconvPlan.adjoint", plan_c.adjoint(img.to(dev)), plan.adjoint(img), 1e-5)

    def backward_case():
        img = torch.rand(2, 3, 64, 48, generator=g, dtype=torch.float64) + 0.1
        psf = torch.rand(3, 5, 5, generator=g, dtype=torch.float64) + 0.1
        grads = []
        for d in (dev, cpu):
            x = img.to(d).requires_grad_()
            p = psf.to(d).requires_grad_()
            for bnd in ("circular", "reflect"):
                dx.deconvolve(x, p, eps=1e-2, boundary=bnd).square().sum().backward()
            grads.append((x.grad, p.grad))
        run.compare("backward d/dimage (circular+reflect) float64", grads[0][0], grads[1][0], 1e-9)
        run.compare("backward d/dpsf (circular+reflect) float64", grads[0][1], grads[1][1], 1e-9)

    def multichannel_case():
        w = torch.randn(3, 3, 5, 5, generator=g)
        out = torch.randn(2, 3, 48, 40, generator=g)
        a, b = both(lambda _, o, ww: dx.conv2d_pinv(o, ww, eps=1e-3), out, w)
        run.compare("conv2d_pinv 3->3", a, b, 1e-3)
        pc = dx.DeconvPlan.for_conv2d(w.to(dev), (48, 40), eps=1e-3)
        p = dx.DeconvPlan.for_conv2d(w, (48, 40), eps=1e-3)
        run.compare("DeconvPlan.for_conv2d 3->3", pc(out.to(dev)), p(out), 1e-3)

    for case, fn in (("ops", ops_case), ("public API", public_case), ("backward", backward_case),
                     ("multi-channel", multichannel_case)):
        run.guarded("correct", case, fn)


# ---------------------------------------------------------------------------
# 2. Bandwidth of the fused solve
# ---------------------------------------------------------------------------


def section_bandwidth(run: Run, shapes) -> None:
    dev, timer = run.device, run.timer
    for label, yshape, kshape in shapes:
        def case(yshape=yshape, kshape=kshape, label=label):
            bufs = [rand_spectrum(yshape, torch.complex64, dev, run.gen)
                    for _ in range(n_buffers(math.prod(yshape) * 8))]
            k = rand_spectrum(kshape, torch.complex64, dev, run.gen)
            th = torch.full((1, 1), 1e-6, device=dev)
            out = torch.empty_like(bufs[0])
            nbytes = 2 * bufs[0].numel() * 8 + k.numel() * 8  # y in, X out, k once
            t_copy = timer(lambda y: out.copy_(y), bufs)
            run.add("bandwidth", f"copy {label} {yshape}", time_ms=t_copy * 1e3,
                    gbps=2 * bufs[0].numel() * 8 / t_copy / 1e9, pct_copy=100.0)
            for name, fn in (("fused solve", lambda y: ops.spectral_solve(y, k, None, 1e-2, th)),
                             ("fused solve in place", lambda y: ops.spectral_solve_(y, k, None, 1e-2, th)),
                             ("torch eager solve", lambda y: torch.conj(k) * y / (k.abs() ** 2 + 1e-2))):
                t = timer(fn, bufs)
                run.add("bandwidth", f"{name} {label} {yshape} k{kshape}", time_ms=t * 1e3,
                        gbps=nbytes / t / 1e9, pct_copy=100 * t_copy / t)
        run.guarded("bandwidth", label, case)


# ---------------------------------------------------------------------------
# 3. End to end vs the cuFFT round trip, with the kernel list
# ---------------------------------------------------------------------------


def kernel_list(device, fn, x) -> str:
    """Names of the device kernels one call launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    fn(x)
    sync(device)
    with profile(activities=acts) as prof:
        fn(x)
        sync(device)
    names = []
    for e in prof.events():
        is_dev = (getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                  if device.type == "cuda" else e.name.startswith(("deconv_ext::", "aten::_fft")))
        if is_dev:
            names.append(e.name.split("<")[0][:40])
    return f"{len(names)} kernels: " + ", ".join(names[:8])


def section_e2e(run: Run, shapes) -> None:
    dev, timer, eps = run.device, run.timer, 1e-2
    for shape in shapes:
        def case(shape=shape):
            H, W = shape[-2:]
            bufs = [rand_image(shape, dev, run.gen) for _ in range(n_buffers(math.prod(shape) * 4))]
            psf = gaussian_psf(5, 1.2, dev)
            plan = dx.DeconvPlan(psf, (H, W), eps=eps)
            run.compare(f"e2e plan vs correct torch {shape}", plan(bufs[0]),
                        correct_torch(bufs[0], psf, eps), 1e-4)
            cases = {"cuFFT rfft2+irfft2": lambda x: torch.fft.irfft2(torch.fft.rfft2(x), s=(H, W)),
                     "DeconvPlan (reused)": plan,
                     "deconvolve (one-shot)": lambda x: dx.deconvolve(x, psf, eps=eps),
                     "correct torch, filter per call": lambda x: correct_torch(x, psf, eps),
                     "seed formula": lambda x: seed_formula(x, psf, eps)}
            base = None
            for name, fn in cases.items():
                t = timer(fn, bufs)
                base = base or t
                note = kernel_list(dev, fn, bufs[0]) if name in ("cuFFT rfft2+irfft2",
                                                                  "DeconvPlan (reused)") else ""
                run.add("e2e", f"{name} {shape}", time_ms=t * 1e3, ratio=t / base, note=note)
        run.guarded("e2e", str(shape), case)


# ---------------------------------------------------------------------------
# 4-5. Host overhead, CUDA graphs, torch.compile, a side stream
# ---------------------------------------------------------------------------


def section_host(run: Run, shape) -> None:
    def case():
        dev = run.device
        x = rand_image(shape, dev, run.gen)
        plan = dx.DeconvPlan(gaussian_psf(5, 1.2, dev), shape[-2:], eps=1e-2)
        for _ in range(5):
            plan(x)
        sync(dev)
        n = 20 if run.dry else 200
        t0 = time.perf_counter()
        for _ in range(n):
            plan(x)
        t_host = (time.perf_counter() - t0) / n  # calls queue: the CPU time per call
        sync(dev)
        t_all = (time.perf_counter() - t0) / n
        run.add("host", f"DeconvPlan call {tuple(shape)}", host_us=t_host * 1e6, wall_us=t_all * 1e6)
        t0 = time.perf_counter()
        for _ in range(n):
            dx.deconvolve(x, gaussian_psf(5, 1.2, dev), eps=1e-2)
        run.add("host", f"deconvolve one-shot {tuple(shape)}",
                host_us=(time.perf_counter() - t0) / n * 1e6)
        sync(dev)
    run.guarded("host", "overhead", case)


def section_graphs(run: Run, shape) -> None:
    dev = run.device
    H, W = shape[-2:]

    def setup():
        plan = dx.DeconvPlan(gaussian_psf(5, 1.2, dev), (H, W), eps=1e-2)
        return plan, [rand_image(shape, dev, run.gen) for _ in range(3)]

    def graph_case():
        plan, bufs = setup()
        static = bufs[0].clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                plan(static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.cuda.graph(g):
                out = plan(static)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        static.copy_(bufs[1])
        g.replay()
        run.compare(f"CUDA graph replay {shape}", out, plan(bufs[1]), 1e-6)
        t_eager = run.timer(lambda x: plan(x), bufs)
        t_graph = run.timer(lambda x: (static.copy_(x), g.replay()), bufs)
        run.add("graphs", f"CUDA graph (copy in + replay) {shape}", time_ms=t_graph * 1e3,
                ratio=t_graph / t_eager)

    def compile_case():
        plan, bufs = setup()
        kwargs = dict(backend="eager") if run.dry else dict(mode="reduce-overhead")
        compiled = torch.compile(lambda x: plan(x), **kwargs)
        static = bufs[0].clone()

        def call(x):
            static.copy_(x)
            return compiled(static)

        for _ in range(3):
            call(bufs[0])
        run.compare(f"torch.compile({'eager' if run.dry else 'reduce-overhead'}) {shape}",
                    call(bufs[1]).clone(), plan(bufs[1]), 1e-6)
        t_eager = run.timer(lambda x: plan(x), bufs)
        t = run.timer(call, bufs)
        run.add("graphs", f"torch.compile {kwargs} {shape}", time_ms=t * 1e3, ratio=t / t_eager)

    def stream_case():
        plan, bufs = setup()
        expect = plan(bufs[0])
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            got = plan(bufs[0])
        torch.cuda.current_stream().wait_stream(s)
        run.compare(f"side stream {shape}", got, expect, 0.0)

    if dev.type == "cuda":
        run.guarded("graphs", "CUDA graph", graph_case)
        run.guarded("graphs", "side stream", stream_case)
    run.guarded("graphs", "torch.compile", compile_case)


# ---------------------------------------------------------------------------
# 6-8. Boundary work, multi-channel, peak memory
# ---------------------------------------------------------------------------


def section_boundary(run: Run, size: int, psf_size: int) -> None:
    dev = run.device

    def case():
        pad = psf_size // 2
        bufs = [torch.randn(size + 2 * pad + 40, size + 2 * pad + 40, generator=run.gen, device=dev)
                for _ in range(2)]
        for mode in ("replicate", "reflect"):
            t = run.timer(lambda g: ops.pad_backward(g, pad, pad, size, size, mode), bufs)
            run.add("boundary", f"pad_backward {mode} {size}^2 (pad {pad}+{pad + 40})",
                    time_ms=t * 1e3, gbps=(bufs[0].numel() + size * size) * 4 / t / 1e9)
        img = [rand_image((size, size), dev, run.gen) for _ in range(2)]
        psf = gaussian_psf(psf_size, psf_size / 6, dev)
        t = run.timer(lambda x: dx.deconvolve(x, psf, eps=1e-2, boundary="reflect", solver="cg",
                                              max_iter=1), img)
        run.add("boundary", f"deconvolve reflect cg max_iter=1 {size}^2 psf {psf_size}",
                time_ms=t * 1e3)
    run.guarded("boundary", f"{size}^2", case)


def section_multichannel(run: Run, size: int) -> None:
    dev = run.device

    def case():
        w = torch.randn(3, 3, 5, 5, generator=run.gen, device=dev) * 0.2
        w[torch.arange(3), torch.arange(3), 2, 2] += 1.0
        bufs = [torch.randn(4, 3, size, size, generator=run.gen, device=dev) for _ in range(2)]
        plan = dx.DeconvPlan.for_conv2d(w, (size, size), eps=1e-3)
        t_plan = run.timer(plan, bufs)
        t_one = run.timer(lambda o: dx.conv2d_pinv(o, w, eps=1e-3), bufs)
        run.add("multichan", f"for_conv2d plan 3->3 4x3x{size}^2", time_ms=t_plan * 1e3, ratio=1.0)
        run.add("multichan", f"conv2d_pinv one-shot 3->3 4x3x{size}^2", time_ms=t_one * 1e3,
                ratio=t_one / t_plan)
    run.guarded("multichan", f"{size}^2", case)


def section_memory(run: Run, shape) -> None:
    dev = run.device
    if dev.type != "cuda":
        return

    def case():
        need = math.prod(shape) * 4
        free, _ = torch.cuda.mem_get_info()
        if free < 8 * need:
            run.add("memory", f"{shape}", skipped=f"needs ~{8 * need / 2**30:.0f} GiB free")
            return
        psf = gaussian_psf(5, 1.2, dev)
        x = rand_image(shape, dev, run.gen)
        plan = dx.DeconvPlan(psf, shape[-2:], eps=1e-2)
        for name, fn in (("forward", lambda: plan(x)),
                         ("forward+backward", lambda: plan(x.requires_grad_()).sum().backward())):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            run.add("memory", f"DeconvPlan {name} {shape}", time_ms=(time.perf_counter() - t0) * 1e3,
                    peak_x_input=peak / need, peak_gib=peak / 2**30)
            x.grad = None
    run.guarded("memory", str(shape), case)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

COLUMNS = ("time_ms", "gbps", "pct_copy", "ratio", "rel_err", "host_us", "peak_x_input")


def format_table(rows: List[dict]) -> str:
    head = "| section | case | " + " | ".join(COLUMNS) + " | status / note |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        cells = [format(r[c], ".3g") if isinstance(r.get(c), float) else "" for c in COLUMNS]
        if "error" in r:
            status = f"ERROR {r['error'][:100]}"
        elif "skipped" in r:
            status = f"skipped: {r['skipped']}"
        elif "ok" in r:
            status = "ok" if r["ok"] else f"FAIL (tol {r['tol']:.0e})"
        else:
            status = r.get("note", "")
        lines.append(f"| {r['section']} | {r['case'][:80]} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines)


def failed(rows: List[dict]) -> List[dict]:
    """Rows that make the check fail: a correctness mismatch or an error
    (torch.compile errors are reported but do not fail the check)."""
    return [r for r in rows if r.get("ok") is False
            or ("error" in r and not r["case"].startswith("torch.compile"))]


def environment(device) -> dict:
    env = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
               python=platform.python_version(), torch=torch.__version__, device=str(device))
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = "missing"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        env.update(card=platform.processor() or platform.machine())
    return env


SECTIONS = ("correct", "bandwidth", "e2e", "host", "graphs", "boundary", "multichannel", "memory")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes, few repetitions: exercise the code paths")
    ap.add_argument("--out", default=os.environ.get("OUT") or None,
                    help="directory for bench_gpu.md / bench_gpu.json (default: $OUT, "
                         "else benchmarks/out/)")
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds; sections that would start later are skipped")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--only", nargs="*", choices=SECTIONS, default=None,
                    help="run only these sections")
    args = ap.parse_args(argv)
    if args.device == "cpu" and not args.dry_run:
        ap.error("the CPU mode is a dry run of the script only; pass --dry-run")
    if args.budget <= 0:
        ap.error(f"--budget must be > 0, got {args.budget}")
    return args


def sizes_for(dry: bool) -> dict:
    if dry:
        return dict(odd=(18, 20), bandwidth=[("aligned", (2, 8, 5), (8, 5)),
                                             ("per-channel", (2, 3, 6, 7), (3, 6, 7))],
                    e2e=[(2, 3, 16, 16), (1, 3, 18, 20)], host=(1, 1, 16, 16),
                    graphs=(2, 1, 16, 16), boundary=(24, 7), multichannel=16, memory=(2, 1, 16, 16))
    return dict(odd=(1080, 1920),
                bandwidth=[("aligned", (64, 1024, 513), (1024, 513)),
                           ("odd width", (48, 1080, 961), (1080, 961)),
                           ("per-channel > L2", (16, 3, 2048, 1025), (3, 2048, 1025))],
                e2e=[(16, 3, 1024, 1024), (1, 3, 1080, 1920)], host=(1, 1, 256, 256),
                graphs=(16, 3, 1024, 1024), boundary=(4096, 31), multichannel=1024,
                memory=(16, 3, 8192, 8192))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --device cpu --dry-run to check the script)",
              file=sys.stderr)
        return 2
    timer = Timer(device, warmup=1 if args.dry_run else 3, reps=args.reps or (2 if args.dry_run else 20))
    run = Run(device, args.dry_run, args.budget, timer)
    sz = sizes_for(args.dry_run)
    plan = {"correct": lambda: section_correct(run, sz),
            "bandwidth": lambda: section_bandwidth(run, sz["bandwidth"]),
            "e2e": lambda: section_e2e(run, sz["e2e"]),
            "host": lambda: section_host(run, sz["host"]),
            "graphs": lambda: section_graphs(run, sz["graphs"]),
            "boundary": lambda: section_boundary(run, *sz["boundary"]),
            "multichannel": lambda: section_multichannel(run, sz["multichannel"]),
            "memory": lambda: section_memory(run, sz["memory"])}
    for name in args.only or SECTIONS:
        print(f"[bench_gpu] == {name} ({time.time() - run.t0:.0f} s, {run.left():.0f} s left)", flush=True)
        run.guarded(name, "(section)", plan[name])
    env = environment(device)
    table = format_table(run.rows)
    bad = failed(run.rows)
    header = (f"bench_gpu {env['date']}  {env.get('card')}  torch {env['torch']}  "
              f"triton {env['triton']}  {time.time() - run.t0:.0f} s"
              f"{'  (DRY RUN: not a measurement)' if args.dry_run else ''}")
    out = args.out or os.path.join(ROOT, "benchmarks", "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_gpu.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    with open(os.path.join(out, "bench_gpu.json"), "w") as f:
        json.dump(dict(environment=env, dry_run=args.dry_run, rows=run.rows,
                       failed=len(bad)), f, indent=1)
    print(header)
    print(table)
    print(f"[bench_gpu] {len(bad)} failing row(s); results in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
