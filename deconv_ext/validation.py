"""Every argument check, in one module, called at the public entry points.

Each check raises before any work starts: ``TypeError`` for a wrong type,
``ValueError`` for a wrong value, with a message that names the argument, the
value received and what was expected. (``RuntimeError`` comes only from
inside ops.)
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from .maths.parameter_choice import RULES
from .maths.spectral import compute_dtype

METHODS = ("tikhonov", "pinv")
BOUNDARIES = ("circular", "reflect", "symmetric", "replicate", "zeros")
REGS = ("laplacian",)
_INF = float("inf")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def choice(name: str, value, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; expected one of {', '.join(map(repr, valid))}")
    return value


def dense(name: str, x: torch.Tensor) -> torch.Tensor:
    """A dense (strided) tensor that no ``torch.func`` transform wraps.

    The ops read strided memory: a sparse tensor would fail inside them with
    a message about memory formats. A tensor wrapped by ``torch.vmap`` or
    ``torch.func.grad`` (and ``jacrev``, ``vjp``, ``jvp``, ...) has no storage
    to read, and the ops' autograd formulas (``torch.library.register_autograd``)
    cannot run under those transforms.
    """
    if x.layout != torch.strided:
        raise TypeError(f"{name} has layout {x.layout}; expected a dense (torch.strided) "
                        f"tensor; convert it with .to_dense()")
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x):
        if torch._C._functorch.is_batchedtensor(x):
            raise NotImplementedError(
                f"{name} is batched by torch.vmap, which deconv_ext's ops do not support; "
                f"pass the batch as leading dims instead: every function takes (..., H, W) "
                f"images, and a PSF (..., kh, kw) broadcasts to them")
        raise NotImplementedError(
            f"{name} is traced by a torch.func transform (grad, vjp, jacrev, jvp, ...), which "
            f"deconv_ext's ops do not support; use torch.autograd.grad or .backward() (every "
            f"op is differentiable), or deconv_ext.reference (pure torch) under torch.func")
    return x


def image(x, name: str = "image") -> torch.Tensor:
    """A real floating dense tensor with at least 2 dims (..., H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    dense(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; expected a real floating dtype "
                        f"(float16, bfloat16, float32 or float64)")
    if x.dim() < 2:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected at least 2 dims (..., H, W)")
    return x


#: Largest image side a plan accepts: a spectrum that size would not fit any machine.
MAX_SIDE = 1 << 24


def size2(name: str, value) -> Tuple[int, int]:
    """An (H, W) pair of positive ints, each at most :data:`MAX_SIDE`."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                       for v in value)):
        raise ValueError(f"{name}={value!r} is not valid; expected a pair of positive ints (H, W)")
    if max(value) > MAX_SIDE:
        raise ValueError(f"{name}={tuple(value)!r} is not valid; expected each side <= "
                         f"{MAX_SIDE}")
    return int(value[0]), int(value[1])


def pair(name: str, value) -> Tuple[int, int]:
    """An int or a pair of ints, each >= 1."""
    v = (value, value) if isinstance(value, numbers.Integral) else value
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(a, numbers.Integral) and a >= 1 for a in v)):
        raise ValueError(f"{name}={value!r} is not valid; expected a positive int or a pair of them")
    return int(v[0]), int(v[1])


def kernel(k, img_shape: Sequence[int], name: str = "psf") -> torch.Tensor:
    """A real floating kernel (..., kh, kw) that fits in and broadcasts to the image."""
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(k).__name__}")
    dense(name, k)
    if k.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {k.dtype}; expected a real floating dtype")
    if k.dim() < 2:
        raise ValueError(f"{name} has shape {tuple(k.shape)}; expected at least 2 dims (..., kh, kw)")
    kh, kw = k.shape[-2:]
    H, W = img_shape[-2:]
    # An empty image (H or W = 0) has nothing to solve: empty in, empty out.
    if H > 0 and W > 0 and (kh > H or kw > W):
        raise ValueError(f"{name} of size {kh}x{kw} is larger than the image ({H}x{W}); "
                         f"expected kh <= H and kw <= W")
    if kh < 1 or kw < 1:
        raise ValueError(f"{name} has an empty spatial size {kh}x{kw}")
    lead_k, lead_i = tuple(k.shape[:-2]), tuple(img_shape[:-2])
    ok = len(lead_k) <= len(lead_i) and all(
        a == 1 or a == b for a, b in zip(reversed(lead_k), reversed(lead_i)))
    if not ok:
        raise ValueError(f"{name} of shape {tuple(k.shape)} does not broadcast to the image's "
                         f"leading dims {lead_i}; expected (kh, kw) or (..., kh, kw) with each "
                         f"leading dim 1 or equal to the image's")
    return k


def eps(value, size: Tuple[int, int], name: str = "eps"):
    """A finite scalar >= 0, or a real non-negative tensor broadcastable to (..., H, W)."""
    if isinstance(value, torch.Tensor):
        dense(f"{name} tensor", value)
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} tensor has dtype {value.dtype}; expected a real floating dtype")
        if value.dim() >= 1:
            tail = tuple(value.shape[-2:]) if value.dim() >= 2 else (1,) + tuple(value.shape)
            if not all(a in (1, b) for a, b in zip(tail, size)):
                raise ValueError(f"{name} tensor of shape {tuple(value.shape)} does not broadcast to "
                                 f"the spectrum (..., {size[0]}, {size[1]})")
        # Under torch.compile the values cannot be read without a host sync: the
        # plan makes the result NaN instead (plans/circular.py, values_guard).
        if not torch.compiler.is_compiling():
            v = value.detach()
            # One reduction, one host sync.
            if not bool(eps_values_ok(v)):
                raise ValueError(f"{name} tensor must be finite and >= 0 everywhere; got "
                                 f"{_value_summary(v)}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} is not valid; expected a float >= 0 or a real tensor")
    v = float(value)
    if not (0 <= v < _INF):  # also rejects NaN; no math.isnan: traceable by dynamo
        raise ValueError(f"{name}={value!r} is not valid; expected a finite float >= 0")
    return v


def eps_values_ok(value: torch.Tensor) -> torch.Tensor:
    """0-dim bool tensor: every value of an eps tensor is finite and >= 0 (no sync).

    NaN fails ``>= 0`` and +inf fails ``< inf``: one reduction.
    """
    return ((value >= 0) & (value < _INF)).all()


def reg_values_ok(value: torch.Tensor) -> torch.Tensor:
    """0-dim bool tensor: every value of a reg kernel is finite (no sync)."""
    return torch.isfinite(value).all()


def _value_summary(v: torch.Tensor) -> str:
    """How many values are NaN, +-Inf and negative, for a message (syncs; error path only)."""
    n_nan = int(torch.isnan(v).sum())
    n_inf = int(torch.isinf(v).sum())
    n_neg = int((v < 0).sum())
    return f"{n_nan} NaN, {n_inf} +-Inf, {n_neg} negative of {v.numel()} values"


#: The parameter-choice rules ``eps=`` accepts by name.
EPS_RULES = RULES
EPS_PERS = ("plane", "sample")


def eps_or_rule(value, size: Tuple[int, int], name: str = "eps"):
    """:func:`eps`, or the name of a parameter-choice rule (one of :data:`EPS_RULES`)."""
    if isinstance(value, str):
        if value not in EPS_RULES:
            raise ValueError(f"{name}={value!r} is not valid; expected a float >= 0, a tensor, "
                             f"or the name of a rule that chooses eps: "
                             f"{', '.join(map(repr, EPS_RULES))}")
        return value
    return eps(value, size, name)


def eps_rule_args(eps_value, method: str, noise_std, eps_per: str):
    """The arguments that go with ``eps=<rule>``: ``(noise_std, eps_per)`` checked.

    A rule needs ``method="tikhonov"`` (the pseudo-inverse has no eps);
    ``noise_std`` is None, or a finite float > 0 (or a tensor of them), and
    only goes with a rule; ``eps_per`` is "plane" or "sample".
    """
    choice("eps_per", eps_per, EPS_PERS)
    rule = eps_value if isinstance(eps_value, str) else None
    if rule is not None and method == "pinv":
        raise ValueError(f"eps={rule!r} chooses a Tikhonov weight, but method='pinv' has none; "
                         f"use method='tikhonov'")
    if noise_std is None:
        return None, eps_per
    if rule is None:
        raise ValueError(f"noise_std={noise_std!r} is used only when eps names a rule "
                         f"({', '.join(map(repr, EPS_RULES))}); got eps={eps_value!r}")
    return positive_std(noise_std), eps_per


def rule_solver(rule: str, solver: str) -> None:
    """A rule chooses eps on an FFT solve's spectra: ``solver="fft"`` only."""
    if solver != "fft":
        raise ValueError(f"eps={rule!r} chooses eps in closed form on the spectrum of the FFT "
                         f"solve, which solver={solver!r} does not have; use solver='fft' (the "
                         f"chosen eps is in deconvolve(..., return_info=True)[1].eps) and pass "
                         f"that float to solver={solver!r}")


def positive_std(value, name: str = "noise_std"):
    """A finite float > 0, or a real floating tensor of them."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} tensor has dtype {value.dtype}; expected a real floating "
                            f"dtype")
        v = value.detach()
        if v.numel() == 0 or not bool(((v > 0) & (v < _INF)).all()):
            raise ValueError(f"{name} tensor must be finite and > 0 everywhere, got "
                             f"{v.tolist() if v.numel() <= 8 else tuple(v.shape)}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} is not valid; expected a finite float > 0 (the noise's "
                        f"standard deviation in image units) or None")
    v = float(value)
    if not (0 < v < _INF):
        raise ValueError(f"{name}={value!r} is not valid; expected a finite float > 0 (the noise's "
                         f"standard deviation in image units) or None")
    return v


def rcond(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"rcond={value!r} is not valid; expected None or a float in [0, 1)")
    v = float(value)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"rcond={value!r} is not valid; expected None or a float in [0, 1)")
    return v


def broadcasts_to(name: str, t, shape: Sequence[int], what: str) -> None:
    """``t`` (a tensor or None) broadcasts to ``shape`` without enlarging it."""
    if not isinstance(t, torch.Tensor):
        return
    ok = t.dim() <= len(shape) and all(a == 1 or a == b for a, b in
                                       zip(reversed(t.shape), reversed(tuple(shape))))
    if not ok:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to {what} of "
                         f"shape {tuple(shape)}")


def same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; "
                         f"expected both on the same device")


def reg(value, img_shape: Sequence[int]):
    if value is None:
        return None
    if isinstance(value, str):
        return choice("reg", value, REGS)
    if isinstance(value, torch.Tensor):
        kernel(value, tuple(img_shape[-2:]), name="reg")
        # A NaN in the kernel makes |R|^2 NaN at every frequency, where the
        # solve would silently fall back to the pseudo-inverse: refuse it (a
        # small kernel: one cheap reduction). Under torch.compile the plan
        # makes the result NaN instead (plans/circular.py, values_guard).
        if not torch.compiler.is_compiling() and not bool(reg_values_ok(value.detach())):
            v = value.detach()
            raise ValueError(f"reg kernel must be finite; got {int(torch.isnan(v).sum())} NaN "
                             f"and {int(torch.isinf(v).sum())} +-Inf of {v.numel()} values")
        return value
    raise TypeError(f"reg={value!r} is not valid; expected None, 'laplacian' or a kernel tensor")


# -- boundaries and exact solvers (deconv_ext.plans.padded / deconv_ext.solvers) --
SOLVERS = ("fft", "cg", "dct")
PADDINGS = ("same", "valid")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def taper(value) -> Optional[int]:
    """None, or an int in [0, MAX_SIDE] (a width in pixels)."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0
            or value > MAX_SIDE):
        raise ValueError(f"taper={value!r} is not valid; expected None or an int in "
                         f"[0, {MAX_SIDE}] (pixels)")
    return int(value)


def tol(value) -> float:
    """A finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"tol={value!r} is not valid; expected a float > 0")
    v = float(value)
    if not (0 < v < _INF):
        raise ValueError(f"tol={value!r} is not valid; expected a finite float > 0")
    return v


def max_iter(value) -> Optional[int]:
    """None (the default), or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"max_iter={value!r} is not valid; expected None or an int >= 1")
    return int(value)


# -- check_finite= (deconvolve / convolve / conv2d_pinv) --
def finite(name: str, value) -> None:
    """Raise ``ValueError`` if ``value`` (a floating tensor) holds NaN or +-Inf.

    Anything else (None, a non-tensor, an integer tensor) is left to the other
    checks, which say what was expected. Costs one pass over the tensor and a
    device sync; only called when the user asks (``check_finite=True``).
    """
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        n_nan = int(torch.isnan(value.detach()).sum())
        n_inf = int(bad.sum()) - n_nan
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} +-Inf, of "
                         f"{value.numel()} elements); expected finite values "
                         f"(check_finite=True)")


def plan_input(x, name: str, image_size: Tuple[int, int], like: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """An image for a plan made for ``image_size``, on ``like``'s device, computing in ``dtype``."""
    image(x, name)
    if tuple(x.shape[-2:]) != tuple(image_size):
        raise ValueError(f"{name} has spatial size {tuple(x.shape[-2:])}; this plan was made "
                         f"for {tuple(image_size)}")
    same_device(name, x, "the plan", like)
    if compute_dtype(x.dtype) != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the plan computes in {dtype}; "
                        f"use plan.to(dtype={compute_dtype(x.dtype)})")
    return x


# -- conv layers (conv2d_pinv, conv2d_svdvals, DeconvPlan.for_conv2d, LayerPlan, ConvPinv2d) --
class Layer(NamedTuple):
    """A checked conv layer: the weight, ``groups`` and ``dilation`` as ints, and the bias."""

    weight: torch.Tensor
    groups: int
    dilation: Tuple[int, int]
    bias: Optional[torch.Tensor]
    c_out: int
    c_in: int

    @property
    def depthwise(self) -> bool:
        """One input channel per group and as many groups as channels: element-wise per channel."""
        return self.groups == self.c_out and self.weight.shape[1] == 1


def groups(value, c_out: int) -> int:
    """A positive int (any integral type, not bool) dividing ``c_out``."""
    # ValueError for a float or bool too, as for every other bad groups value.
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
            or c_out % int(value)):
        raise ValueError(f"groups={value!r} is not valid; expected a positive int dividing "
                         f"C_out={c_out}")
    return int(value)


def scalar_eps(value, name: str = "eps") -> float:
    """A finite float >= 0 (layers take no per-frequency eps tensor)."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a scalar eps (a float >= 0) for conv layers; a "
                        f"per-frequency eps tensor is supported by deconvolve/DeconvPlan only")
    return eps(value, (1, 1), name)


def layer_eps(value, name: str = "eps"):
    """:func:`scalar_eps`, or the name of a parameter-choice rule (:data:`EPS_RULES`)."""
    if isinstance(value, str):
        return eps_or_rule(value, (1, 1), name)
    return scalar_eps(value, name)


def layer_rule_args(eps_value, noise_std):
    """``noise_std`` of a layer's solve, checked as :func:`eps_rule_args` checks it.

    A layer's rule is a Tikhonov solve with one eps per sample, so the rule
    arguments are those of ``deconvolve(..., method="tikhonov", eps_per="sample")``.
    """
    return eps_rule_args(eps_value, "tikhonov", noise_std, "sample")[0]


def conv_layer(weight, groups_, dilation, bias, size: Optional[Tuple[int, int]] = None) -> Layer:
    """Check a conv layer ``(weight, groups, dilation, bias)``, and that its dilated
    kernel fits in ``size`` (H, W) when given.

    weight : Tensor (C_out, C_in / groups, kh, kw), real floating
    bias : None or Tensor (C_out,), real floating, on the weight's device
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    dense("weight", weight)
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight has dtype {weight.dtype}; expected a real floating dtype")
    if weight.dim() != 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected 4 dims "
                         f"(C_out, C_in / groups, kh, kw)")
    c_out, c_in_g, kh, kw = weight.shape
    if min(c_out, c_in_g, kh, kw) < 1:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected every dim >= 1")
    g = groups(groups_, c_out)
    dil = pair("dilation", dilation)
    if size is not None and min(size) > 0:  # an empty image fits any kernel
        Dh, Dw = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
        if Dh > size[0] or Dw > size[1]:
            raise ValueError(f"input_size {tuple(size)} is smaller than the dilated kernel "
                             f"({Dh}x{Dw}, kernel {kh}x{kw}, dilation {dil}); expected H >= {Dh} "
                             f"and W >= {Dw}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be None or a torch.Tensor of shape ({c_out},), got "
                            f"{type(bias).__name__}")
        dense("bias", bias)
        if bias.dtype not in FLOAT_DTYPES:
            raise TypeError(f"bias has dtype {bias.dtype}; expected a real floating dtype")
        if tuple(bias.shape) != (c_out,):
            raise ValueError(f"bias must be a tensor of shape ({c_out},), got "
                             f"{tuple(bias.shape)}")
        same_device("bias", bias, "weight", weight)
    return Layer(weight, g, dil, bias, c_out, c_in_g * g)


def max_filter_bytes(value) -> Optional[int]:
    """None, or an int >= 0 (bytes)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"max_filter_bytes={value!r} is not valid; expected an int >= 0 "
                         f"(bytes) or None")
    return int(value)
