"""The route table: which implementation runs each op, decided in one place.

A call takes one of these routes, chosen by :func:`route` from the tensors
and the configuration (:mod:`deconv_ext.config`):

=================  ===========================================================
route              when
=================  ===========================================================
``"ops"``          the dispatcher (``torch.ops.deconv_ext``): C++ kernels on
                   CPU, Triton on CUDA; every call under ``torch.compile`` or
                   that autograd records, and every non-CPU tensor
``"interpreter"``  ``DECONV_EXT_KERNELS=triton`` on CPU tensors: the Triton
                   launchers, run by the Triton interpreter (a test path)
``"pipeline"``     eager CPU calls without autograd: the C++ function called
                   directly (no dispatcher or autograd wrapper, ~30 us less)
``"scipy"``,       eager CPU calls without autograd whose CPU FFT library is
``"pyfftw"``       that one (``DECONV_EXT_CPU_FFT``; ``auto`` measures)
=================  ===========================================================

:data:`TABLE` maps each op to its implementation per route; an op without an
entry for the FFT-library routes runs its ``"pipeline"`` entry there.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import torch

from .. import config
from ..maths import padding
from ..maths import parameter_choice as pc
from ..maths.dct import dct2, idct2
from . import cpu_fft, fft_choice
from .cuda import interpreter_kernels
from .library import cpp, ops, require
from .threads import call_single_threaded

__all__ = ["TABLE", "route", "deconv2d", "deconv2d_chosen", "filter2d", "padded_deconv2d", "dct_solve", "pad",
           "pad_adjoint", "crop", "kernel_spectrum", "spectral_power", "channel_mix", "bin_power",
           "rule_search", "edge_risk_search", "RULE_KERNELS"]

_FFT_ROUTES = ("pipeline", "scipy", "pyfftw")


def _eager_cpu(tensors) -> bool:
    """An eager CPU call that autograd does not record (nor a tracer: ``torch.jit.trace``
    records dispatcher ops only, never a direct pybind11 call)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t.device.type != "cpu" or (grad and t.requires_grad):
            return False
    return True


def route(x: torch.Tensor, *operands: Optional[torch.Tensor], fft: bool = True) -> str:
    """The route of an op call on ``x`` with tensor ``operands`` (None entries ignored).

    ``fft=False`` for ops without FFTs: their eager route is ``"pipeline"``.
    """
    tensors = [x] + [t for t in operands if t is not None]
    cfg = config.get()
    if cfg.kernels == "triton" and x.device.type == "cpu":
        return "interpreter"
    if not _eager_cpu(tensors):
        return "ops"
    if not fft or cfg.cpu_fft == "pipeline":
        return "pipeline"
    if cfg.cpu_fft == "auto":
        return fft_choice.choose(tuple(x.shape), x.dtype)
    if cfg.cpu_fft == "pyfftw" and not cpu_fft.pyfftw_available():
        raise ValueError("DECONV_EXT_CPU_FFT=pyfftw needs pyFFTW (GPL): install it with "
                         "`pip install pyfftw`")
    return cfg.cpu_fft


def _shared_filter(image: torch.Tensor, filt: torch.Tensor) -> Optional[torch.Tensor]:
    """The DCT filter as one (H, W) plane when every image plane shares it, else None."""
    if filt.dtype != image.dtype or any(n != 1 for n in filt.shape[:-2]):
        return None
    return filt.reshape(filt.shape[-2:])


def _dct_torch(image, filt):
    # Differentiable and traceable; any filter shape that broadcasts.
    return idct2(dct2(image) * filt)


def _dct_ops(image, filt):
    shared = _shared_filter(image, filt)
    return _dct_torch(image, filt) if shared is None else ops.dct_solve(image, shared)


def _dct_pipeline(image, filt):
    return cpp.dct_solve(image, _shared_filter(image, filt).detach())


def _scaled_dct_filter(filt: torch.Tensor):
    """``F / (4 H W)`` as a NumPy array: pocketfft's unnormalised DCT-III(DCT-II(x)) = 4 H W x."""
    H, W = filt.shape[-2:]
    return filt.detach().numpy() * (1.0 / (4.0 * H * W))


def _interp(name: str) -> Callable:
    return lambda *args: getattr(interpreter_kernels(), name)(*args)


def _pad_any(x, top, left, height, width, mode):
    if _has_kernels(x.device):
        return ops.pad(x, top, left, height, width, mode)
    return padding.pad(x, top, left, height, width, mode)


def _pad_adjoint_any(g, top, left, height, width, mode):
    if _has_kernels(g.device):
        return ops.pad_backward(g, top, left, height, width, mode)
    return padding.pad_adjoint(g, top, left, height, width, mode)


def _crop_any(x, top, left, height, width, dtype):
    if _has_kernels(x.device):
        return ops.crop(x, top, left, height, width, dtype)
    return x[..., top:top + height, left:left + width].to(dtype)


@functools.lru_cache(maxsize=None)
def _has_kernels(device: torch.device) -> bool:
    """Whether the ops have a kernel for ``device`` (CPU always; CUDA with Triton)."""
    if device.type == "cpu":
        return True
    key = "CUDA" if device.type == "cuda" else device.type.upper()
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("deconv_ext::pad", key)
    except RuntimeError:  # pragma: no cover - unusual dispatch keys
        return False


#: op -> route -> implementation. Each implementation has the op's signature.
TABLE: Dict[str, Dict[str, Callable]] = {
    "deconv2d": {
        "ops": lambda image, k, reg, eps, thresh: ops.deconv2d(image, k, reg, eps, thresh, False),
        "interpreter": lambda image, k, reg, eps, thresh: interpreter_kernels().deconv2d(
            image, k, reg, eps, thresh, False),
        "pipeline": lambda image, k, reg, eps, thresh: cpp.deconv2d(image, k, reg, eps, thresh,
                                                                    False),
        "scipy": functools.partial(cpu_fft.deconv2d, "scipy"),
        "pyfftw": functools.partial(cpu_fft.deconv2d, "pyfftw"),
    },
    "filter2d": {
        "ops": ops.filter2d if cpp is not None else None,
        "interpreter": _interp("filter2d"),
        "pipeline": cpp.filter2d if cpp is not None else None,
        "scipy": functools.partial(cpu_fft.filter2d, "scipy"),
        "pyfftw": functools.partial(cpu_fft.filter2d, "pyfftw"),
    },
    # Pad, solve and crop in one call with one buffer (the separate ops took
    # 1.7x the circular solve at 512^2, a third of it in pad and crop).
    "padded_deconv2d": {
        "ops": ops.padded_deconv2d if cpp is not None else None,
        "interpreter": _interp("padded_deconv2d"),
        "pipeline": cpp.padded_deconv2d if cpp is not None else None,
    },
    "dct_solve": {
        "ops": _dct_ops,
        "interpreter": _dct_torch,
        "torch": _dct_torch,
        "pipeline": _dct_pipeline,
        "scipy": lambda image, filt: cpu_fft.dct_solve(image, _scaled_dct_filter(filt)),
    },
    "pad": {"ops": _pad_any, "interpreter": _interp("pad"), "pipeline": _pad_any},
    "pad_adjoint": {"ops": _pad_adjoint_any, "interpreter": _pad_adjoint_any,
                    "pipeline": _pad_adjoint_any},
    "crop": {"ops": _crop_any, "interpreter": _interp("crop"), "pipeline": _crop_any},
}


#: Below this many elements an eager C++ call runs on the calling thread alone:
#: with 2 cores and another busy process, a 2-thread OpenMP FFT of a 32^2 plane
#: stalls at its barrier (~3x slower per call, measured); at 128^2 two threads win.
SMALL_WORK = 1 << 13


def _run(name: str, how: str, *args):
    impls = TABLE[name]
    fn = impls.get(how) or impls["pipeline" if how in _FFT_ROUTES else "ops"]
    if how == "pipeline" and args[0].numel() < SMALL_WORK:
        return call_single_threaded(fn, *args)
    return fn(*args)


def deconv2d(image, k, reg, eps: float, thresh):
    """``irfft2(solve(rfft2(image)))``: (..., H, W) real -> (..., H, W) (op ``deconv2d``)."""
    return _run("deconv2d", route(image, k, reg, thresh), image, k, reg, eps, thresh)


def deconv2d_chosen(image, k, thresh, choose: Callable):
    """:func:`deconv2d` whose regulariser is chosen from the image's own spectrum.

    ``choose(Y) -> (reg, eps)`` receives the half spectrum ``Y = rfft2(image)``
    (detached, complex, (..., H, W // 2 + 1)) and returns the solve's
    ``reg`` operand (a real tensor broadcastable to ``Y``, e.g. a per-plane
    eps times ``|R|^2``) and its float ``eps``; then ``irfft2(solve(Y))``.
    Two FFTs in all, as :func:`deconv2d`: the choice costs no transform.

    Eager CPU calls without autograd solve in place (the fused C++ solve
    through pybind11, between ``torch.fft`` transforms, or ``scipy.fft`` on
    the ``"scipy"`` route); otherwise the op ``spectral_solve`` (autograd
    w.r.t. the image and the kernel, the chosen operand held constant; C++ on
    CPU, Triton on CUDA) between ``torch.fft`` transforms.
    """
    H, W = image.shape[-2:]
    how = route(image, k, thresh)
    # The pipeline's own transforms (MKL's DFTI direct; its inverse overwrites
    # Y instead of cloning it, and scales in the transform: torch.fft's
    # irfft2 took 2.5x its rfft2 at 2048^2, one thread).
    pipeline = how == "pipeline" and image.dtype in (torch.float32, torch.float64)
    if how == "scipy":
        Y = cpu_fft.rfft2(image)
    elif pipeline:
        Y = cpp.rfft2(image)
    else:
        Y = torch.fft.rfft2(image)
    reg, eps = choose(Y.detach())
    if how in _FFT_ROUTES:
        cpp.spectral_solve_(Y, k, reg, eps, thresh)
        if pipeline:
            return cpp.irfft2(Y, W)
        return cpu_fft.irfft2(Y, (H, W)) if how == "scipy" else torch.fft.irfft2(Y, s=(H, W))
    solve = (interpreter_kernels().spectral_solve if how == "interpreter"
             else ops.spectral_solve)
    return torch.fft.irfft2(solve(Y, k, reg, eps, thresh), s=(H, W))


def filter2d(x, k, conj: bool):
    """``irfft2(K rfft2(x))`` (or ``conj(K)``): (..., H, W) -> (..., H, W) (op ``filter2d``)."""
    return _run("filter2d", route(x, k), x, k, conj)


def padded_deconv2d(image, top: int, left: int, height: int, width: int, mode: str, k, reg,
                    eps: float, thresh):
    """``crop(deconv2d(pad(image)))`` into a (height, width) buffer at (top, left) and back."""
    how = route(image, k, reg, thresh, fft=False)
    return _run("padded_deconv2d", how, image, top, left, height, width, mode, k, reg, eps,
                thresh)


def dct_solve(image, filt):
    """``idctn(F dctn(image, norm="ortho"), norm="ortho")`` over the last two dims.

    ``filt`` (..., H, W) real, broadcasting to ``image``; the C++ solve for a
    filter shared by every plane, pocketfft's DCTs or the torch transforms
    otherwise (differentiable, any device).
    """
    how = route(image, filt, fft=False)
    if how == "pipeline":
        # No measuring here: the C++ solve is the default wherever it applies
        # (it takes one plane's filter); pocketfft when asked for, or for
        # per-sample filters under "auto"; else the torch transforms.
        lib = config.get().cpu_fft
        shared = _shared_filter(image, filt) is not None
        if lib in ("scipy", "pyfftw") or (lib == "auto" and not shared):
            how = "scipy"
        elif not shared:
            how = "torch"
    return _run("dct_solve", how, image, filt)


def pad(x, top: int, left: int, height: int, width: int, mode: str):
    """Extend ``x`` (..., H, W) by ``mode`` into a (..., height, width) buffer at (top, left).

    Half types become float32.
    """
    return _run("pad", route(x, fft=False), x, top, left, height, width, mode)


def pad_adjoint(g, top: int, left: int, height: int, width: int, mode: str):
    """Exact adjoint of :func:`pad`: (..., Nh, Nw) -> (..., height, width)."""
    return _run("pad_adjoint", route(g, fft=False), g, top, left, height, width, mode)


def crop(x, top: int, left: int, height: int, width: int, dtype=None):
    """Window (top, left, height, width) of ``x``, cast to ``dtype`` (default: x's)."""
    return _run("crop", route(x, fft=False), x, top, left, height, width, dtype or x.dtype)


def kernel_spectrum(psf, height: int, width: int):
    """Half-spectrum transfer function of a PSF at (height, width) (op ``kernel_spectrum``).

    Every plan starts here: without a build, this says how to build.
    """
    require()
    return ops.kernel_spectrum(psf, height, width)


def spectral_power(K):
    """``|K|^2`` of a complex tensor (op ``spectral_power``)."""
    return ops.spectral_power(K)


def bin_power(Y, idx, weights, nbins: int):
    """``sum weights * |Y|^2`` per bin of ``idx``, float64: (..., H, Wf) complex -> (..., nbins).

    ``idx`` int64 broadcastable to ``Y``, ``weights`` float64 broadcastable to
    (H, Wf). Eager CPU calls with one (H, Wf) bin map run the C++ binning (one
    pass over ``Y``: at 2048^2 it replaced four, 32 ms of a 38 ms eps choice);
    otherwise :func:`~deconv_ext.maths.parameter_choice.bin_sums` of the power.
    """
    H, Wf = Y.shape[-2:]
    shared = idx.dim() == 2 and weights.dtype == torch.float64 and (
        tuple(weights.shape) in ((Wf,), (H, Wf)))
    if shared and route(Y, fft=False) == "pipeline":
        return cpp.bin_power(Y.detach(), idx, weights, nbins)
    return pc.power_bins(Y, idx, weights, nbins)


def rule_search(fine, rule: str, s2, tau: float, eps_range, rtol: float):
    """:func:`~deconv_ext.maths.parameter_choice.search` (the same signature and result).

    On eager CPU tensors the C++ search (one call: the reference's ~170 small
    tensor operations took 1.8 ms per 512^2 image, twice its solve); else the
    reference itself.
    """
    if cpp is None or route(fine.q, fft=False) != "pipeline":
        return pc.search(fine, rule, s2, tau, eps_range, rtol)
    lo, hi = (float(v) for v in eps_range) if eps_range is not None else (0.0, 0.0)
    return cpp.rule_search(fine.q, fine.wa, fine.wy, fine.wr, fine.wry, fine.res_extra,
                           fine.dof_extra, fine.n_data, s2, rule, tau, lo, hi, rtol, pc.COARSEN,
                           pc.POINTS_PER_DECADE, pc.RANGE_DECADES, pc.REFINE_POINTS)


def edge_risk_search(spE, prior, s2, rho: float, rtol: float):
    """:func:`~deconv_ext.maths.parameter_choice.minimise_edge_risk` (same signature and
    result): the C++ search on eager CPU tensors, else the reference."""
    if cpp is None or route(spE.q, fft=False) != "pipeline":
        return pc.minimise_edge_risk(spE, prior, s2, rho, rtol)
    return cpp.edge_risk_search(spE.q, spE.wa, spE.wr, spE.wry, prior.weight, prior.scale,
                                prior.dc_q, prior.dc_power, s2, rho, rtol, pc.COARSEN,
                                pc.POINTS_PER_DECADE, pc.RANGE_DECADES, pc.REFINE_POINTS)


def rule_solve(Y, k, reg):
    """:func:`~deconv_ext.maths.parameter_choice.tikhonov_spectrum` (a new tensor):
    the fused C++ solve on a copy for eager CPU tensors (one pass instead of
    torch's ten: 0.24 against 1.6 ms at 540^2), else the reference."""
    if cpp is None or route(Y, k, reg, fft=False) != "pipeline":
        return pc.tikhonov_spectrum(Y, k, reg)
    X = Y.detach().clone()
    cpp.spectral_solve_(X, k, reg, 1.0, torch.zeros((1, 1), dtype=reg.dtype))
    return X


def _pipeline_fft(x) -> bool:
    return cpp is not None and route(x) == "pipeline" and x.dtype in (
        torch.float32, torch.float64, torch.complex64, torch.complex128)


def rule_rfft2(x, s):
    """``torch.fft.rfft2(x, s=s)`` (zero-padded to ``s``): the C++ pipeline's
    transform on eager CPU tensors (MKL's DFTI direct: 0.44 against 0.78 ms at
    540^2 in the padded choice), else torch's."""
    if not _pipeline_fft(x):
        return torch.fft.rfft2(x, s=s)
    H, W = x.shape[-2:]
    if (H, W) != tuple(s):
        buf = x.new_zeros(*x.shape[:-2], *s)
        buf[..., :H, :W] = x
        x = buf
    return cpp.rfft2(x.contiguous())


def rule_irfft2(X, s):
    """``torch.fft.irfft2(X, s=s)`` for ``X`` of (..., s[0], s[1] // 2 + 1): the C++
    pipeline's inverse on eager CPU tensors (it overwrites ``X``: 0.54 against
    1.3 ms at 540^2), else torch's."""
    if not _pipeline_fft(X) or tuple(X.shape[-2:]) != (s[0], s[1] // 2 + 1):
        return torch.fft.irfft2(X, s=s)
    return cpp.irfft2(X.contiguous(), s[1])


#: The steps of a rule's choice, routed (C++ on eager CPU tensors): what the
#: plans hand to :mod:`deconv_ext.maths.parameter_choice`.
RULE_KERNELS = pc.RuleKernels(search=rule_search, edge_search=edge_risk_search,
                              bin_power=bin_power, solve=rule_solve, rfft2=rule_rfft2,
                              irfft2=rule_irfft2)


def channel_mix(Y, G, adjoint: bool):
    """``G(w) Y(w)`` (or ``G(w)^H Y(w)``) per group and frequency (op ``channel_mix``)."""
    return ops.channel_mix(Y, G, adjoint)
