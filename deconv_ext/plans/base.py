"""The contract every plan keeps: solve, blur, adjoint, pickling, device and dtype moves.

A plan is defined by a few tensors and settings (its *state*: the kernel or
layer weight, the image size, eps, ...); everything else (spectra, filters,
thresholds) is derived by ``_build`` and never stored, so that pickling,
``.to()`` and ``torch.save`` keep only the definition and rebuild the rest.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import validation as V
from ..maths.spectral import compute_dtype

__all__ = ["Plan", "to_args"]


class Plan:
    """Base of :class:`~deconv_ext.DeconvPlan` and :class:`~deconv_ext.LayerPlan`.

    Subclasses set ``_STATE_KEYS`` (the attributes that define the plan),
    ``_TENSOR_KEYS`` (those of them that follow ``.to()``), and implement
    ``_build``, ``__call__``, ``blur`` and ``adjoint``.

    Attributes
    ----------
    image_size : (H, W)
    dtype : torch.float32 or torch.float64, the computation dtype
    """

    _STATE_KEYS: Tuple[str, ...] = ()
    _TENSOR_KEYS: Tuple[str, ...] = ()
    image_size: Tuple[int, int]
    dtype: torch.dtype

    def _build(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __call__(self, image: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def blur(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the plan's tensors."""
        return getattr(self, self._TENSOR_KEYS[0]).device

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Plan":
        """A copy of the plan on another device and/or computation dtype.

        Called like ``Tensor.to``: ``plan.to("cuda")``, ``plan.to(torch.float64)``,
        ``plan.to(device, dtype)``. The derived spectra are rebuilt from the
        definition in the new dtype (not cast), so ``plan.to(torch.float64)``
        of a float32 plan is as accurate as a plan built in float64 from the
        float32 kernel. float16/bfloat16 give a float32 plan (the dtype such
        images compute in).
        """
        device, dtype = to_args(device, dtype)
        new = object.__new__(type(self))
        new.__dict__.update(self.__getstate__())
        new.dtype = dtype or self.dtype
        for key in self._TENSOR_KEYS:
            value = getattr(self, key)
            if isinstance(value, torch.Tensor):
                setattr(new, key, value.to(device=device, dtype=new.dtype))
        new._build()
        return new

    def __getstate__(self):
        # The definition only; the derived spectra are rebuilt on load.
        return {k: self.__dict__[k] for k in self._STATE_KEYS if k in self.__dict__}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build()


def to_args(device, dtype):
    """``(device, dtype)`` of a ``plan.to(...)`` call, parsed like ``Tensor.to``.

    ``plan.to(torch.float64)`` passes the dtype positionally; float16/bfloat16
    give float32 (the dtype such images compute in).
    """
    if isinstance(device, torch.dtype) and dtype is None:
        device, dtype = None, device
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"dtype={dtype!r} is not valid; expected a real floating "
                            f"torch.dtype (float32/float64; float16/bfloat16 compute in "
                            f"float32)")
        dtype = compute_dtype(dtype)
    return device, dtype
