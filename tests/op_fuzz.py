"""Random good and bad arguments into every ``torch.ops.deconv_ext`` op.

Run as a script (``python tests/op_fuzz.py SEED N``), in a subprocess of
``tests/test_op_hardening.py``, so that a signal or a hang is a failure of
that test rather than of the suite. Before each case the script prints its
description (flushed), so a case that kills the process is named by the
last line.

Each case builds a valid call of one op (random sizes, odd and even, float32
or float64) and then, most of the time, changes one argument:

* **value-preserving** changes (a transposed-and-back or sliced view, a
  stride-0 broadcast, a lazily conjugated or negated view of the same values)
  must give the oracle's answer;
* **bad** changes (another dtype, a meta or sparse operand, a wrong or empty
  shape, an absurd integer, a stride-0 in-place output, a leaf that requires
  grad) must raise ``ValueError``, ``TypeError`` or ``RuntimeError`` with a
  message, or give the oracle's answer when the change happens to be valid;
* **non-finite** values (NaN, Inf) may give anything but a signal or hang.

The oracles are independent float64 torch/numpy/scipy expressions of each
op's contract (docs/architecture.md) and, for the gradient ops, autograd of
those expressions or the adjoint identity. Prints one JSON line per failing
case and exits with status 1 if there was any.
"""
from __future__ import annotations

import json
import random
import sys
import traceback

import numpy as np
import scipy.fft
import torch

import deconv_ext  # noqa: F401  (loads the ops)

ops = torch.ops.deconv_ext
C64, C128 = torch.complex64, torch.complex128
MODES = ("zeros", "reflect", "symmetric", "replicate", "circular")
NP_MODE = {"zeros": "constant", "reflect": "reflect", "symmetric": "symmetric",
           "replicate": "edge", "circular": "wrap"}


class Bad(Exception):
    """The case is invalid by construction: only an error is acceptable."""


# ---------------------------------------------------------------- tensors

def real(rng, shape, dtype, positive=False):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    if positive:
        t = t.abs() + 0.1
    return t.to(dtype)


def cplx(rng, shape, dtype):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.randn(shape, generator=g, dtype=dtype)


def same_values_other_layout(rng, t):
    """A tensor equal to ``t`` in value but not in memory layout; and its label."""
    kind = rng.choice(["transposed", "sliced", "conj", "neg", "channels_last"])
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2), kind
    if kind == "sliced" and t.dim() >= 1:
        big = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2], kind
    if kind == "conj" and t.is_complex():
        return t.conj().resolve_conj().conj(), kind
    if kind == "neg":
        return torch._neg_view((-t).clone()), kind
    if kind == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last), kind
    return t.clone(), "plain"


# ---------------------------------------------------------------- oracles

def o_solve(y, k, reg, eps, thresh, adjoint=False):
    """The fused solve's rule; ``eps`` and ``reg`` may be tensors requiring grad (for vjp).

    Where eps*reg = 0 and the frequency is kept, the derivative in eps is the
    one-sided one, d/dp conj(K) Y / (|K|^2 + p) at p = 0 (docs/architecture.md).
    """
    y, k = y.to(C128), k.to(C128)
    k2 = k.real ** 2 + k.imag ** 2
    p = eps * (reg.double() if reg is not None else 1.0) + torch.zeros_like(k2)
    den = k2 + p
    num = (k if adjoint else k.conj()) * y
    return torch.where((p > 0) | (k2 > thresh.double()), num / torch.where(den > 0, den, 1), 0)


def o_mul(y, k, conj):
    return (k.conj() if conj else k).to(C128) * y.to(C128)


def o_kernel_spectrum(psf, h, w):
    kh, kw = psf.shape[-2:]
    placed = torch.nn.functional.pad(psf.double(), (0, w - kw, 0, h - kh))
    return torch.fft.rfft2(torch.roll(placed, (-(kh // 2), -(kw // 2)), (-2, -1)))


def o_pad(x, top, left, h, w, mode):
    """numpy's pad, one axis at a time, then the window at (-top, -left)."""
    a = x.double().numpy()
    for axis, off, n in ((-2, top, h), (-1, left, w)):
        size = a.shape[axis]
        before, after = max(off, 0), max(n - off - size, 0)
        widths = [(0, 0)] * a.ndim
        widths[axis] = (before, after)
        # numpy cannot reflect a 1-pixel axis: its one value repeats.
        m = "edge" if mode == "reflect" and size == 1 else NP_MODE[mode]
        a = np.take(np.pad(a, widths, mode=m), range(before - off, before - off + n), axis=axis)
    return torch.from_numpy(np.ascontiguousarray(a))


def o_channel_mix(y, g, adjoint):
    groups, M, N = g.shape[:3]
    y, g = y.to(C128), g.to(C128)
    lead = y.shape[:-3]
    yg = y.reshape(*lead, groups, M if adjoint else N, *y.shape[-2:])
    if adjoint:
        out = torch.einsum("gmnhw,...gmhw->...gnhw", g.conj(), yg)
    else:
        out = torch.einsum("gmnhw,...gnhw->...gmhw", g, yg)
    return out.reshape(*lead, -1, *y.shape[-2:])


def o_channel_mix_outer(a, c, groups):
    a, c = a.to(C128), c.to(C128)
    M, N = a.shape[-3] // groups, c.shape[-3] // groups
    ag = a.reshape(-1, groups, M, *a.shape[-2:])
    cg = c.reshape(-1, groups, N, *c.shape[-2:])
    return torch.einsum("bgmhw,bgnhw->gmnhw", ag, cg.conj())


def o_dct_solve(image, filt):
    x = scipy.fft.dctn(image.double().numpy(), axes=(-2, -1), norm="ortho")
    return torch.from_numpy(scipy.fft.idctn(x * filt.double().numpy(), axes=(-2, -1),
                                            norm="ortho"))


def o_deconv2d(image, k, reg, eps, thresh, adjoint):
    X = o_solve(torch.fft.rfft2(image.double()), k, reg, eps, thresh, adjoint)
    return torch.fft.irfft2(X, s=image.shape[-2:])


def o_filter2d(x, k, conj):
    return torch.fft.irfft2(o_mul(torch.fft.rfft2(x.double()), k, conj), s=x.shape[-2:])


def vjp(f, inputs, grad):
    """Autograd of the float64 oracle ``f`` at ``inputs`` (complex-aware)."""
    leaves = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64)
              .requires_grad_() for t in inputs]
    out = f(*leaves)
    g = grad.to(out.dtype)
    return torch.autograd.grad(out, leaves, g, allow_unused=True)


# ---------------------------------------------------------------- op specs
# Each spec draws a valid call: (args, kwargs-free), the oracle's answer, and
# which positions are tensors an argument mutation may touch.

def dims(rng):
    return rng.choice([3, 4, 5, 6, 7, 8]), rng.choice([3, 4, 5, 6, 7, 8])


def lead(rng):
    return rng.choice([(), (2,), (1, 2), (3,)])


def spec_spectral_solve(rng, dt, name):
    h, w = dims(rng)
    shape = (*lead(rng), h, w)
    ct = C64 if dt == torch.float32 else C128
    y = cplx(rng, shape, ct)
    k = cplx(rng, rng.choice([shape[-2:], shape]), ct)
    reg = real(rng, (h, w), dt, positive=True) if rng.random() < 0.5 else None
    eps = rng.choice([0.0, 1e-3, 0.1, 2.0])
    thresh = torch.tensor(rng.choice([0.0, 0.05, 0.5]), dtype=dt)
    args = [y, k, reg, eps, thresh]
    if name == "spectral_solve_backward":
        g = cplx(rng, shape, ct)
        def oracle(g, y, k, reg, eps, thresh):
            if reg is None:
                e = torch.tensor(eps, dtype=torch.float64)
                gk, ge = vjp(lambda k_, e_: o_solve(y, k_, None, e_, thresh), [k, e], g)
                return gk, ge
            gk, gr = vjp(lambda k_, r_: o_solve(y, k_, r_, eps, thresh), [k, reg], g)
            return gk, gr
        return "spectral_solve_backward", [g] + args, oracle
    adjoint = name == "spectral_solve_adjoint"
    return name, args, lambda y, k, reg, eps, thresh: o_solve(y, k, reg, eps, thresh, adjoint)


def spec_spectral_mul(rng, dt, name):
    h, w = dims(rng)
    shape = (*lead(rng), h, w)
    ct = C64 if dt == torch.float32 else C128
    y = cplx(rng, shape, ct)
    kshape = rng.choice([shape[-2:], shape])
    k = cplx(rng, kshape, ct)
    conj = rng.random() < 0.5
    if name == "spectral_mul_grad_k":
        g = cplx(rng, shape, ct)
        return name, [g, y, list(kshape), conj], \
            lambda g, y, ks, conj: vjp(lambda k_: o_mul(y, k_, conj), [k], g)[0]
    return name, [y, k, conj], o_mul


def spec_pipeline(rng, dt, name):
    h, w = dims(rng)
    shape = (*lead(rng), h, w)
    ct = C64 if dt == torch.float32 else C128
    image = real(rng, shape, dt)
    k = cplx(rng, (h, w // 2 + 1), ct)
    if name in ("filter2d", "filter2d_grad_k"):
        conj = rng.random() < 0.5
        if name == "filter2d":
            return name, [image, k, conj], o_filter2d
        g = real(rng, shape, dt)
        return name, [g, image, [h, w // 2 + 1], conj], \
            lambda g, x, ks, conj: vjp(lambda k_: o_filter2d(x, k_, conj), [k], g)[0]
    reg = real(rng, (h, w // 2 + 1), dt, positive=True) if rng.random() < 0.5 else None
    eps = rng.choice([1e-3, 0.1, 1.0])  # > 0: the pinv branch's mask is not smooth in k
    thresh = torch.tensor(0.0, dtype=dt)
    adjoint = rng.random() < 0.5
    if name == "deconv2d":
        return name, [image, k, reg, eps, thresh, adjoint], o_deconv2d
    g = real(rng, shape, dt)

    def oracle(g, image, k, reg, eps, thresh, adjoint):
        f = (lambda k_, r_: o_deconv2d(image, k_, r_, eps, thresh, adjoint)) if reg is not None \
            else (lambda k_, e_: o_deconv2d(image, k_, None, e_, thresh, adjoint))
        second = reg if reg is not None else torch.tensor(eps, dtype=torch.float64)
        return vjp(f, [k, second], g)
    return name, [g, image, k, reg, eps, thresh, adjoint], oracle


def spec_padded(rng, dt, name):
    h, w = dims(rng)
    shape = (*lead(rng), h, w)
    top, left = rng.randrange(0, 4), rng.randrange(0, 4)
    H, W = h + top + rng.randrange(0, 4), w + left + rng.randrange(0, 4)
    mode = rng.choice(MODES)
    ct = C64 if dt == torch.float32 else C128
    image = real(rng, shape, dt)
    k = cplx(rng, (H, W // 2 + 1), ct)
    reg = real(rng, (H, W // 2 + 1), dt, positive=True) if rng.random() < 0.5 else None
    eps = rng.choice([1e-3, 0.1])
    thresh = torch.tensor(0.0, dtype=dt)

    def oracle(image, top, left, H, W, mode, k, reg, eps, thresh):
        buf = o_pad(image, top, left, H, W, mode)
        x = o_deconv2d(buf, k, reg, eps, thresh, False)
        return x[..., top: top + image.shape[-2], left: left + image.shape[-1]]
    return name, [image, top, left, H, W, mode, k, reg, eps, thresh], oracle


def spec_pad(rng, dt, name):
    h, w = dims(rng)
    shape = (*lead(rng), h, w)
    x = real(rng, shape, rng.choice([dt, torch.float16, torch.bfloat16]))
    top, left = rng.randrange(-3, 6), rng.randrange(-3, 6)
    H, W = rng.randrange(1, 14), rng.randrange(1, 14)
    mode = rng.choice(MODES)
    if name == "pad":
        return name, [x, top, left, H, W, mode], o_pad
    g = real(rng, (*shape[:-2], H, W), dt)

    # Adjoint identity: <pad(x), g> = <x, pad_backward(g)> for every x, so the
    # answer is the gradient of that inner product, computed by the oracle pad.
    def oracle(g, top, left, h_, w_, mode):
        xs = torch.zeros((*g.shape[:-2], h_, w_), dtype=torch.float64)
        return vjp(lambda x_: o_pad_t(x_, top, left, *g.shape[-2:], mode), [xs], g)[0]
    return name, [g, top, left, h, w, mode], oracle


def o_pad_t(x, top, left, h, w, mode):
    """The oracle pad as an index gather (differentiable)."""
    H, W = x.shape[-2:]
    rows = o_pad(torch.arange(1.0, H + 1)[:, None], top, 0, h, 1, mode)[:, 0].long() - 1
    cols = o_pad(torch.arange(1.0, W + 1)[None, :], 0, left, 1, w, mode)[0].long() - 1
    valid = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    out = x[..., rows.clamp(min=0)[:, None], cols.clamp(min=0)[None, :]]
    return torch.where(valid, out, 0)


def spec_crop(rng, dt, name):
    h, w = dims(rng)
    x = real(rng, (*lead(rng), h, w), rng.choice([dt, torch.float16]))
    top, left = rng.randrange(0, h), rng.randrange(0, w)
    hh, ww = rng.randrange(0, h - top + 1), rng.randrange(0, w - left + 1)
    dtype = rng.choice([torch.float32, torch.float64, torch.float16])
    return name, [x, top, left, hh, ww, dtype], \
        lambda x, t, l, hh, ww, d: x[..., t: t + hh, l: l + ww].double()


def spec_kernel_spectrum(rng, dt, name):
    h, w = dims(rng)
    kh, kw = rng.randrange(1, h + 1), rng.randrange(1, w + 1)
    psf = real(rng, (*lead(rng), kh, kw), dt)
    if name == "kernel_spectrum":
        return name, [psf, h, w], o_kernel_spectrum
    ct = C64 if dt == torch.float32 else C128
    g = cplx(rng, (*psf.shape[:-2], h, w // 2 + 1), ct)

    def oracle(g, kh, kw, h, w):
        p = torch.zeros((*g.shape[:-2], kh, kw), dtype=torch.float64)
        return vjp(lambda p_: o_kernel_spectrum(p_, h, w), [p], g)[0]
    return name, [g, kh, kw, h, w], oracle


def spec_power(rng, dt, name):
    h, w = dims(rng)
    ct = C64 if dt == torch.float32 else C128
    k = cplx(rng, (*lead(rng), h, w), ct)
    if name == "spectral_power":
        return name, [k], lambda k: k.abs().double() ** 2
    g = real(rng, k.shape, dt)
    return name, [g, k], \
        lambda g, k: vjp(lambda k_: k_.real ** 2 + k_.imag ** 2, [k], g)[0]


def spec_channel_mix(rng, dt, name):
    h, w = dims(rng)
    ct = C64 if dt == torch.float32 else C128
    groups, M, N = rng.choice([1, 2]), rng.choice([1, 2, 3]), rng.choice([1, 2, 3])
    b = lead(rng)
    if name == "channel_mix":
        adjoint = rng.random() < 0.5
        g = cplx(rng, (groups, M, N, h, w), ct)
        y = cplx(rng, (*b, groups * (M if adjoint else N), h, w), ct)
        return name, [y, g, adjoint], o_channel_mix
    a = cplx(rng, (*b, groups * M, h, w), ct)
    c = cplx(rng, (*b, groups * N, h, w), ct)
    return name, [a, c, groups], o_channel_mix_outer


def spec_dct(rng, dt, name):
    h, w = dims(rng)
    image = real(rng, (*lead(rng), h, w), dt)
    filt = real(rng, (h, w), dt)
    return name, [image, filt], o_dct_solve


def spec_solve_inplace(rng, dt, name):
    _, args, _ = spec_spectral_solve(rng, dt, "spectral_solve")
    return name, args, lambda y, k, reg, eps, thresh: o_solve(y, k, reg, eps, thresh)


SPECS = {
    "spectral_solve": spec_spectral_solve,
    "spectral_solve_adjoint": spec_spectral_solve,
    "spectral_solve_": spec_solve_inplace,
    "spectral_solve_backward": spec_spectral_solve,
    "spectral_mul": spec_spectral_mul,
    "spectral_mul_grad_k": spec_spectral_mul,
    "deconv2d": spec_pipeline,
    "deconv2d_grad_k": spec_pipeline,
    "filter2d": spec_pipeline,
    "filter2d_grad_k": spec_pipeline,
    "kernel_spectrum": spec_kernel_spectrum,
    "kernel_spectrum_backward": spec_kernel_spectrum,
    "spectral_power": spec_power,
    "spectral_power_backward": spec_power,
    "pad": spec_pad,
    "pad_backward": spec_pad,
    "crop": spec_crop,
    "channel_mix": spec_channel_mix,
    "channel_mix_outer": spec_channel_mix,
    "padded_deconv2d": spec_padded,
    "dct_solve": spec_dct,
}


# ---------------------------------------------------------------- mutations

OTHER_DTYPES = (torch.float16, torch.float32, torch.float64, C64, C128, torch.int64, torch.bool)
# Integer arguments that are absurd (or, for some ops, valid: -1 as an offset).
# Not 2**31: a buffer that large may fit in memory and take minutes to fill.
ODD_INTS = (-1, -(2**40) - 1, 0, 2**62, -(2**62))


def mutate(rng, name, args):
    """Change one argument; returns (args, label, expectation).

    expectation: "same" (value-preserving: the oracle's answer for the
    original arguments), "valid" (the oracle's answer for the changed
    arguments), "error" (only an error is acceptable), "checked"
    (an error, or the oracle's answer for the changed arguments when they are
    valid after all) or "nonfinite" (anything but a signal or hang).
    """
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    ints = [i for i, a in enumerate(args) if isinstance(a, int) and not isinstance(a, bool)]
    floats = [i for i, a in enumerate(args) if isinstance(a, float)]
    strs = [i for i, a in enumerate(args) if isinstance(a, str)]
    kind = rng.choice(["layout"] * 3 + ["dtype", "meta", "sparse", "shape", "empty", "nonfinite",
                                        "int", "eps", "mode", "requires_grad", "expand"])
    args = list(args)
    written = name == "spectral_solve_"  # its first argument is written in place
    if kind in ("int", "eps", "mode") or not tensors:
        pool = {"int": ints, "eps": floats, "mode": strs}.get(kind, [])
        if not pool:
            return args, "none", "same"
        i = pool[0] if kind != "int" else rng.choice(pool)
        if kind == "int":
            args[i] = rng.choice(ODD_INTS)
        elif kind == "eps":
            args[i] = rng.choice([-1.0, float("nan"), float("inf"), 1e-310, 1e300])
            return args, f"eps = {args[i]}", "error" if not 0 <= args[i] < float("inf") \
                else "checked"
        else:
            args[i] = rng.choice(["", "wrap", "Reflect", "zeros\0"])
            return args, f"mode = {args[i]!r}", "error"
        return args, f"arg{i} = {args[i]}", "checked"
    i = rng.choice(tensors)
    t = args[i]
    if kind == "layout":
        args[i], lab = same_values_other_layout(rng, t)
        lazy_on_output = written and i == 0 and (args[i].is_neg() or args[i].is_conj())
        # A lazy bit on the written tensor: refused, or resolved and written
        # back by the dispatcher's conjugate/negative fallback.
        return args, f"arg{i} {lab}", "checked" if lazy_on_output else "same"
    if kind == "dtype":
        d = rng.choice([d for d in OTHER_DTYPES if d != t.dtype])
        args[i] = t.to(d) if not (t.is_complex() and not d.is_complex) else t.real.to(d)
        return args, f"arg{i} as {d}", "checked"
    if kind == "meta":
        args[i] = t.to("meta")
        # Beside another CPU tensor (other than a 0-dim scalar) a meta operand
        # is an error; alone it is a shape computation (the fake kernel).
        others = [j for j in tensors if j != i and args[j].dim() > 0]
        return args, f"arg{i} on meta", "error" if others else "meta"
    if kind == "sparse":
        if t.dim() == 0:
            return args, "none", "same"
        args[i] = t.to_sparse()
        return args, f"arg{i} sparse", "error"
    if kind == "shape":
        shape = list(t.shape) or [1]
        shape[rng.randrange(len(shape))] += rng.choice([1, 2])
        args[i] = torch.ones(shape, dtype=t.dtype)
        return args, f"arg{i} shape {shape}", "checked"
    if kind == "empty":
        shape = list(t.shape) or [1]
        shape[rng.randrange(len(shape))] = 0
        args[i] = torch.empty(shape, dtype=t.dtype)
        return args, f"arg{i} empty {shape}", "checked"
    if kind == "nonfinite":
        v = t.clone()
        if v.numel():
            v.view(-1)[rng.randrange(v.numel())] = rng.choice([float("nan"), float("inf")])
        args[i] = v
        return args, f"arg{i} non-finite", "nonfinite"
    if kind == "requires_grad":
        if not (t.is_floating_point() or t.is_complex()):
            return args, "none", "same"
        args[i] = t.clone().requires_grad_()
        return args, f"arg{i} requires grad", "error" if written and i == 0 else "same"
    # expand: one row repeated by a stride 0, valid for an input, not for
    # the tensor written in place.
    if t.dim() >= 1 and t.shape[0] > 1:
        args[i] = t[:1].clone().expand(t.shape)
        return args, f"arg{i} expanded", "error" if written and i == 0 else "valid"
    return args, "none", "same"


# ---------------------------------------------------------------- checks

def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def copy_args(args):
    return [a.detach().clone() if isinstance(a, torch.Tensor) and a.layout == torch.strided
            and a.device.type == "cpu" else a for a in args]


def compare(got, want, dt):
    """None when the op's outputs ``got`` equal the oracle's ``want``, else what differs."""
    got, want = as_tuple(got), as_tuple(want)
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for j, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        half = g.dtype in (torch.float16, torch.bfloat16)
        low = dt in (torch.float32, C64, torch.float16, torch.bfloat16) or g.dtype in (
            torch.float32, C64)
        tol = 1e-2 if half else 2e-3 if low else 1e-9
        if tuple(g.shape) != tuple(w.shape):
            return f"output {j}: shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if g.numel() == 0:
            continue
        g = g.detach().to(torch.complex128)
        w = w.detach().to(torch.complex128)
        if not torch.isfinite(g).all():
            return f"output {j}: non-finite values from finite input"
        err = (g - w).abs().max().item()
        scale = max(w.abs().max().item(), 1.0)
        if not err <= tol * scale:
            return f"output {j}: max error {err:.3g} (scale {scale:.3g})"
    return None


def lowest_dtype(args, dt):
    for a in args:
        if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16, C64,
                                                       torch.float32):
            return torch.float32
    return dt


def run_case(rng, index):
    name = rng.choice(sorted(SPECS))
    dt = rng.choice([torch.float32, torch.float64])
    name, args, oracle = SPECS[name](rng, dt, name)
    clean = copy_args(args)
    if rng.random() < 0.75:
        args, label, expect = mutate(rng, name, args)
    else:
        label, expect = "none", "same"
    changed = copy_args(args)
    desc = {"case": index, "op": name, "dtype": str(dt), "change": label}
    print("CASE " + json.dumps(desc), flush=True)
    try:
        out = getattr(ops, name)(*args)
    except (ValueError, TypeError, RuntimeError, IndexError, NotImplementedError) as exc:
        msg = str(exc).strip()
        if not msg:
            return {**desc, "problem": f"{type(exc).__name__} without a message"}
        if expect in ("same", "valid"):
            return {**desc, "problem": f"valid call raised {type(exc).__name__}: {msg[:300]}"}
        if isinstance(exc, IndexError):
            return {**desc, "problem": f"{type(exc).__name__} (not a clear error): {msg[:300]}"}
        # NotImplementedError (a RuntimeError) is the dispatcher's answer for
        # a backend no kernel is registered for: it names the op and backend.
        return None
    except Exception as exc:  # anything else is not a clear error
        return {**desc, "problem": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if name == "spectral_solve_":
        out = args[0]
    if expect == "nonfinite":
        return None
    if expect == "error":
        return {**desc, "problem": "a result instead of an error"}
    if expect == "meta":  # the op's only tensor on meta: the fake kernel's shape
        want = as_tuple(oracle(*clean))
        got = as_tuple(out)
        if [tuple(g.shape) for g in got] != [tuple(w.shape) for w in want] or \
                any(g.device.type != "meta" for g in got):
            return {**desc, "problem": "meta result of the wrong shape or device"}
        return None
    if expect in ("checked", "valid"):
        try:
            want = oracle(*changed)
        except Exception as exc:
            if all(o.numel() == 0 for o in as_tuple(out)):
                return None  # an empty batch in, empty out (torch.fft refuses to plan it)
            return {**desc, "problem": "a result for arguments outside the contract "
                    f"(the oracle refuses them: {type(exc).__name__}: {str(exc)[:120]})"}
        problem = compare(out, want, lowest_dtype(changed, dt))
    else:
        problem = compare(out, oracle(*clean), dt)
    return {**desc, "problem": problem} if problem else None


def main(seed: int, n: int) -> int:
    rng = random.Random(seed)
    failures = 0
    for i in range(n):
        try:
            result = run_case(rng, i)
        except Exception:  # a bug of this script: report, do not hide
            result = {"case": i, "problem": "fuzz script error: " + traceback.format_exc()[-400:]}
        if result:
            failures += 1
            print("FAIL " + json.dumps(result), flush=True)
    print(f"DONE {n} cases, {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
