"""``conv2d_pinv`` for "valid", a non-circular ``padding_mode``, ``solver="cg"``, or eps
chosen by a rule."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import validation as V
from ..maths import spectral
from ..plans import DeconvPlan, cache
from .cg import DEFAULT_MAX_ITER, Problem, residual_info
from .operators import Conv2dLayerOperator, ConvOperator
from .precond import PRECONDS, auto_precond, make_precond

__all__ = ["conv2d_exact", "conv2d_chosen"]


def conv2d_chosen(output: torch.Tensor, layer: V.Layer, rule: str, rcond, noise_std,
                  return_info: bool):
    """``conv2d_pinv`` of a circular "same" layer with ``eps=<rule>`` (validated inputs).

    The layer's plan (:meth:`DeconvPlan.for_conv2d`, cached by weight and
    settings) chooses one eps per sample on every call. Returns ``x``, or
    ``(x, SolveInfo)`` with the normal-equations residual of the direct
    solve (0 iterations) and the choice (``eps``, ``objective``, ``rule``,
    ``noise_std``, one entry per sample).
    """
    size = tuple(output.shape[-2:])
    dtype = spectral.compute_dtype(output.dtype)
    plan = cache.cached_plan(
        layer.weight, ("layer", size, dtype, layer.groups, layer.dilation, layer.bias, rule,
                       rcond, noise_std),
        lambda: DeconvPlan._for_layer(layer._replace(weight=layer.weight.to(dtype)), size, rule,
                                      rcond, noise_std))
    x, chosen = plan(output, return_info=True)
    if not return_info:
        return x
    y = output.to(dtype)
    if layer.bias is not None:
        y = y - layer.bias.to(dtype)[:, None, None]
    op = Conv2dLayerOperator(layer.weight, size, layer.groups, layer.dilation, "same",
                             "circular", dtype)
    eps = chosen.eps.to(dtype).reshape(*chosen.eps.shape, 1, 1, 1)
    with torch.no_grad():
        info = residual_info(op, y, x.to(dtype), eps, None, "fft")
    info = dataclasses.replace(info, eps=chosen.eps, objective=chosen.objective,
                               rule=chosen.rule, noise_std=chosen.noise_std)
    return x, info


def conv2d_exact(output: torch.Tensor, layer: V.Layer, padding: str, padding_mode: str,
                 eps: float, rcond, solver: str, tol: float, max_iter: Optional[int],
                 precond: str, return_info: bool):
    """``conv2d_pinv`` for "valid", non-circular ``padding_mode`` or ``solver="cg"``.

    Forward model (stride 1, ``F.conv2d`` semantics)::

        padding="same":  output = F.conv2d(pad_m(input), weight, bias, dilation=d, groups=g)
        padding="valid": output = F.conv2d(input, weight, bias, dilation=d, groups=g)

    with ``pad_m`` the "same" padding (total ``d (k - 1)``, smaller half
    first) by ``padding_mode`` m; "valid" inputs are ``d (k - 1)`` larger than
    the output. ``solver="cg"`` (default here) solves
    ``min ||A x - (output - bias)||^2 + eps ||x||^2`` exactly (``eps = 0``:
    minimum-norm least squares by plain CGLS): depthwise layers by FFT
    (:class:`~deconv_ext.solvers.operators.ConvOperator`, per-channel systems),
    other layers with ``F.conv2d`` / ``F.conv_transpose2d``
    (:class:`~deconv_ext.solvers.operators.Conv2dLayerOperator`, one system per
    sample). ``solver="fft"``: the padded fast approximation, depthwise
    "same" layers only.
    """
    weight, bias, groups, dil = layer.weight, layer.bias, layer.groups, layer.dilation
    H, W = output.shape[-2:]
    dtype = spectral.compute_dtype(output.dtype)
    batched = output.dim() == 4
    y = (output if batched else output.unsqueeze(0)).to(dtype)
    if bias is not None:
        y = y - bias.to(dtype)[:, None, None]
    depthwise = layer.depthwise
    psf = spectral.conv2d_kernel_as_psf(weight[:, 0].to(dtype), dil) if depthwise else None
    boundary = "valid" if padding == "valid" else padding_mode
    if solver == "fft":
        if not depthwise or padding == "valid":
            raise ValueError("solver='fft' for conv2d_pinv with a non-circular padding_mode is the "
                             "padded fast path of depthwise 'same' layers only; use solver='cg'")
        plan = DeconvPlan(psf, (H, W), eps=eps, method="tikhonov", rcond=rcond, dtype=dtype,
                          boundary=padding_mode)
        x = plan(y)
        info = residual_info(ConvOperator(psf, (H, W), boundary, dtype), y, x, eps, None,
                              "fft") if return_info else None
    else:
        if precond not in ("auto", "none") and not depthwise:
            raise ValueError(f"precond={precond!r} needs a depthwise layer (the transform "
                             f"preconditioners are per channel); use 'auto' or 'none'")
        # As in solvers/boundary.py: CG on the weight times 2^k and the output
        # times 2^m (exact), for u = 2^(m - k) x; float32 norms of extreme
        # scales would overflow.
        k, m = spectral.scale_exponent(weight), spectral.scale_exponent(y)
        eps_s = eps * 4.0 ** k
        if depthwise:
            psf = psf * 2.0 ** k
            op = ConvOperator(psf, (H, W), boundary, dtype)
            pname = (auto_precond(boundary, psf) if precond == "auto"
                     else (None if precond == "none" else precond))
        else:
            op = Conv2dLayerOperator(weight * 2.0 ** k, (H, W), groups, dil, padding,
                                     padding_mode, dtype)
            pname = None
        if eps == 0:
            pname = None  # minimum norm: plain CGLS from 0 (see cgls)
        pc = make_precond(pname, psf, op.in_size, eps_s, None, dtype)
        problem = Problem(op, eps_s, None, pc, tol,
                           DEFAULT_MAX_ITER if max_iter is None else max_iter)
        u, info = problem.run(y * 2.0 ** m)
        x = u * 2.0 ** (k - m)
    if not batched:
        x = x.squeeze(0)
        if info is not None:
            info.iterations, info.residual, info.converged = (
                t.squeeze(0) for t in (info.iterations, info.residual, info.converged))
            if info.error is not None:
                info.error = info.error.squeeze(0)
    x = x.to(output.dtype)
    return (x, info) if return_info else x
