"""Autograd of every ``torch.ops.deconv_ext`` op that has a gradient.

Each backward is the exact adjoint, written with other ops, so the backward
graph holds no complex arithmetic that Inductor would have to generate.
"""
from __future__ import annotations

import torch

from ..maths.dct import dct2
from .library import ops

def _solve_setup(ctx, inputs, output):
    y, k, reg, eps, thresh = inputs
    ctx.save_for_backward(y, k, reg, thresh)
    ctx.eps = eps

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

def _padded_setup(ctx, inputs, output):
    image, top, left, height, width, mode, k, reg, eps, thresh = inputs
    ctx.save_for_backward(image, k, reg, thresh)
    ctx.geometry = (top, left, height, width, mode)
    ctx.eps = eps


def _padded_backward(ctx, grad):
    # out = crop(D(pad_m(x))): grad_x = pad_m^T(D^T(crop^T(g))), and the kernel's
    # gradient is deconv2d's, at the padded image.
    image, k, reg, thresh = ctx.saved_tensors
    top, left, height, width, mode = ctx.geometry
    g_buf = ops.pad(grad, top, left, height, width, "zeros")
    gi = gk = greg = None
    if ctx.needs_input_grad[0]:
        g = ops.deconv2d(g_buf, k, reg, ctx.eps, thresh, True)
        gi = ops.pad_backward(g, top, left, image.shape[-2], image.shape[-1], mode)
    if ctx.needs_input_grad[6] or ctx.needs_input_grad[7]:
        buf = ops.pad(image, top, left, height, width, mode)
        gk, gr = ops.deconv2d_grad_k(g_buf, buf, k, reg, ctx.eps, thresh, False)
        greg = gr if reg is not None and ctx.needs_input_grad[7] else None
    return gi, None, None, None, None, None, gk, greg, None, None


torch.library.register_autograd("deconv_ext::padded_deconv2d", _padded_backward,
                                setup_context=_padded_setup)


def _dct_setup(ctx, inputs, output):
    image, filt = inputs
    ctx.save_for_backward(image, filt)


def _dct_backward(ctx, grad):
    # out = C^T diag(F) C x with C the orthonormal DCT-II: symmetric in x, and
    # d out / d F = (C x) * (C grad), summed over the batch.
    image, filt = ctx.saved_tensors
    gi = gf = None
    if ctx.needs_input_grad[0]:
        gi = ops.dct_solve(grad, filt)
    if ctx.needs_input_grad[1]:
        gf = (dct2(image) * dct2(grad)).sum_to_size(filt.shape)
    return gi, gf


torch.library.register_autograd("deconv_ext::dct_solve", _dct_backward, setup_context=_dct_setup)


def _no_second_order(name: str):
    """Autograd of a kernel-gradient op: its own gradient is not implemented.

    Without this, autograd would treat the op as a constant and a Hessian
    w.r.t. the PSF (or a layer weight's spectrum) would come out as zeros.
    """
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"second-order gradients w.r.t. the kernel (through deconv_ext::{name}) are not "
            f"supported; second-order gradients w.r.t. the image are")

    torch.library.register_autograd(f"deconv_ext::{name}", backward, setup_context=setup)


for _name in ("spectral_solve_backward", "spectral_mul_grad_k", "deconv2d_grad_k",
              "filter2d_grad_k"):
    _no_second_order(_name)
