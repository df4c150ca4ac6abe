"""Modules: :class:`ConvPinv2d`, the pseudo-inverse of a conv layer as a layer."""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch
from torch import nn

from . import validation as V
from .plans import DeconvPlan

__all__ = ["ConvPinv2d"]

_CG_HINT = ("for other boundaries use the iterative least-squares solver, "
            "deconv_ext.conv2d_pinv(output, weight, bias, padding_mode={mode!r}, solver='cg')")


def _same_equivalent(padding, kernel_size, dilation) -> bool:
    """Whether an explicit symmetric ``padding`` equals what ``padding="same"`` uses."""
    for p, k, d in zip(padding, kernel_size, dilation):
        total = d * (k - 1)
        if total % 2 or p != total // 2:
            return False
    return True


def _rebuild_after_load(module: "ConvPinv2d", incompatible_keys) -> None:
    module._rebuild()


class ConvPinv2d(nn.Module):
    """The Moore-Penrose pseudo-inverse (or Tikhonov inverse) of a conv layer.

    Inverts ``output = F.conv2d(F.pad(input, pads, mode="circular"), weight,
    bias, dilation=dilation, groups=groups)`` (stride 1, circular "same"
    padding) on inputs of one spatial size: ``forward(output)`` returns
    ``A^+ (output - bias)`` (``eps == 0``) or
    ``(A^T A + eps I)^-1 A^T (output - bias)`` (``eps > 0``), with ``A`` the
    layer's linear operator (see :func:`deconv_ext.conv2d_pinv`).

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw)
    input_size : (H, W)
    groups : int
    dilation : int or (int, int)
    bias : Tensor (C_out,), optional
    eps : float >= 0
    rcond : float in [0, 1), optional

    Shapes
    ------
    forward: (N, C_out, H, W) or (..., C_out, H, W) -> (..., C_in, H, W).

    Notes
    -----
    ``weight`` and ``bias`` are buffers (in the ``state_dict``, moved by
    ``.to()``, not trained). The per-frequency filter is derived from them: it
    is rebuilt, in the new dtype and on the new device, after ``.to()`` /
    ``.double()`` / ``.cuda()`` and after ``load_state_dict``.

    Examples
    --------
    >>> conv = nn.Conv2d(3, 8, 3, padding="same", padding_mode="circular")
    >>> inv = ConvPinv2d.from_conv(conv, (32, 32))
    >>> x_hat = inv(conv(x))      # == x when the layer is injective
    """

    def __init__(self, weight: torch.Tensor, input_size, groups: int = 1, dilation=1,
                 bias: Optional[torch.Tensor] = None, eps: float = 0.0,
                 rcond: Optional[float] = None):
        super().__init__()
        self.input_size: Tuple[int, int] = V.size2("input_size", input_size)
        self.groups = groups
        self.dilation = V.pair("dilation", dilation)
        self.eps = eps
        self.rcond = rcond
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone() if isinstance(bias, torch.Tensor)
                             else bias)
        self._plan = None
        self._rebuild()
        # A module-level function, not a lambda: the module stays picklable.
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, input_size, eps: float = 0.0,
                  rcond: Optional[float] = None) -> "ConvPinv2d":
        """The inverse of an ``nn.Conv2d`` layer at inputs of size ``input_size``.

        Supported: ``stride=1``, ``padding_mode="circular"`` with
        ``padding="same"`` or the equal explicit padding (``dilation * (k - 1)
        / 2`` on each side, odd dilated kernels). Anything else raises
        ``NotImplementedError`` saying what is supported; other boundaries
        have an exact iterative solver,
        ``conv2d_pinv(..., padding_mode=..., solver="cg")``.

        Parameters
        ----------
        conv : nn.Conv2d
        input_size : (H, W)
        eps : float >= 0
        rcond : float in [0, 1), optional
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if tuple(conv.stride) != (1, 1):
            raise NotImplementedError(
                f"conv has stride={tuple(conv.stride)}; ConvPinv2d supports stride 1 only "
                f"(a strided layer is not a single convolution operator on the input grid)")
        mode = conv.padding_mode
        if mode != "circular":
            raise NotImplementedError(
                f"conv has padding_mode={mode!r}; ConvPinv2d supports padding_mode='circular' "
                f"with padding='same' only; " + _CG_HINT.format(mode=mode))
        padding = conv.padding
        if isinstance(padding, str):
            ok = padding == "same"
        else:
            ok = _same_equivalent(tuple(padding), conv.kernel_size, conv.dilation)
        if not ok:
            raise NotImplementedError(
                f"conv has padding={padding!r} (kernel_size={tuple(conv.kernel_size)}, "
                f"dilation={tuple(conv.dilation)}); ConvPinv2d supports padding='same' or the "
                f"equal explicit padding dilation*(k-1)//2 per side (odd dilated kernels), "
                f"where the layer keeps the input size; " + _CG_HINT.format(mode=mode))
        return cls(conv.weight, input_size, groups=conv.groups, dilation=tuple(conv.dilation),
                   bias=conv.bias, eps=eps, rcond=rcond)

    def _rebuild(self) -> None:
        # The plan (filter G) is derived from the buffers: no gradient flows to them.
        with torch.no_grad():
            self._plan = DeconvPlan.for_conv2d(self.weight, self.input_size, groups=self.groups,
                                               dilation=self.dilation, bias=self.bias,
                                               eps=self.eps, rcond=self.rcond)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._rebuild()
        return self

    @property
    def plan(self) -> DeconvPlan:
        """The plan applied by :meth:`forward` (DeconvPlan or MultiChannelPlan)."""
        return self._plan

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        """Invert the layer: (..., C_out, H, W) -> (..., C_in, H, W), ``output``'s dtype."""
        V.image(output, "output")
        if output.dim() < 3 or output.shape[-3] != self.weight.shape[0]:
            raise ValueError(f"output has shape {tuple(output.shape)}; expected (..., "
                             f"{self.weight.shape[0]}, {self.input_size[0]}, "
                             f"{self.input_size[1]})")
        return self._plan(output)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling: the
        # plan behind forward() is Python (custom ops, routes) that TorchScript
        # cannot compile, and its own error names a line deep inside the plan.
        raise NotImplementedError(
            "ConvPinv2d cannot be compiled by torch.jit.script (its solve is Python code "
            "around custom ops); use torch.jit.trace, torch.compile or torch.export for a "
            "module that holds a ConvPinv2d")

    def extra_repr(self) -> str:
        c_out, c_in_g, kh, kw = self.weight.shape
        return (f"{c_out} -> {c_in_g * self.groups}, kernel_size=({kh}, {kw}), "
                f"input_size={self.input_size}, groups={self.groups}, dilation={self.dilation}, "
                f"eps={self.eps}, bias={self.bias is not None}")
