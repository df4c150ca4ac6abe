"""The CUDA kernels of the ops, and the Triton launchers as a CPU test path.

On CUDA tensors every op runs Triton kernels (``deconv_ext.triton_kernels``)
or, for the real-to-real pipelines, ``torch.fft`` (cuFFT) around them
(:mod:`.torch_pipeline`). A few ops are a handful of ATen calls; the same
torch code serves as their CUDA kernel (still opaque to the compiler, which
keeps complex maths out of Inductor's generated code).

:func:`interpreter_kernels` gives the same launchers for CPU tensors, run by
the Triton interpreter on a machine without CUDA (``DECONV_EXT_KERNELS=triton``):
a test path, never a user path.
"""
from __future__ import annotations

import functools
import importlib.util
from types import SimpleNamespace

import torch

from ..maths.dct import dct2, idct2
from . import torch_pipeline
from .library import on_one_device, ops

__all__ = ["register", "interpreter_kernels"]

_PIPELINES = ("deconv2d", "deconv2d_grad_k", "filter2d", "filter2d_grad_k")


def _triton_kernels():
    """``deconv_ext.triton_kernels``, or None when Triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    from .. import triton_kernels  # cheap: OP_NAMES only, kernels are defined lazily

    return triton_kernels


def _lazy_launcher(tk, name: str):
    """A CUDA kernel that imports its launcher on first call.

    Importing deconv_ext then neither imports Triton nor, on a CPU-only
    machine, switches Triton to its interpreter (the kernels' package does
    that when they are defined).
    """
    resolved = []

    def kernel(*args, **kwargs):
        if not resolved:
            resolved.append(getattr(tk, name))
        return resolved[0](*args, **kwargs)

    kernel.__name__ = kernel.__qualname__ = f"triton_{name}"
    return kernel


def _kernel_spectrum(psf, height, width):
    kh, kw = psf.shape[-2:]
    padded = torch.nn.functional.pad(psf, (0, width - kw, 0, height - kh))
    return torch.fft.rfft2(torch.roll(padded, (-(kh // 2), -(kw // 2)), (-2, -1))).contiguous()


def _kernel_spectrum_backward(grad, kh, kw, height, width):
    full = grad.new_zeros((*grad.shape[:-1], width))
    full[..., : grad.shape[-1]] = grad.resolve_conj()
    h = torch.fft.ifft2(full, norm="forward").real
    return torch.roll(h, (kh // 2, kw // 2), (-2, -1))[..., :kh, :kw].contiguous()


def _padded_deconv2d(kern, image, top, left, height, width, mode, k, reg, eps, thresh):
    """``crop(deconv2d(pad(image)))`` with the per-frequency kernels ``kern``."""
    buf = kern.pad(image, top, left, height, width, mode)
    x = kern.deconv2d(buf, k, reg, eps, thresh, False)
    return kern.crop(x, top, left, image.shape[-2], image.shape[-1], image.dtype)


def _dct_solve(image, filt):
    return idct2(dct2(image) * filt).contiguous()


def register() -> None:
    """Register the CUDA kernel of every op (called once, when the package loads).

    Registering a CUDA kernel on a CPU-only build is harmless: no CUDA tensor
    can reach it. Without Triton, the per-frequency ops have no CUDA kernel and
    CUDA tensors get the dispatcher's error.
    """
    tk = _triton_kernels()
    if tk is not None:
        for name in tk.OP_NAMES:
            torch.library.register_kernel(f"deconv_ext::{name}", "cuda",
                                          on_one_device(name, _lazy_launcher(tk, name)))
    composed = {
        "spectral_solve_adjoint": lambda y, k, reg, eps, thresh: ops.spectral_solve(
            y, k.conj_physical(), reg, eps, thresh),
        "kernel_spectrum": _kernel_spectrum,
        "kernel_spectrum_backward": _kernel_spectrum_backward,
        "spectral_power": lambda k: torch.view_as_real(k.resolve_conj()).square().sum(-1),
        "spectral_power_backward": lambda g, k: (k.resolve_conj() * (2 * g)).contiguous(),
        "padded_deconv2d": functools.partial(_padded_deconv2d, ops),
        "dct_solve": _dct_solve,
    }
    if tk is not None:
        for name in _PIPELINES:
            # torch.fft (cuFFT) around the Triton launchers themselves: their
            # ``scale`` keyword (not in the op schemas) folds irfft2's 1/(H W)
            # into the per-frequency pass.
            composed[name] = functools.partial(getattr(torch_pipeline, name), tk)
    for name, fn in composed.items():
        # Every kernel checks its devices first: a CPU operand would be read
        # through a CUDA pointer.
        torch.library.register_kernel(f"deconv_ext::{name}", "cuda", on_one_device(name, fn))


@functools.lru_cache(maxsize=1)
def interpreter_kernels() -> SimpleNamespace:
    """The Triton launchers for CPU tensors (Triton interpreter), with the op names.

    Raises ValueError on a machine with CUDA: there the launchers run on the
    GPU, and CPU tensors belong to the C++ kernels.
    """
    if torch.cuda.is_available():
        raise ValueError("DECONV_EXT_KERNELS=triton on CPU tensors is a test path for machines "
                         "without CUDA; move the tensors to CUDA instead")
    tk = _triton_kernels()
    if tk is None:
        raise ValueError("DECONV_EXT_KERNELS=triton needs Triton: pip install triton")
    kern = SimpleNamespace(**{name: getattr(tk, name) for name in tk.OP_NAMES})
    for name in _PIPELINES:
        setattr(kern, name, functools.partial(getattr(torch_pipeline, name), kern))
    kern.padded_deconv2d = functools.partial(_padded_deconv2d, kern)
    return kern
