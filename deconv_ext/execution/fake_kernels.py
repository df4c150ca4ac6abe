"""Fake (meta) kernels of every ``torch.ops.deconv_ext`` op.

They check what the real kernels check and return an output of the right
shape and dtype, so that errors surface the same way under ``torch.compile``
(and ``torch.export``) as in eager calls.
"""
from __future__ import annotations

import torch

from . import library


def _fake(op: str):
    """``torch.library.register_fake`` for ``deconv_ext::op``, with the device check.

    The dispatcher picks the fake kernel when any argument is a meta tensor,
    so without the check a meta operand beside CPU tensors would give a meta
    result for a CPU call.
    """
    def register(fn):
        torch.library.register_fake(f"deconv_ext::{op}")(library.on_one_device(op, fn))
        return fn
    return register

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

@_fake("spectral_solve")
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
    largest = torch.finfo(_real_of(y.dtype)).max
    torch._check(0 <= eps <= largest,
                 lambda: f"eps must be a finite number >= 0 (<= {largest:.3g} in "
                         f"{_real_of(y.dtype)}), got {eps}")
    return torch.empty_like(y, memory_format=torch.contiguous_format)

@_fake("spectral_solve_adjoint")
def _spectral_solve_adjoint_fake(y, k, reg, eps, thresh):
    return _spectral_solve_fake(y, k, reg, eps, thresh)

@_fake("spectral_solve_")
def _spectral_solve_inplace_fake(y, k, reg, eps, thresh):
    _spectral_solve_fake(y, k, reg, eps, thresh)

@_fake("spectral_mul")
def _spectral_mul_fake(y, k, conj):
    _check_spectrum(y, "y")
    _check_spectrum(k, "k")
    torch._check(k.dtype == y.dtype, lambda: f"k dtype {k.dtype} differs from y dtype {y.dtype}")
    _check_broadcasts(k, y, "k")
    return torch.empty_like(y, memory_format=torch.contiguous_format)

@_fake("spectral_solve_backward")
def _spectral_solve_backward_fake(grad, y, k, reg, eps, thresh):
    _check_spectrum(grad, "grad")
    _check_broadcasts(k, y, "k")
    gk = k.new_empty(k.shape)
    greg = reg.new_empty(reg.shape) if reg is not None else y.new_empty((), dtype=_real_of(y.dtype))
    return gk, greg

@_fake("spectral_mul_grad_k")
def _spectral_mul_grad_k_fake(grad, y, k_shape, conj):
    _check_spectrum(grad, "grad")
    return y.new_empty(k_shape)

def _pad_like(x, height, width, dtype):
    torch._check(x.dim() >= 2, lambda: f"x must have at least 2 dims, got {x.dim()}")
    return x.new_empty((*x.shape[:-2], height, width), dtype=dtype)

@_fake("pad")
def _pad_fake(x, top, left, height, width, mode):
    torch._check(mode in _MODES, lambda: f"mode must be one of {_MODES}, got {mode!r}")
    torch._check(x.dtype.is_floating_point, lambda: f"x must be floating, got {x.dtype}")
    return _pad_like(x, height, width, _compute(x.dtype))

@_fake("pad_backward")
def _pad_backward_fake(grad, top, left, height, width, mode):
    torch._check(mode in _MODES, lambda: f"mode must be one of {_MODES}, got {mode!r}")
    return _pad_like(grad, height, width, _compute(grad.dtype))

@_fake("crop")
def _crop_fake(x, top, left, height, width, dtype):
    torch._check(top >= 0 and left >= 0 and top + height <= x.shape[-2]
                 and left + width <= x.shape[-1],
                 lambda: f"crop window ({top}, {left}, {height}, {width}) does not fit in "
                         f"{tuple(x.shape[-2:])}")
    return _pad_like(x, height, width, dtype)

# -----------------------------------------------------------------------
# Autograd: every backward is the exact adjoint, expressed with the ops.
# -----------------------------------------------------------------------

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

@_fake("channel_mix")
def _channel_mix_fake(y, g, adjoint):
    _check_mix(y, g, adjoint)
    cout = g.shape[0] * (g.shape[2] if adjoint else g.shape[1])
    return y.new_empty((*y.shape[:-3], cout, y.shape[-2], y.shape[-1]))

@_fake("channel_mix_outer")
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


def _half_shape(psf, height, width):
    return (*psf.shape[:-2], height, width // 2 + 1)

@_fake("kernel_spectrum")
def _kernel_spectrum_fake(psf, height, width):
    torch._check(psf.dim() >= 2, lambda: f"psf must have at least 2 dims, got {psf.dim()}")
    torch._check(psf.shape[-2] <= height and psf.shape[-1] <= width,
                 lambda: f"psf of size {tuple(psf.shape[-2:])} is larger than the spectrum's "
                         f"image size {height}x{width}")
    cdt = torch.complex64 if psf.dtype == torch.float32 else torch.complex128
    return psf.new_empty(_half_shape(psf, height, width), dtype=cdt)

@_fake("kernel_spectrum_backward")
def _kernel_spectrum_backward_fake(grad, kh, kw, height, width):
    _check_spectrum(grad, "grad")
    return grad.new_empty((*grad.shape[:-2], kh, kw), dtype=_real_of(grad.dtype))

@_fake("spectral_power")
def _spectral_power_fake(k):
    _check_spectrum(k, "k")
    return k.new_empty(k.shape, dtype=_real_of(k.dtype))

@_fake("spectral_power_backward")
def _spectral_power_backward_fake(grad, k):
    _check_spectrum(k, "k")
    return torch.empty_like(k, memory_format=torch.contiguous_format)


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

@_fake("deconv2d")
def _deconv2d_fake(image, k, reg, eps, thresh, adjoint):
    _check_pipeline(image, k, "image")
    half = image.new_empty((*image.shape[:-1], image.shape[-1] // 2 + 1), dtype=k.dtype)
    _spectral_solve_fake(half, k, reg, eps, thresh)
    return torch.empty_like(image, memory_format=torch.contiguous_format)

@_fake("deconv2d_grad_k")
def _deconv2d_grad_k_fake(grad, image, k, reg, eps, thresh, adjoint):
    _check_pipeline(image, k, "image")
    greg = reg.new_empty(reg.shape) if reg is not None else image.new_empty(())
    return k.new_empty(k.shape), greg

@_fake("filter2d")
def _filter2d_fake(x, k, conj):
    _check_pipeline(x, k, "x")
    return torch.empty_like(x, memory_format=torch.contiguous_format)

@_fake("filter2d_grad_k")
def _filter2d_grad_k_fake(grad, x, k_shape, conj):
    cdt = torch.complex64 if x.dtype == torch.float32 else torch.complex128
    return x.new_empty(k_shape, dtype=cdt)


@_fake("padded_deconv2d")
def _padded_deconv2d_fake(image, top, left, height, width, mode, k, reg, eps, thresh):
    torch._check(image.dim() >= 2, lambda: f"image must have at least 2 dims, got {image.dim()}")
    torch._check(image.dtype in (torch.float32, torch.float64),
                 lambda: f"image must be float32 or float64, got {image.dtype}")
    torch._check(mode in _MODES, lambda: f"mode must be one of {_MODES}, got {mode!r}")
    torch._check(0 <= top and top + image.shape[-2] <= height and 0 <= left
                 and left + image.shape[-1] <= width,
                 lambda: f"an image of size {tuple(image.shape[-2:])} at ({top}, {left}) does not "
                         f"fit the {height}x{width} buffer")
    buf = image.new_empty((*image.shape[:-2], height, width))
    _deconv2d_fake(buf, k, reg, eps, thresh, False)
    return torch.empty_like(image, memory_format=torch.contiguous_format)


@_fake("dct_solve")
def _dct_solve_fake(image, filter):
    torch._check(image.dim() >= 2, lambda: f"image must have at least 2 dims, got {image.dim()}")
    torch._check(image.dtype in (torch.float32, torch.float64),
                 lambda: f"image must be float32 or float64, got {image.dtype}")
    torch._check(filter.dtype == image.dtype,
                 lambda: f"filter dtype {filter.dtype} differs from image dtype {image.dtype}")
    torch._check(filter.dim() == 2 and tuple(filter.shape) == tuple(image.shape[-2:]),
                 lambda: f"filter of shape {tuple(filter.shape)} is not the image's (H, W) = "
                         f"{tuple(image.shape[-2:])}")
    return torch.empty_like(image, memory_format=torch.contiguous_format)
