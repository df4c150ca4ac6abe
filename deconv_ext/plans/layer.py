"""LayerPlan: the reusable inverse of one multi-channel conv layer.

A stride-1 ``F.conv2d`` layer with circular "same" padding is block-
diagonalised by the 2D DFT: one small complex matrix ``K(w)`` per frequency
(:mod:`.layer_spectra`). The plan stores its inverse ``G(w)`` (or, when that
would exceed the memory budget, recomputes it block by block on every call)
and applies it between an ``rfft2`` and an ``irfft2``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import config, execution
from .. import validation as V
from ..maths import spectral
from .base import Plan
from .layer_spectra import (FUSED_MAX_CHANNELS, apply_matrices, chunk_budget, filter_bytes,
                            filter_from_spectrum, layer_spectrum, matrix_to_planar, opnorm,
                            pinv_from_svd, planar_to_matrix, row_blocks)

__all__ = ["LayerPlan", "MultiChannelPlan"]


class LayerPlan(Plan):
    """Reusable pseudo-inverse / Tikhonov inverse of one multi-channel conv layer.

    Forward model (layer convention):
    ``output = F.conv2d(F.pad(input, pads, mode="circular"), weight, bias,
    dilation=dilation, groups=groups)`` with the padding of ``padding="same"``.
    Per frequency ``w`` (half spectrum) and group, with ``K(w)`` the
    ``C_out/groups x C_in/groups`` transfer matrix, the plan applies

    * ``eps == 0``: ``X = K(w)^+ (Y - b)``, the Moore-Penrose pseudo-inverse
      with singular values ``<= rcond * sigma_max`` dropped, ``sigma_max`` the
      largest singular value of the whole operator (all frequencies and
      groups): the same as ``torch.linalg.pinv(A, rtol=rcond)`` of the dense
      operator ``A``. ``C_out < C_in`` gives the minimum-norm solution,
      ``C_out > C_in`` the least-squares one.
    * ``eps > 0``: ``X = (K^H K + eps I)^-1 K^H (Y - b)`` (computed on the smaller
      side), the minimiser of ``||A x + b - y||^2 + eps ||x||^2``.

    ``b`` is the bias (a constant per output channel).

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw)
    image_size : (H, W)
    groups : int, dividing C_out
    dilation : int or (int, int)
    bias : Tensor (C_out,), optional
    eps : float >= 0
    rcond : float in [0, 1), optional
        Default ``spectral.default_rcond((H, W), dtype)``. Ignored if ``eps > 0``.
    max_filter_bytes : int, optional
        Budget of the stored filter (default ``DECONV_EXT_MAX_FILTER_BYTES``,
        1 GiB; see :mod:`deconv_ext.config`); a larger filter makes the plan
        matrix-free (see :mod:`deconv_ext.plans.layer_spectra`).

    Attributes
    ----------
    mode : {"filter", "matrix_free"}
    fused : bool
        Whether ``G`` is applied by the C++ op (else ``torch.matmul``).
    filter : Tensor or None
        ``G``: planar (groups, C_in/g, C_out/g, H, Wf) if ``fused``, else
        (groups, H, Wf, C_in/g, C_out/g); None when matrix-free.

    Notes
    -----
    Costs per call: one ``rfft2`` of the output, one ``G`` application
    (``C_in C_out / groups`` complex multiply-adds per frequency and sample),
    one ``irfft2``. ``blur`` and ``adjoint`` cache ``K`` (same size as ``G``)
    on first use in the stored mode.
    """

    def __init__(self, weight: torch.Tensor, image_size, groups: int = 1, dilation=1,
                 bias: Optional[torch.Tensor] = None, eps: float = 0.0,
                 rcond: Optional[float] = None, *, max_filter_bytes: Optional[int] = None):
        size = V.size2("image_size", image_size)
        layer = V.conv_layer(weight, groups, dilation, bias, size)
        self._define(layer, size, V.scalar_eps(eps), V.rcond(rcond),
                     V.max_filter_bytes(max_filter_bytes))

    @classmethod
    def _checked(cls, layer: V.Layer, size, eps: float, rcond: Optional[float]) -> "LayerPlan":
        """The plan of arguments the caller has already checked (public entry points)."""
        plan = object.__new__(cls)
        plan._define(layer, size, eps, rcond, None)
        return plan

    def _define(self, layer: V.Layer, size, eps: float, rcond: Optional[float],
                max_filter_bytes: Optional[int]) -> None:
        self.image_size = size
        self.groups, self.dilation = layer.groups, layer.dilation
        self.c_out, self.c_in = layer.c_out, layer.c_in
        self.dtype = spectral.compute_dtype(layer.weight.dtype)
        self.method = "pinv" if eps == 0 else "tikhonov"
        self.eps = eps
        self.rcond = rcond
        self.max_filter_bytes = max_filter_bytes
        self.weight = layer.weight.to(self.dtype)
        self.bias = layer.bias.to(self.dtype) if layer.bias is not None else None
        self._build()

    # -- construction -------------------------------------------------------
    def _build(self) -> None:
        size, dtype, w = self.image_size, self.dtype, self.weight
        M, N = self.c_out // self.groups, self.c_in // self.groups
        cfg = config.get()
        self.fused = (w.device.type == "cpu" and max(M, N) <= FUSED_MAX_CHANNELS
                      and execution.available() and cfg.kernels != "triton")
        budget = cfg.max_filter_bytes if self.max_filter_bytes is None else self.max_filter_bytes
        nbytes = filter_bytes(w.shape, self.groups, size, dtype)
        self.mode = "filter" if nbytes <= budget else "matrix_free"
        self._chunk = chunk_budget(budget)
        self._K = None
        self.filter = None
        self.thresh = None
        rcond = spectral.default_rcond(size, dtype) if self.rcond is None else self.rcond
        if self.mode == "filter":
            K = planar_to_matrix(layer_spectrum(w, size, self.groups, self.dilation))
            if self.eps == 0:
                # One SVD serves both the global threshold and the filter.
                U, S, Vh = execution.batched_linalg(
                    lambda k: torch.linalg.svd(k, full_matrices=False), K)
                # The threshold selects which singular values to keep: not differentiated.
                self.thresh = rcond * S.detach().amax()
                G = pinv_from_svd(U, S, Vh, self.thresh)            # (g, H, Wf, N, M)
            else:
                G = filter_from_spectrum(K, self.eps, None)
            self.filter = matrix_to_planar(G) if self.fused else G.contiguous()
        elif self.eps == 0:
            with torch.no_grad():
                self.thresh = rcond * opnorm(w.detach(), size, self.groups, self.dilation)

    @classmethod
    def for_conv2d(cls, weight, image_size, groups=1, dilation=1, bias=None, eps=0.0, rcond=None):
        """The same as the constructor (the name :class:`DeconvPlan` uses)."""
        return cls(weight, image_size, groups=groups, dilation=dilation, bias=bias, eps=eps,
                   rcond=rcond)

    # G and K are derived; the base class's pickling stores these.
    _STATE_KEYS = ("image_size", "groups", "dilation", "c_out", "c_in", "dtype", "method", "eps",
                   "rcond", "max_filter_bytes", "weight", "bias")
    _TENSOR_KEYS = ("weight", "bias")

    def __repr__(self) -> str:
        return (f"LayerPlan(weight={tuple(self.weight.shape)}, image_size={self.image_size}, "
                f"groups={self.groups}, dilation={self.dilation}, eps={self.eps}, "
                f"rcond={self.rcond}, mode={self.mode!r}, fused={self.fused}, "
                f"dtype={self.dtype}, device={self.weight.device})")

    # -- checks -------------------------------------------------------------
    def _check_mc(self, x: torch.Tensor, name: str, channels: int) -> None:
        V.image(x, name)
        if x.dim() < 3 or x.shape[-3] != channels:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (..., {channels}, "
                             f"{self.image_size[0]}, {self.image_size[1]})")
        V.plan_input(x, name, self.image_size, self.weight, self.dtype)

    def _out_shape(self, x: torch.Tensor, channels: int):
        return (*x.shape[:-3], channels, *self.image_size)

    # -- per-frequency matrices on demand -------------------------------------
    def _blocks(self):
        per_row = filter_bytes(self.weight.shape, self.groups, (1, self.image_size[1]),
                               self.dtype)
        return row_blocks(self.image_size[0], per_row, self._chunk)

    def _K_stored(self) -> torch.Tensor:
        if self._K is None:
            K = layer_spectrum(self.weight, self.image_size, self.groups, self.dilation)
            self._K = K.contiguous() if self.fused else planar_to_matrix(K).contiguous()
        return self._K

    def _K_block(self, r0: int, r1: int) -> torch.Tensor:
        K = layer_spectrum(self.weight, self.image_size, self.groups, self.dilation, rows=(r0, r1))
        return K.contiguous() if self.fused else planar_to_matrix(K)

    def _G_block(self, r0: int, r1: int) -> torch.Tensor:
        K = planar_to_matrix(layer_spectrum(self.weight, self.image_size, self.groups,
                                             self.dilation, rows=(r0, r1)))
        G = filter_from_spectrum(K, self.eps, self.thresh)
        return matrix_to_planar(G) if self.fused else G

    def _mix(self, Y: torch.Tensor, which: str, adjoint: bool) -> torch.Tensor:
        if self.mode == "filter":
            A = self.filter if which == "G" else self._K_stored()
            return apply_matrices(Y, A, adjoint, self.fused)
        block = self._G_block if which == "G" else self._K_block
        parts = [apply_matrices(Y[..., r0:r1, :], block(r0, r1), adjoint, self.fused)
                 for r0, r1 in self._blocks()]
        return torch.cat(parts, dim=-2)

    # -- application --------------------------------------------------------
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Solve for the layer input given its ``output`` (..., C_out, H, W).

        Returns
        -------
        Tensor (..., C_in, H, W), ``image``'s dtype.
        """
        self._check_mc(image, "output", self.c_out)
        if image.numel() == 0:
            return image.new_empty(self._out_shape(image, self.c_in))
        y = image.to(self.dtype)
        if self.bias is not None:
            y = y - self.bias[:, None, None]
        X = self._mix(torch.fft.rfft2(y), "G", adjoint=False)
        return torch.fft.irfft2(X, s=self.image_size).to(image.dtype)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """The forward model: the layer applied to ``x`` (..., C_in, H, W) -> (..., C_out, H, W)."""
        self._check_mc(x, "x", self.c_in)
        if x.numel() == 0:
            return x.new_empty(self._out_shape(x, self.c_out))
        xc = x.to(self.dtype)
        out = torch.fft.irfft2(self._mix(torch.fft.rfft2(xc), "K", adjoint=False),
                               s=self.image_size)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of the layer's linear part (..., C_out, H, W) -> (..., C_in, H, W)."""
        self._check_mc(y, "y", self.c_out)
        if y.numel() == 0:
            return y.new_empty(self._out_shape(y, self.c_in))
        yc = y.to(self.dtype)
        out = torch.fft.irfft2(self._mix(torch.fft.rfft2(yc), "K", adjoint=True),
                               s=self.image_size)
        return out.to(y.dtype)


#: The earlier name of :class:`LayerPlan`.
MultiChannelPlan = LayerPlan
