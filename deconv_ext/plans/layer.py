"""LayerPlan: the reusable inverse of one multi-channel conv layer.

A stride-1 ``F.conv2d`` layer with circular "same" padding is block-
diagonalised by the 2D DFT: one small complex matrix ``K(w)`` per frequency
(:mod:`.layer_spectra`). The plan stores its inverse ``G(w)`` (or, when that
would exceed the memory budget, recomputes it block by block on every call)
and applies it between an ``rfft2`` and an ``irfft2``. A plan made with
``eps=<rule>`` (``"gcv"``, ``"discrepancy"``, ...) stores the SVD factors
of every ``K(w)`` instead and chooses eps per sample on every call
(:func:`deconv_ext.plans.choice.choose_layer`).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .. import config, execution
from .. import validation as V
from ..maths import parameter_choice as pc
from ..maths import spectral
from . import choice
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
    * ``eps=<rule>``: the same Tikhonov solve with eps chosen per sample from
      the data, written with the SVD ``K(w) = U diag(s) V^H`` as
      ``X = V diag(s / (s^2 + eps)) U^H (Y - b)``: the rule's sums need the
      singular values and ``z = U^H (Y - b)`` (Notes).

    ``b`` is the bias (a constant per output channel).

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw)
    image_size : (H, W)
    groups : int, dividing C_out
    dilation : int or (int, int)
    bias : Tensor (C_out,), optional
    eps : float >= 0 or str
        A float, or the name of a rule that chooses it per sample:
        ``"gcv"``, ``"discrepancy"``, ``"lcurve"``, ``"upre"``, ``"risk"``,
        ``"auto"`` (for the identity regulariser: the discrepancy principle).
    rcond : float in [0, 1), optional
        Default ``spectral.default_rcond((H, W), dtype)``. Ignored if ``eps > 0``
        or a rule.
    max_filter_bytes : int, optional
        Budget of the stored filter (default ``DECONV_EXT_MAX_FILTER_BYTES``,
        1 GiB; see :mod:`deconv_ext.config`); a larger filter makes the plan
        matrix-free (see :mod:`deconv_ext.plans.layer_spectra`). With a rule
        the budget holds the SVD factors ``U`` and ``V`` instead.
    noise_std : float > 0 or Tensor, optional, keyword-only
        With a rule that uses a noise level (``"discrepancy"``, ``"upre"``,
        ``"risk"``, ``"auto"``): the standard deviation of the additive white
        noise on the output, a float or one value per sample; None estimates
        it from each sample's spectrum (the median power of the components
        of the smallest singular values).

    Attributes
    ----------
    mode : {"filter", "matrix_free"}
    fused : bool
        Whether ``G`` is applied by the C++ op (else ``torch.matmul``).
    filter : Tensor or None
        ``G``: planar (groups, C_in/g, C_out/g, H, Wf) if ``fused``, else
        (groups, H, Wf, C_in/g, C_out/g); None when matrix-free or with a rule.
    rule : str or None
        The parameter-choice rule (``eps`` given by name), else None.
    last_choice : EpsChoice or None
        With a rule: what the latest call chose (one entry per sample:
        ``output.shape[:-3]``); with several threads sharing a plan use
        ``plan(output, return_info=True)`` instead.

    Notes
    -----
    Costs per call: one ``rfft2`` of the output, one ``G`` application
    (``C_in C_out / groups`` complex multiply-adds per frequency and sample),
    one ``irfft2``. ``blur`` and ``adjoint`` cache ``K`` (same size as ``G``)
    on first use in the stored mode.

    **Choosing eps** (``eps=<rule>``). The operator ``A`` is block diagonal
    in frequency, so with ``z = U^H Y(w)`` per frequency the influence
    matrix ``A A_eps^+`` has the eigenvalues ``s_i^2 / (s_i^2 + eps)`` and

    * ``||(I - A A_eps^+) y||^2 = sum_w c(w) [sum_i (eps / (s_i^2 + eps))^2
      |z_i|^2 + ||P_perp Y(w)||^2] / (H W)``,
    * ``trace(I - A A_eps^+) = sum_w c(w) [C_out - sum_i s_i^2 / (s_i^2 + eps)]``,

    exact on the half spectrum: ``c(w)`` is 1 for the columns 0 and (even
    ``W``) ``W / 2``, 2 for the others, which stand for their mirror too;
    ``P_perp Y`` is the part of the data outside ``range(K(w))``, nonzero
    when ``C_out`` exceeds the rank. GCV [1]_ minimises
    ``N ||(I - A A_eps^+) y||^2 / trace(I - A A_eps^+)^2`` with
    ``N = C_out H W``; the other rules are those of
    :mod:`deconv_ext.maths.parameter_choice` on the same sums (``|K|^2 ->
    s^2``, ``|R|^2 = 1``), searched by its minimiser. A call costs one
    ``rfft2``, ``U^H`` and ``V`` applied per frequency (instead of ``G``),
    the rule's search over binned sums, and one ``irfft2``. The chosen eps
    is held constant under autograd.

    References
    ----------
    .. [1] G. H. Golub, M. Heath, G. Wahba, "Generalized cross-validation as
       a method for choosing a good ridge parameter", Technometrics 21(2),
       215-223, 1979.
    """

    def __init__(self, weight: torch.Tensor, image_size, groups: int = 1, dilation=1,
                 bias: Optional[torch.Tensor] = None, eps: Union[float, str] = 0.0,
                 rcond: Optional[float] = None, *, max_filter_bytes: Optional[int] = None,
                 noise_std=None):
        size = V.size2("image_size", image_size)
        layer = V.conv_layer(weight, groups, dilation, bias, size)
        eps = V.layer_eps(eps)
        noise_std = V.layer_rule_args(eps, noise_std)
        self._define(layer, size, eps, V.rcond(rcond), V.max_filter_bytes(max_filter_bytes),
                     noise_std)

    @classmethod
    def _checked(cls, layer: V.Layer, size, eps: Union[float, str], rcond: Optional[float],
                 noise_std=None) -> "LayerPlan":
        """The plan of arguments the caller has already checked (public entry points)."""
        plan = object.__new__(cls)
        plan._define(layer, size, eps, rcond, None, noise_std)
        return plan

    def _define(self, layer: V.Layer, size, eps: Union[float, str], rcond: Optional[float],
                max_filter_bytes: Optional[int], noise_std=None) -> None:
        self.image_size = size
        self.groups, self.dilation = layer.groups, layer.dilation
        self.c_out, self.c_in = layer.c_out, layer.c_in
        self.dtype = spectral.compute_dtype(layer.weight.dtype)
        self.method = "pinv" if eps == 0 else "tikhonov"
        self.eps = eps
        self.noise_std = noise_std
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
        self.rule = self.eps if isinstance(self.eps, str) else None
        self.last_choice = None
        self._factors = self._bins = self._s2 = None
        if self.rule is not None:
            self._build_rule(budget)
            return
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

    def _build_rule(self, budget: int) -> None:
        """The SVD factors of every ``K(w)`` (or, matrix-free, their singular
        values only) and the rule's binned operator sums."""
        M, N = self.c_out // self.groups, self.c_in // self.groups
        k = min(M, N)
        # U (M x k) and V (N x k) per frequency and group instead of G (N x M).
        nbytes = filter_bytes(self.weight.shape, self.groups, self.image_size, self.dtype)
        self.mode = "filter" if nbytes * k * (M + N) // (M * N) <= budget else "matrix_free"
        if self.mode == "filter":
            U, S, Vh = self._svd_block(0, self.image_size[0])
            self._factors = (self._layout(U), S, self._layout(Vh))
        else:
            S = torch.cat([execution.batched_linalg(torch.linalg.svdvals, self._Km_block(r0, r1))
                           for r0, r1 in self._blocks()], dim=1)
        H, Wf = S.shape[1:3]
        # (groups, H, Wf, k) -> (H, Wf, groups * k): the order of the channels of U^H Y.
        self._s2 = S.detach().to(torch.float64).square().permute(1, 2, 0, 3).reshape(
            H, Wf, self.groups * k)
        self._bins = pc.svd_bins(self._s2, self.image_size, self.c_out)

    def _Km_block(self, r0: int, r1: int) -> torch.Tensor:
        """``K(w)`` of the frequency rows ``r0 <= h < r1``, matrix layout."""
        return planar_to_matrix(layer_spectrum(self.weight, self.image_size, self.groups,
                                               self.dilation, rows=(r0, r1)))

    def _svd_block(self, r0: int, r1: int):
        """``U, S, Vh`` of ``K(w)`` for the rows ``r0 <= h < r1``, matrix layout."""
        return execution.batched_linalg(lambda k: torch.linalg.svd(k, full_matrices=False),
                                        self._Km_block(r0, r1))

    def _layout(self, A: torch.Tensor) -> torch.Tensor:
        """A matrix-layout factor as :func:`apply_matrices` reads it."""
        return matrix_to_planar(A) if self.fused else A.contiguous()

    @classmethod
    def for_conv2d(cls, weight, image_size, groups=1, dilation=1, bias=None, eps=0.0, rcond=None,
                   *, noise_std=None):
        """The same as the constructor (the name :class:`DeconvPlan` uses)."""
        return cls(weight, image_size, groups=groups, dilation=dilation, bias=bias, eps=eps,
                   rcond=rcond, noise_std=noise_std)

    # G and K are derived; the base class's pickling stores these.
    _STATE_KEYS = ("image_size", "groups", "dilation", "c_out", "c_in", "dtype", "method", "eps",
                   "rcond", "max_filter_bytes", "weight", "bias", "noise_std")
    _TENSOR_KEYS = ("weight", "bias", "noise_std")

    def __repr__(self) -> str:
        return (f"LayerPlan(weight={tuple(self.weight.shape)}, image_size={self.image_size}, "
                f"groups={self.groups}, dilation={self.dilation}, eps={self.eps!r}, "
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
    def __call__(self, image: torch.Tensor, *, return_info: bool = False):
        """Solve for the layer input given its ``output`` (..., C_out, H, W).

        ``return_info=True`` (plans with a rule only) also returns the
        :class:`~deconv_ext.maths.parameter_choice.EpsChoice` of this call
        (one eps per sample, ``output.shape[:-3]``).

        Returns
        -------
        Tensor (..., C_in, H, W), ``image``'s dtype (and the EpsChoice).
        """
        self._check_mc(image, "output", self.c_out)
        if return_info and self.rule is None:
            raise ValueError(f"return_info=True returns the eps a rule chose; this plan has a "
                             f"fixed eps={self.eps} (make it with eps='gcv', 'auto', ...)")
        if self.rule is not None:
            V.broadcasts_to("noise_std", self.noise_std, tuple(image.shape[:-3]),
                            "one value per sample")
        x, chosen = self._solve(image)
        return (x, chosen) if return_info else x

    def _solve(self, image: torch.Tensor):
        """``(x, EpsChoice or None)`` of a checked ``output``."""
        if image.numel() == 0:
            x = image.new_empty(self._out_shape(image, self.c_in))
            return x, (choice.empty_layer(self, image) if self.rule is not None else None)
        y = image.to(self.dtype)
        if self.bias is not None:
            y = y - self.bias[:, None, None]
        Y = torch.fft.rfft2(y)
        if self.rule is not None:
            X, chosen = self._rule_mix(Y)
            self.last_choice = chosen
        else:
            X, chosen = self._mix(Y, "G", adjoint=False), None
        return torch.fft.irfft2(X, s=self.image_size).to(image.dtype), chosen

    def _rule_mix(self, Y: torch.Tensor):
        """``V diag(s / (s^2 + eps)) U^H Y`` per frequency, eps chosen per sample."""
        if self.mode == "filter":
            blocks = [(0, self.image_size[0], self._factors)]
        else:
            blocks = [(r0, r1, None) for r0, r1 in self._blocks()]

        def factors(r0, r1, f):
            if f is not None:
                return f
            U, S, Vh = self._svd_block(r0, r1)
            return self._layout(U), S, self._layout(Vh)

        # First pass: z = U^H Y and the out-of-range power, for the rule.
        Z, perp = [], []
        for r0, r1, f in blocks:
            U, _, _ = factors(r0, r1, f)
            Yb = Y[..., r0:r1, :]
            z = apply_matrices(Yb, U, True, self.fused)
            Z.append(z)
            perp.append(self._out_of_range(Yb, z, U))
        chosen = choice.choose_layer(self, torch.cat(Z, dim=-2),
                                     None if perp[0] is None else torch.cat(perp, dim=-2))
        lead = Y.shape[:-3]
        eps = chosen.eps.to(self.dtype).reshape(*lead, 1, 1, 1)
        parts = []
        for (r0, r1, f), z in zip(blocks, Z):
            if f is None:
                # Matrix-free: the factors again (z was computed with these same ones).
                U, S, Vh = factors(r0, r1, f)
            else:
                U, S, Vh = f
            # (groups, R, Wf, k) -> (groups * k, R, Wf), the channel order of z.
            s = S.permute(0, 3, 1, 2).reshape(-1, *S.shape[1:3])
            parts.append(apply_matrices(z * (s / (s * s + eps)), Vh, True, self.fused))
        return torch.cat(parts, dim=-2), chosen

    def _out_of_range(self, Y: torch.Tensor, z: torch.Tensor, U: torch.Tensor):
        """``||Y - U U^H Y||^2`` per frequency (..., R, Wf), or None when ``U`` is square."""
        M, N = self.c_out // self.groups, self.c_in // self.groups
        if M <= N:
            return None
        # The residual itself, not ||Y||^2 - ||z||^2: no cancellation when it is small.
        r = Y - apply_matrices(z, U, False, self.fused)
        return (r.real.square() + r.imag.square()).sum(dim=-3)

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
