"""Plans: the spectra of one kernel (or layer) at one size, built once, applied many times.

:class:`DeconvPlan` (element-wise per frequency: PSFs, depthwise layers) and
:class:`LayerPlan` (one small matrix per frequency: multi-channel layers) are
siblings under :class:`Plan` (solve, blur, adjoint, pickling, ``.to()``).

Modules: ``base`` (the contract), ``circular`` (DeconvPlan), ``layer``
(LayerPlan), ``layer_spectra`` (the per-frequency matrices), ``padded`` (the
non-circular fast path and exact forward model), ``spectra`` (transfer
functions and thresholds), ``cache`` (plans reused by one-shot calls).
"""
from __future__ import annotations

from .base import Plan
from .circular import DeconvPlan
from .layer import LayerPlan, MultiChannelPlan

__all__ = ["Plan", "DeconvPlan", "LayerPlan", "MultiChannelPlan"]
