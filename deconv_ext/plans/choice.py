"""Plans that choose eps per call: the circular solve with a parameter-choice rule.

A plan made with ``eps="gcv"`` (or another rule of
:mod:`deconv_ext.maths.parameter_choice`) holds the operator's half of the
rule sums (:class:`~deconv_ext.maths.parameter_choice.RuleBins`, built once
from ``|K|^2`` and ``|R|^2``). A call transforms the image once, bins
``|Y|^2``, chooses one eps per system, and solves with it: the per-system
eps enters the fused solve as its regulariser operand ``eps[..., None, None]
* |R|^2`` (``eps`` alone for ``reg=None``) with the op's scalar eps 1, so the
choice adds no FFT and no second solve.

A :class:`~deconv_ext.LayerPlan` with a rule holds the squared singular
values of every ``K(w)`` binned the same way
(:func:`~deconv_ext.maths.parameter_choice.svd_bins`); a call projects the
data on the left singular vectors, ``z = U^H Y``, and
:func:`choose_layer` chooses one eps per sample from ``|z|^2`` and the
power outside the range of ``K(w)``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import execution
from .. import validation as V
from ..maths import parameter_choice as pc
from . import padded, spectra

__all__ = ["operator_bins", "system_dims", "check_systems", "circular_solve", "padded_solve",
           "reg_operand", "empty", "choose_layer", "empty_layer"]


def operator_bins(plan, power) -> None:
    """The rule sums' operator half (``plan._bins``, and ``plan._prior_bins`` for
    a non-circular boundary) from the plan's spectrum and ``|R|^2``."""
    size = plan.fft_size
    k2 = spectra.power(plan.spectrum.detach())
    if plan.boundary != "circular":
        plan._bins, plan._prior_bins = pc.padded_bins(k2, power, size,
                                                      r2_is_laplacian=plan.reg == "laplacian")
        return
    weights = pc.half_spectrum_weights(size[1], device=k2.device)
    plan._bins = pc.RuleBins(k2, power, weights, n_pix=size[0] * size[1], risk=plan.rule == "risk",
                             size=size)
    plan._prior_bins = None


def system_dims(plan, image: torch.Tensor) -> int:
    """Trailing dims of ``image`` that form one system: 2 (a plane) or 3 (a sample)."""
    return 3 if plan.eps_per == "sample" and image.dim() >= 3 else 2


def check_systems(plan, image: torch.Tensor) -> None:
    """A tensor ``noise_std`` broadcasts to one value per system of ``image``."""
    if isinstance(plan.noise_std, torch.Tensor):
        lead = tuple(image.shape[:-system_dims(plan, image)])
        V.broadcasts_to("noise_std", plan.noise_std, lead,
                        f"one value per {'sample' if plan.eps_per == 'sample' else 'plane'}")


def reg_operand(plan, eps: torch.Tensor, gdims: int) -> torch.Tensor:
    """The solve's regulariser operand for per-system ``eps`` (shape ``image.shape[:-gdims]``)."""
    e = eps.to(plan.dtype).reshape(*eps.shape, *([1] * gdims))
    return e if plan._reg_power is None else e * plan._reg_power


def choose(plan, bins: pc.RuleBins, Y: torch.Tensor, size, gdims: int) -> pc.EpsChoice:
    """The rule's eps per system from the half spectrum ``Y`` (no gradient)."""
    noise = plan.noise_std
    if isinstance(noise, torch.Tensor):
        noise = noise.detach().to(torch.float64)
    rule = pc.resolve(plan.rule, bins)
    with torch.no_grad():
        # The data's half of the rule sums in one pass over Y (multi-threaded:
        # it reads the whole spectrum).
        Y = Y.detach()
        hist = bins.power_hist(Y, rule == "risk", execution.RULE_KERNELS.bin_power)
        # The search runs on a few thousand bins: one intra-op thread (two
        # stall at every barrier when the cores are shared, measured 8x
        # slower under load; see execution.threads).
        with execution.single_threaded():
            return pc.choose_from_bins(bins, Y, rule, size=size, gdims=gdims, noise_std=noise,
                                       hist=hist, kernels=execution.RULE_KERNELS)


def circular_solve(plan, image: torch.Tensor):
    """``(x, EpsChoice)``: the circular solve of ``image`` with eps chosen per system."""
    y = image.to(plan.dtype)
    if plan.bias is not None:
        y = y - plan.bias[:, None, None]
    gdims = system_dims(plan, image)
    out = {}

    def pick(Y):
        out["choice"] = c = choose(plan, plan._bins, Y, plan.image_size, gdims)
        if c.eps.numel() == 1:
            # One system: the op's scalar eps times the plan's |R|^2 (no
            # spectrum-sized operand), kept within the dtype's normal range.
            info = torch.finfo(plan.dtype)
            return plan._reg_power, min(max(float(c.eps), info.tiny), info.max)
        return reg_operand(plan, c.eps, gdims), 1.0

    x = execution.deconv2d_chosen(y, plan.spectrum, plan.thresh, pick)
    return x.to(image.dtype), out["choice"]


def padded_solve(plan, image: torch.Tensor):
    """``(x, EpsChoice)``: the padded fast path of ``image`` with eps chosen per system.

    The buffer's spectrum, computed once, serves both the choice
    (:func:`~deconv_ext.maths.parameter_choice.choose_padded_from_bins`: the
    window's transform and the two of the padded data's inconsistency) and
    the solve with the chosen eps.
    """
    geo = plan.geometry
    gdims = system_dims(plan, image)
    noise = plan.noise_std
    if isinstance(noise, torch.Tensor):
        noise = noise.detach().to(torch.float64)
    out = {}

    def pick(Y):
        # All threads: the choice's cost here is three FFTs of the buffer and
        # their binning (one thread took 0.77 ms per FFT at 540^2 against
        # 0.41 ms with two); its searches run in C++ on the CPU, and torch's
        # small operations on a few thousand bins stay on the calling thread.
        with torch.no_grad():
            out["choice"] = c = pc.choose_padded_from_bins(
                plan._bins, plan._prior_bins, image.detach(), Y, plan.spectrum.detach(),
                plan._reg_power, plan.rule, geometry=geo, psf_size=tuple(plan.psf.shape[-2:]),
                extend=lambda x: padded.extend(plan, x), gdims=gdims, noise_std=noise,
                kernels=execution.RULE_KERNELS)
        return reg_operand(plan, c.eps, gdims), 1.0

    x = execution.deconv2d_chosen(padded.extend(plan, image.to(plan.dtype)), plan.spectrum,
                                   plan.thresh, pick)
    return execution.crop(x, geo.top, geo.left, geo.height, geo.width, image.dtype), out["choice"]


def empty(plan, image: torch.Tensor) -> pc.EpsChoice:
    """The :class:`EpsChoice` of an empty batch (no system, or systems of no pixel)."""
    lead = tuple(image.shape[:-system_dims(plan, image)])
    dev = image.device
    eps = torch.full(lead, pc.FALLBACK_EPS, dtype=torch.float64, device=dev)
    return pc.EpsChoice(eps, torch.zeros(lead, dtype=torch.float64, device=dev),
                        pc.resolve(plan.rule), None, plan.eps_per)


def choose_layer(plan, z: torch.Tensor, perp) -> pc.EpsChoice:
    """A layer plan's eps per sample (no gradient).

    ``z`` (..., groups * k, H, Wf) complex: ``U^H Y`` per frequency, the
    channel order of ``plan._s2``'s last axis; ``perp`` (..., H, Wf) real or
    None: ``||Y - U U^H Y||^2`` per frequency.
    """
    y2 = spectra.power(z.detach()).to(torch.float64).movedim(-3, -1)
    noise = plan.noise_std
    if isinstance(noise, torch.Tensor):
        noise = noise.detach().to(torch.float64)
    with torch.no_grad(), execution.single_threaded():
        return pc.choose_svd_from_bins(plan._bins, plan._s2, y2, plan.rule, size=plan.image_size,
                                       n_out=plan.c_out,
                                       y2_perp=None if perp is None else perp.detach(),
                                       noise_std=noise)


def empty_layer(plan, output: torch.Tensor) -> pc.EpsChoice:
    """The :class:`EpsChoice` of a layer plan's empty batch (one entry per sample)."""
    lead = tuple(output.shape[:-3])
    dev = output.device
    eps = torch.full(lead, pc.FALLBACK_EPS, dtype=torch.float64, device=dev)
    return pc.EpsChoice(eps, torch.zeros(lead, dtype=torch.float64, device=dev),
                        pc.resolve(plan.rule, plan._bins), None, "sample")
