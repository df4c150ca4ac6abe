"""The Python side of every ``torch.ops.deconv_ext`` op.

The schemas and CPU kernels are defined once, in C++ (``csrc/ops.cpp``), and
come into existence when ``deconv_ext._C`` is imported. This module adds, for
the same op names:

* the fake (meta) kernels, which check what the real kernels check, so shape
  and dtype errors surface the same way under ``torch.compile``;
* autograd: each op's backward is its exact adjoint (another op call, so the
  backward graph stays free of complex arithmetic that Inductor cannot
  generate);
* the CUDA kernels (Triton launchers), when Triton and a CUDA device exist.

There is deliberately no default/composite kernel: a device without a kernel
is a clear error from the dispatcher.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch

__all__ = ["available", "require", "load_error", "ops"]

_LOAD_ERROR: Optional[BaseException] = None
try:  # importing the extension registers the op schemas and CPU kernels
    from .build_check import check_build
    check_build()  # built for another torch: a clear ImportError instead of a bad load
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _LOAD_ERROR = exc

BUILD_HINT = (
    "the C++ extension deconv_ext._C is not built. Build it with "
    "`pip install --no-build-isolation -e .` in the repository (or `make build`), "
    "or set DECONV_EXT_BACKEND=torch to use the pure-torch reference path."
)


def available() -> bool:
    """Whether the compiled ops exist."""
    return _LOAD_ERROR is None


def load_error() -> Optional[BaseException]:
    return _LOAD_ERROR


def require() -> None:
    """Raise a RuntimeError that says how to build, if the ops do not exist."""
    if _LOAD_ERROR is not None:
        raise RuntimeError(f"{BUILD_HINT} (import error: {_LOAD_ERROR})")


ops = torch.ops.deconv_ext

# ---------------------------------------------------------------------------
# Fake kernels: the same checks as the real kernels, then the output's shape.
# ---------------------------------------------------------------------------


def _check_spectrum(t: torch.Tensor, name: str) -> None:
    torch._check(t.dtype in (torch.complex64, torch.complex128),
                 lambda: f"{name} must be complex64 or complex128, got {t.dtype}")


def _check_broadcasts(t: torch.Tensor, y: torch.Tensor, name: str) -> None:
    torch._check(t.dim() <= y.dim(), lambda: f"{name} has more dims ({t.dim()}) than y ({y.dim()})")
    for i in range(1, t.dim() + 1):
        a, b = t.shape[-i], y.shape[-i]
        torch._check(a == 1 or a == b,
                     lambda: f"{name} of shape {tuple(t.shape)} does not broadcast to y of shape "
                             f"{tuple(y.shape)}")


def _real_of(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.complex64 else torch.float64


def _compute(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


_MODES = ("zeros", "constant", "reflect", "symmetric", "replicate", "circular")


if available():

    @torch.library.register_fake("deconv_ext::spectral_solve")
    def _spectral_solve_fake(y, k, reg, eps, thresh):
        _check_spectrum(y, "y")
        _check_spectrum(k, "k")
        torch._check(k.dtype == y.dtype, lambda: f"k dtype {k.dtype} differs from y dtype {y.dtype}")
        _check_broadcasts(k, y, "k")
        _check_broadcasts(thresh, y, "thresh")
        torch._check(thresh.dtype == _real_of(y.dtype), lambda: f"thresh must be {_real_of(y.dtype)}")
        if reg is not None:
            _check_broadcasts(reg, y, "reg")
            torch._check(reg.dtype == _real_of(y.dtype), lambda: f"reg must be {_real_of(y.dtype)}")
        torch._check(eps >= 0, lambda: f"eps must be >= 0, got {eps}")
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deconv_ext::spectral_solve_adjoint")
    def _spectral_solve_adjoint_fake(y, k, reg, eps, thresh):
        return _spectral_solve_fake(y, k, reg, eps, thresh)

    def _solve_adjoint_setup(ctx, inputs, output):
        _solve_setup(ctx, inputs, output)

    def _solve_adjoint_backward(ctx, grad):
        # The adjoint's adjoint w.r.t. y is the solve itself (second order
        # w.r.t. the image; gradients w.r.t. k of the adjoint are not needed).
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise NotImplementedError(
                "second-order gradients w.r.t. the kernel or the regulariser are not "
                "supported; second-order gradients w.r.t. the image are")
        y, k, reg, thresh = ctx.saved_tensors
        return ops.spectral_solve(grad, k, reg, ctx.eps, thresh), None, None, None, None

    @torch.library.register_fake("deconv_ext::spectral_solve_")
    def _spectral_solve_inplace_fake(y, k, reg, eps, thresh):
        _spectral_solve_fake(y, k, reg, eps, thresh)

    @torch.library.register_fake("deconv_ext::spectral_mul")
    def _spectral_mul_fake(y, k, conj):
        _check_spectrum(y, "y")
        _check_spectrum(k, "k")
        torch._check(k.dtype == y.dtype, lambda: f"k dtype {k.dtype} differs from y dtype {y.dtype}")
        _check_broadcasts(k, y, "k")
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deconv_ext::spectral_solve_backward")
    def _spectral_solve_backward_fake(grad, y, k, reg, eps, thresh):
        _check_spectrum(grad, "grad")
        _check_broadcasts(k, y, "k")
        gk = k.new_empty(k.shape)
        greg = reg.new_empty(reg.shape) if reg is not None else y.new_empty((), dtype=_real_of(y.dtype))
        return gk, greg

    @torch.library.register_fake("deconv_ext::spectral_mul_grad_k")
    def _spectral_mul_grad_k_fake(grad, y, k_shape, conj):
        _check_spectrum(grad, "grad")
        return y.new_empty(k_shape)

    def _pad_like(x, height, width, dtype):
        torch._check(x.dim() >= 2, lambda: f"x must have at least 2 dims, got {x.dim()}")
        return x.new_empty((*x.shape[:-2], height, width), dtype=dtype)

    @torch.library.register_fake("deconv_ext::pad")
    def _pad_fake(x, top, left, height, width, mode):
        torch._check(mode in _MODES, lambda: f"mode must be one of {_MODES}, got {mode!r}")
        torch._check(x.dtype.is_floating_point, lambda: f"x must be floating, got {x.dtype}")
        return _pad_like(x, height, width, _compute(x.dtype))

    @torch.library.register_fake("deconv_ext::pad_backward")
    def _pad_backward_fake(grad, top, left, height, width, mode):
        torch._check(mode in _MODES, lambda: f"mode must be one of {_MODES}, got {mode!r}")
        return _pad_like(grad, height, width, _compute(grad.dtype))

    @torch.library.register_fake("deconv_ext::crop")
    def _crop_fake(x, top, left, height, width, dtype):
        torch._check(top >= 0 and left >= 0 and top + height <= x.shape[-2]
                     and left + width <= x.shape[-1],
                     lambda: f"crop window ({top}, {left}, {height}, {width}) does not fit in "
                             f"{tuple(x.shape[-2:])}")
        return _pad_like(x, height, width, dtype)

    # -----------------------------------------------------------------------
    # Autograd: every backward is the exact adjoint, expressed with the ops.
    # -----------------------------------------------------------------------

    def _solve_setup(ctx, inputs, output):
        y, k, reg, eps, thresh = inputs
        ctx.save_for_backward(y, k, reg, thresh)
        ctx.eps = eps

    def _solve_backward(ctx, grad):
        y, k, reg, thresh = ctx.saved_tensors
        eps = ctx.eps
        gy = gk = greg = None
        if ctx.needs_input_grad[0]:
            # X = F Y with F = conj(K)/d: the adjoint multiplies by conj(F) = K/d,
            # i.e. the same solve with the conjugated kernel (same |K|, same mask).
            gy = ops.spectral_solve_adjoint(grad, k, reg, eps, thresh)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gk, gr = ops.spectral_solve_backward(grad, y, k, reg, eps, thresh)
            if reg is not None and ctx.needs_input_grad[2]:
                greg = gr
        return gy, gk, greg, None, None

    torch.library.register_autograd("deconv_ext::spectral_solve", _solve_backward,
                                    setup_context=_solve_setup)
    torch.library.register_autograd("deconv_ext::spectral_solve_adjoint", _solve_adjoint_backward,
                                    setup_context=_solve_adjoint_setup)

    def _register_filter_autograd(name: str, grad_k_name: str) -> None:
        """Autograd of a K- or conj(K)-multiply op ``name(x, k, conj)``.

        Its adjoint w.r.t. x is the same op with ``conj`` flipped; its gradient
        w.r.t. k is the op ``grad_k_name(grad, x, k_shape, conj)``.
        """
        op, grad_k_op = getattr(ops, name), getattr(ops, grad_k_name)

        def setup(ctx, inputs, output):
            x, k, conj = inputs
            ctx.save_for_backward(x, k)
            ctx.conj = conj

        def backward(ctx, grad):
            x, k = ctx.saved_tensors
            gx = gk = None
            if ctx.needs_input_grad[0]:
                gx = op(grad, k, not ctx.conj)
            if ctx.needs_input_grad[1]:
                gk = grad_k_op(grad, x, list(k.shape), ctx.conj)
            return gx, gk, None

        torch.library.register_autograd(f"deconv_ext::{name}", backward, setup_context=setup)

    _register_filter_autograd("spectral_mul", "spectral_mul_grad_k")

    def _pad_setup(ctx, inputs, output):
        x, top, left, height, width, mode = inputs
        ctx.args = (top, left, x.shape[-2], x.shape[-1], mode)
        ctx.in_dtype = x.dtype

    def _pad_backward(ctx, grad):
        g = ops.pad_backward(grad, *ctx.args)
        return g.to(ctx.in_dtype), None, None, None, None, None

    torch.library.register_autograd("deconv_ext::pad", _pad_backward, setup_context=_pad_setup)

    def _pad_bw_setup(ctx, inputs, output):
        grad, top, left, height, width, mode = inputs
        ctx.args = (top, left, grad.shape[-2], grad.shape[-1], mode)
        ctx.in_dtype = grad.dtype

    def _pad_bw_backward(ctx, gg):
        # pad_backward is linear; its adjoint is pad itself.
        return ops.pad(gg, *ctx.args).to(ctx.in_dtype), None, None, None, None, None

    torch.library.register_autograd("deconv_ext::pad_backward", _pad_bw_backward,
                                    setup_context=_pad_bw_setup)

    def _crop_setup(ctx, inputs, output):
        x, top, left, height, width, dtype = inputs
        ctx.args = (top, left, x.shape[-2], x.shape[-1])
        ctx.in_dtype = x.dtype

    def _crop_backward(ctx, grad):
        top, left, h, w = ctx.args
        # Adjoint of a crop: put the gradient back in its window, zeros around.
        g = ops.pad(grad, top, left, h, w, "zeros")
        return g.to(ctx.in_dtype), None, None, None, None, None

    torch.library.register_autograd("deconv_ext::crop", _crop_backward, setup_context=_crop_setup)

    # -----------------------------------------------------------------------
    # CUDA kernels: Triton launchers registered for the same op names.
    # -----------------------------------------------------------------------
    def _register_cuda_kernels() -> None:
        """Register the Triton launchers (same names as the ops) as CUDA kernels.

        Each registered kernel imports its launcher on first call: importing
        deconv_ext then neither imports Triton nor, on a CPU-only machine,
        switches Triton to its interpreter (deconv_ext.triton_kernels does
        that when its kernels are defined). Registering a CUDA kernel on a
        CPU-only build is harmless: no CUDA tensor can reach it.
        """
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return  # Triton missing: CUDA tensors get the dispatcher's error
        from . import triton_kernels as tk  # cheap: OP_NAMES only, kernels are lazy

        def lazy(name: str):
            resolved = []

            def kernel(*args, **kwargs):
                if not resolved:
                    resolved.append(getattr(tk, name))
                return resolved[0](*args, **kwargs)

            kernel.__name__ = kernel.__qualname__ = f"triton_{name}"
            return kernel

        for name in tk.OP_NAMES:
            if hasattr(ops, name):  # an op this build of the extension defines
                torch.library.register_kernel(f"deconv_ext::{name}", "cuda", lazy(name))

    _register_cuda_kernels()


# ---------------------------------------------------------------------------
# channel_mix / channel_mix_outer (multi-channel layers, csrc/channel_mix.cpp)
# ---------------------------------------------------------------------------
if available():

    def _check_mix(y, g, adjoint):
        _check_spectrum(y, "y")
        _check_spectrum(g, "g")
        torch._check(g.dtype == y.dtype, lambda: f"g dtype {g.dtype} differs from y dtype {y.dtype}")
        torch._check(y.dim() >= 3, lambda: f"y must be (..., C, H, Wf), got shape {tuple(y.shape)}")
        torch._check(g.dim() == 5, lambda: f"g must be (groups, M, N, H, Wf), got shape {tuple(g.shape)}")
        torch._check(g.shape[3] == y.shape[-2] and g.shape[4] == y.shape[-1],
                     lambda: f"g of shape {tuple(g.shape)} does not match the spectrum size "
                             f"{tuple(y.shape[-2:])} of y")
        cin = g.shape[0] * (g.shape[1] if adjoint else g.shape[2])
        torch._check(y.shape[-3] == cin,
                     lambda: f"y has {y.shape[-3]} channels; g of shape {tuple(g.shape)} expects {cin}")

    @torch.library.register_fake("deconv_ext::channel_mix")
    def _channel_mix_fake(y, g, adjoint):
        _check_mix(y, g, adjoint)
        cout = g.shape[0] * (g.shape[2] if adjoint else g.shape[1])
        return y.new_empty((*y.shape[:-3], cout, y.shape[-2], y.shape[-1]))

    @torch.library.register_fake("deconv_ext::channel_mix_outer")
    def _channel_mix_outer_fake(a, c, groups):
        _check_spectrum(a, "a")
        _check_spectrum(c, "c")
        torch._check(a.dtype == c.dtype, lambda: f"a dtype {a.dtype} differs from c dtype {c.dtype}")
        torch._check(a.dim() >= 3 and a.dim() == c.dim(),
                     lambda: f"a and c must be (..., C, H, Wf), got {tuple(a.shape)} and {tuple(c.shape)}")
        torch._check(groups >= 1, lambda: f"groups must be >= 1, got {groups}")
        torch._check(a.shape[-3] % groups == 0 and c.shape[-3] % groups == 0,
                     lambda: f"channel counts {a.shape[-3]} and {c.shape[-3]} are not divisible by "
                             f"groups={groups}")
        return a.new_empty((groups, a.shape[-3] // groups, c.shape[-3] // groups,
                            a.shape[-2], a.shape[-1]))

    def _mix_setup(ctx, inputs, output):
        y, g, adjoint = inputs
        ctx.save_for_backward(y, g)
        ctx.adjoint = adjoint

    def _mix_backward(ctx, grad):
        # out = A y with A = G (or G^H) per frequency: grad_y = A^H grad, i.e.
        # the same op with the adjoint flag flipped; grad_A = grad y^H, so
        # grad_G = grad y^H, or (y grad^H) for the adjoint (grad_G = grad_A^H).
        y, g = ctx.saved_tensors
        gy = gg = None
        if ctx.needs_input_grad[0]:
            gy = ops.channel_mix(grad, g, not ctx.adjoint)
        if ctx.needs_input_grad[1]:
            groups = g.shape[0]
            gg = (ops.channel_mix_outer(y, grad, groups) if ctx.adjoint
                  else ops.channel_mix_outer(grad, y, groups))
        return gy, gg, None

    torch.library.register_autograd("deconv_ext::channel_mix", _mix_backward,
                                    setup_context=_mix_setup)


# ---------------------------------------------------------------------------
# kernel_spectrum / spectral_power (csrc/kernel_spectrum.cpp): complex
# intermediates of the plan kept inside ops, away from Inductor codegen.
# ---------------------------------------------------------------------------
if available():

    def _half_shape(psf, height, width):
        return (*psf.shape[:-2], height, width // 2 + 1)

    @torch.library.register_fake("deconv_ext::kernel_spectrum")
    def _kernel_spectrum_fake(psf, height, width):
        torch._check(psf.dim() >= 2, lambda: f"psf must have at least 2 dims, got {psf.dim()}")
        torch._check(psf.shape[-2] <= height and psf.shape[-1] <= width,
                     lambda: f"psf of size {tuple(psf.shape[-2:])} is larger than the spectrum's "
                             f"image size {height}x{width}")
        cdt = torch.complex64 if psf.dtype == torch.float32 else torch.complex128
        return psf.new_empty(_half_shape(psf, height, width), dtype=cdt)

    @torch.library.register_fake("deconv_ext::kernel_spectrum_backward")
    def _kernel_spectrum_backward_fake(grad, kh, kw, height, width):
        _check_spectrum(grad, "grad")
        return grad.new_empty((*grad.shape[:-2], kh, kw), dtype=_real_of(grad.dtype))

    @torch.library.register_fake("deconv_ext::spectral_power")
    def _spectral_power_fake(k):
        _check_spectrum(k, "k")
        return k.new_empty(k.shape, dtype=_real_of(k.dtype))

    @torch.library.register_fake("deconv_ext::spectral_power_backward")
    def _spectral_power_backward_fake(grad, k):
        _check_spectrum(k, "k")
        return torch.empty_like(k, memory_format=torch.contiguous_format)

    def _ks_setup(ctx, inputs, output):
        psf, height, width = inputs
        ctx.args = (psf.shape[-2], psf.shape[-1], height, width)

    def _ks_backward(ctx, grad):
        return ops.kernel_spectrum_backward(grad, *ctx.args), None, None

    torch.library.register_autograd("deconv_ext::kernel_spectrum", _ks_backward,
                                    setup_context=_ks_setup)

    def _ksb_setup(ctx, inputs, output):
        grad, kh, kw, height, width = inputs
        ctx.size = (height, width)

    def _ksb_backward(ctx, gg):
        # Both ops are linear and adjoint to each other.
        return ops.kernel_spectrum(gg, *ctx.size), None, None, None, None

    torch.library.register_autograd("deconv_ext::kernel_spectrum_backward", _ksb_backward,
                                    setup_context=_ksb_setup)

    def _power_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def _power_backward(ctx, grad):
        (k,) = ctx.saved_tensors
        return ops.spectral_power_backward(grad, k)

    torch.library.register_autograd("deconv_ext::spectral_power", _power_backward,
                                    setup_context=_power_setup)

    # These two are a few ATen calls: the same torch code serves as their CUDA
    # kernel (still opaque to the compiler, which is the point).
    def _kernel_spectrum_torch(psf, height, width):
        kh, kw = psf.shape[-2:]
        padded = torch.nn.functional.pad(psf, (0, width - kw, 0, height - kh))
        return torch.fft.rfft2(torch.roll(padded, (-(kh // 2), -(kw // 2)), (-2, -1))).contiguous()

    def _kernel_spectrum_backward_torch(grad, kh, kw, height, width):
        full = grad.new_zeros((*grad.shape[:-1], width))
        full[..., : grad.shape[-1]] = grad.resolve_conj()
        h = torch.fft.ifft2(full, norm="forward").real
        return torch.roll(h, (kh // 2, kw // 2), (-2, -1))[..., :kh, :kw].contiguous()

    def _spectral_solve_adjoint_cuda(y, k, reg, eps, thresh):
        return ops.spectral_solve(y, k.conj_physical(), reg, eps, thresh)

    for _name, _fn in (
        ("spectral_solve_adjoint", _spectral_solve_adjoint_cuda),
        ("kernel_spectrum", _kernel_spectrum_torch),
        ("kernel_spectrum_backward", _kernel_spectrum_backward_torch),
        ("spectral_power", lambda k: torch.view_as_real(k.resolve_conj()).square().sum(-1)),
        ("spectral_power_backward", lambda g, k: (k.resolve_conj() * (2 * g)).contiguous()),
    ):
        torch.library.register_kernel(f"deconv_ext::{_name}", "cuda", _fn)


# ---------------------------------------------------------------------------
# deconv2d / filter2d (csrc/pipeline.cpp): whole rfft2 -> kernel -> irfft2
# pipelines, real in and real out, so compiled graphs hold no complex buffers
# that Inductor could rewrite (see the comment in pipeline.cpp).
# ---------------------------------------------------------------------------
if available():
    from . import pipeline as _pipeline

    def _check_pipeline(x, k, name):
        torch._check(x.dim() >= 2, lambda: f"{name} must have at least 2 dims, got {x.dim()}")
        torch._check(x.dtype in (torch.float32, torch.float64),
                     lambda: f"{name} must be float32 or float64, got {x.dtype}")
        cdt = torch.complex64 if x.dtype == torch.float32 else torch.complex128
        torch._check(k.dtype == cdt, lambda: f"k must be {cdt} for a {x.dtype} {name}, got {k.dtype}")
        torch._check(k.dim() >= 2 and k.shape[-2] == x.shape[-2]
                     and k.shape[-1] == x.shape[-1] // 2 + 1,
                     lambda: f"k of shape {tuple(k.shape)} is not the half spectrum of a "
                             f"{x.shape[-2]}x{x.shape[-1]} {name}")

    @torch.library.register_fake("deconv_ext::deconv2d")
    def _deconv2d_fake(image, k, reg, eps, thresh, adjoint):
        _check_pipeline(image, k, "image")
        half = image.new_empty((*image.shape[:-1], image.shape[-1] // 2 + 1), dtype=k.dtype)
        _spectral_solve_fake(half, k, reg, eps, thresh)
        return torch.empty_like(image, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deconv_ext::deconv2d_grad_k")
    def _deconv2d_grad_k_fake(grad, image, k, reg, eps, thresh, adjoint):
        _check_pipeline(image, k, "image")
        greg = reg.new_empty(reg.shape) if reg is not None else image.new_empty(())
        return k.new_empty(k.shape), greg

    @torch.library.register_fake("deconv_ext::filter2d")
    def _filter2d_fake(x, k, conj):
        _check_pipeline(x, k, "x")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("deconv_ext::filter2d_grad_k")
    def _filter2d_grad_k_fake(grad, x, k_shape, conj):
        cdt = torch.complex64 if x.dtype == torch.float32 else torch.complex128
        return x.new_empty(k_shape, dtype=cdt)

    def _deconv2d_setup(ctx, inputs, output):
        image, k, reg, eps, thresh, adjoint = inputs
        ctx.save_for_backward(image, k, reg, thresh)
        ctx.eps, ctx.adjoint = eps, adjoint

    def _deconv2d_backward(ctx, grad):
        image, k, reg, thresh = ctx.saved_tensors
        gi = gk = greg = None
        if ctx.needs_input_grad[0]:
            # The operator is real; its adjoint is the pipeline with the adjoint solve.
            gi = ops.deconv2d(grad, k, reg, ctx.eps, thresh, not ctx.adjoint)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gk, gr = ops.deconv2d_grad_k(grad, image, k, reg, ctx.eps, thresh, ctx.adjoint)
            greg = gr if reg is not None and ctx.needs_input_grad[2] else None
        return gi, gk, greg, None, None, None

    torch.library.register_autograd("deconv_ext::deconv2d", _deconv2d_backward,
                                    setup_context=_deconv2d_setup)

    _register_filter_autograd("filter2d", "filter2d_grad_k")

    for _name in ("deconv2d", "deconv2d_grad_k", "filter2d", "filter2d_grad_k"):
        # On CUDA: torch.fft (cuFFT) around the per-frequency ops (Triton).
        torch.library.register_kernel(
            f"deconv_ext::{_name}", "cuda",
            (lambda fn: lambda *args: fn(ops, *args))(getattr(_pipeline, _name)))
