"""DeconvPlan: the spectrum of one kernel (or layer) at one image size.

A plan computes the kernel's transfer function, the regulariser and the
pseudo-inverse threshold once; each call then costs one ``rfft2``, one fused
per-frequency solve and one ``irfft2``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .. import execution
from .. import validation as V
from ..maths import spectral
from . import choice, padded, spectra
from .base import Plan
from .layer import LayerPlan

__all__ = ["DeconvPlan"]


class DeconvPlan(Plan):
    """Reusable regularised inverse of one circular convolution.

    Model: ``y = x (*) psf`` (true circular convolution, PSF origin at
    ``(kh // 2, kw // 2)``) on images of size ``image_size``. Per frequency
    ``w``, with ``K`` the PSF's transfer function and ``R`` the regulariser's:

    * ``method="tikhonov"``: ``X = conj(K) Y / (|K|^2 + eps |R|^2)``;
    * ``method="pinv"`` (or ``eps == 0``, the limit): ``X = Y / K`` where
      ``|K| > rcond * sigma_max``, else 0; also wherever ``eps |R|^2`` is 0.

    Parameters
    ----------
    psf : Tensor (kh, kw) or (..., kh, kw)
        Real kernel; leading dims broadcast to the images' leading dims
        (per channel ``(C, kh, kw)``, per sample ``(N, C, kh, kw)``).
    image_size : (H, W)
    eps : float or Tensor, default 1e-2
        Regularisation weight >= 0; a real tensor broadcastable to
        ``(..., H, W)`` in ``fft2`` layout is a per-frequency weight (Wiener
        noise-to-signal ratio), symmetrised ``(e(w) + e(-w)) / 2``. Finite
        and >= 0 (else a ``ValueError``; a plan built under ``torch.compile``,
        which cannot read the values without a host sync, returns NaN).
    method : {"tikhonov", "pinv"}
    reg : None, "laplacian" or Tensor (kh', kw')
        Regulariser ``R``: identity, the 3x3 discrete Laplacian, or a finite
        kernel (checked like ``eps``).
    rcond : float in [0, 1), optional
        Pseudo-inverse threshold relative to ``sigma_max`` (largest ``|K|``
        over the frequencies and channels of one sample). Default
        ``10 * max(H, W) * finfo(dtype).eps``. Ignored by Tikhonov where
        ``eps |R|^2 > 0``.
    dtype : torch.dtype, optional
        float32 or float64 computation dtype; default: the PSF's (float16 and
        bfloat16 compute in float32).
    boundary : {"circular", "reflect", "symmetric", "replicate", "zeros"}
        The blur's boundary. Non-circular: the plan holds the spectrum at a
        padded fast FFT size (the image plus at least the PSF's half size on
        each side, rounded up to factors 2, 3, 5, 7); ``plan(y)`` extends
        ``y`` by the boundary rule, solves circularly there and crops (the
        fast approximation, :mod:`deconv_ext.plans.padded`); ``blur``/``adjoint``
        are the exact non-circular forward model and its adjoint.
    taper : int >= 0, optional
        Non-circular only: width in pixels over which the extended border is
        blended toward the image mean before the solve (less ringing).
    noise_std : float > 0 or Tensor, optional, keyword-only
        With a rule that uses a noise level (``"discrepancy"``, ``"upre"``,
        ``"risk"``): the standard deviation of the additive white noise, a
        float or a tensor broadcastable to one value per system; None
        estimates it from each image's spectrum.
    eps_per : {"plane", "sample"}, keyword-only
        With a rule: one eps per ``(H, W)`` plane (default), or one per sample,
        shared by its channels (dim -3), from the rule's sums over the whole
        sample (one objective for the sample's channels together).

    Attributes
    ----------
    rule : str or None
        The parameter-choice rule (``eps`` given by name), else None.
    last_choice : EpsChoice or None
        With a rule: what the latest call chose (``eps``, ``objective``, ...,
        one entry per system: ``image.shape[:-2]``, or ``[:-3]`` with
        ``eps_per="sample"``). One attribute per plan: with several threads
        sharing a plan use ``plan(image, return_info=True)`` instead.

    Notes
    -----
    ``eps`` may name a parameter-choice rule (:mod:`deconv_ext.maths.parameter_choice`):
    ``"auto"``, ``"gcv"``, ``"discrepancy"``, ``"lcurve"``, ``"upre"``,
    ``"risk"``. The plan then bins the operator's ``|K|^2`` and ``|R|^2``
    once, and each call chooses eps per system from the spectrum the solve
    computes anyway (``rfft2`` of the image; on non-circular boundaries the
    rule reads the windowed observation, one more FFT): the rule costs a
    histogram of ``|Y|^2`` and a search over a few thousand bins, no extra
    transform on the circular boundary. The chosen eps is held constant
    under autograd (the gradient flows through the solve, not the choice).

    Examples
    --------
    >>> plan = DeconvPlan(psf, (256, 256), eps=1e-3)
    >>> x = plan(y)            # y: (..., 256, 256)
    >>> y2 = plan.blur(x)      # the forward model
    >>> z = plan.adjoint(y)    # its adjoint
    >>> auto = DeconvPlan(psf, (256, 256), eps="gcv", reg="laplacian")
    >>> x, choice = auto(y, return_info=True)   # choice.eps: one eps per plane
    """

    def __init__(self, psf: torch.Tensor, image_size,
                 eps: Union[float, str, torch.Tensor] = 1e-2, method: str = "tikhonov",
                 reg: Union[None, str, torch.Tensor] = None, rcond: Optional[float] = None,
                 dtype: Optional[torch.dtype] = None, boundary: str = "circular",
                 taper: Optional[int] = None, *, noise_std=None, eps_per: str = "plane"):
        size = V.size2("image_size", image_size)
        V.kernel(psf, tuple(psf.shape[:-2]) + size, name="psf")
        V.choice("method", method, V.METHODS)
        reg = V.reg(reg, size)
        eps = V.eps_or_rule(eps, size)
        noise_std, eps_per = V.eps_rule_args(eps, method, noise_std, eps_per)
        rcond = V.rcond(rcond)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype={dtype} is not valid; expected torch.float32 or torch.float64")
        if isinstance(reg, torch.Tensor):
            V.same_device("reg", reg, "psf", psf)
        if isinstance(eps, torch.Tensor):
            V.same_device("eps", eps, "psf", psf)
        self.image_size: Tuple[int, int] = size
        # Non-circular boundaries (the padded fast path, plans/padded.py):
        # the spectrum lives at the padded fast FFT size.
        self.boundary = V.choice("boundary", boundary, V.BOUNDARIES)
        self.taper = V.taper(taper)
        self.geometry = None
        self.fft_size: Tuple[int, int] = size
        if boundary != "circular":
            if isinstance(eps, torch.Tensor) and any(n != 1 for n in eps.shape[-2:]):
                raise ValueError(f"a per-frequency eps tensor needs boundary='circular' (the "
                                 f"padded solve of boundary={boundary!r} uses another FFT size)")
            self.geometry = padded.padded_geometry(size, tuple(psf.shape[-2:]), self.taper)
            self.fft_size = self.geometry.fft_size
        self.dtype: torch.dtype = dtype or spectral.compute_dtype(psf.dtype)
        self.method = method
        self.rcond = rcond
        self.bias: Optional[torch.Tensor] = None
        # Kept to rebuild the plan (.to, pickling).
        self.psf = psf.to(self.dtype)
        self.reg = reg.to(self.dtype) if isinstance(reg, torch.Tensor) else reg
        self.eps = eps.to(self.dtype) if isinstance(eps, torch.Tensor) else eps
        self.noise_std = noise_std
        self.eps_per = eps_per
        self._build()

    # -- construction -------------------------------------------------------
    def _build(self) -> None:
        size = self.fft_size
        dtype, device = self.dtype, self.psf.device
        # blur / adjoint apply the PSF's own spectrum.
        self.spectrum = spectra.psf_spectrum(self.psf, size)
        # The solve is scale invariant: with c = 2^k, solving with (c psf,
        # c^2 eps) and multiplying by c is the same maths, and exact in
        # floating point. A PSF far from 1 is brought near it first, so that
        # |K|^2 and the threshold (rcond sigma_max)^2 neither overflow (a PSF
        # of 1e20 in float32) nor fall where 1 / (|K|^2 + eps) overflows (1e-20).
        # A rule (eps="gcv", ...) chooses eps on the plan's own spectrum and
        # threshold, so a plan with a rule solves the PSF as it is.
        k = self._scale_exponent() if not isinstance(self.eps, str) else 0
        self._out_scale = 2.0 ** k if k else None
        self._solve_spectrum = (self.spectrum if not k
                                else spectra.psf_spectrum(self.psf * 2.0 ** k, size))
        rcond = spectral.default_rcond(size, dtype) if self.rcond is None else self.rcond
        # The threshold is a choice of which frequencies to keep, not a
        # differentiable quantity.
        self.thresh = spectra.pinv_threshold(self._solve_spectrum.detach(), rcond).to(dtype)
        power = spectra.reg_power(self.reg, size, dtype, device)
        # The fused op takes X = conj(K) Y / (|K|^2 + eps_op * reg_op), computing
        # 1 / (|K|^2 + p): a p > 0 below the dtype's smallest normal number (a
        # subnormal eps, 1e-45 in float32) would overflow it to inf where K = 0,
        # and 0 * inf is NaN. Such a p is raised to that number (a change far
        # below the dtype's resolution of |K|^2).
        tiny = torch.finfo(dtype).tiny
        self.rule = self.eps if isinstance(self.eps, str) else None
        self.last_choice = None
        self._bins = self._prior_bins = None
        if self.rule is not None:
            # eps is chosen per call; the operator's half of the rule sums now.
            self._reg_power = power
            self._reg_op, self._eps_op = None, 0.0
            choice.operator_bins(self, power)
        elif self.method == "pinv":
            self._reg_op, self._eps_op = None, 0.0
        elif isinstance(self.eps, torch.Tensor):
            e = spectral.symmetrised_eps(self.eps, size) * 4.0 ** k
            p = e if power is None else e * power
            self._reg_op = torch.where(p > 0, p.clamp_min(tiny), p)
            self._eps_op = 1.0
        else:
            eps = float(self.eps) * 4.0 ** k
            self._reg_op, self._eps_op = power, (max(eps, tiny) if eps > 0 else 0.0)
        self._guard = self._values_guard()

    #: PSFs whose largest |value| lies in [2^-32, 2^32] are solved as they are:
    #: their |K|^2 and thresholds are safe in float32 (every common PSF).
    _SAFE_SCALE = 32

    def _scale_exponent(self) -> int:
        """``k`` with ``2^k max|psf|`` in [0.5, 1) for a PSF outside the safe range, else 0.

        Reads one value from the PSF (a host sync), so not under
        ``torch.compile`` or ``torch.jit.trace``: a plan built there solves
        the PSF as it is.
        """
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return 0
        k = spectral.scale_exponent(self.psf)
        return k if abs(k) > self._SAFE_SCALE else 0

    def _values_guard(self) -> Optional[torch.Tensor]:
        """Under torch.compile: 0 if the eps tensor and reg kernel hold valid values, else NaN.

        Eagerly, validation refuses a NaN, Inf or negative eps value and a
        NaN/Inf reg kernel. Under compile reading the values would need a
        host sync (a graph break), and the fused solve would treat the bad
        frequencies as ``eps |R|^2 = 0``: the pseudo-inverse, silently. So a
        plan built there adds this 0-dim tensor to its result instead: a bad
        value makes the whole result NaN. None (nothing added) otherwise.
        """
        if not torch.compiler.is_compiling() or self.method == "pinv":
            return None
        flags = []
        if isinstance(self.eps, torch.Tensor):
            flags.append(V.eps_values_ok(self.eps))
        if isinstance(self.reg, torch.Tensor):
            flags.append(V.reg_values_ok(self.reg))
        if not flags:
            return None
        ok = torch.stack(flags).all()
        zero = torch.zeros((), dtype=self.dtype, device=self.psf.device)
        return zero.masked_fill(~ok, float("nan"))

    @classmethod
    def for_conv2d(cls, weight: torch.Tensor, image_size, groups: int = 1, dilation=1,
                   bias: Optional[torch.Tensor] = None, eps: Union[float, str] = 0.0,
                   rcond: Optional[float] = None, *, noise_std=None) -> "DeconvPlan":
        """Plan that inverts ``F.conv2d`` with circular "same" padding.

        Forward model: ``output = F.conv2d(F.pad(input, pads, mode="circular"),
        weight, bias, dilation=dilation, groups=groups)`` with the padding of
        ``padding="same"``.

        Parameters
        ----------
        weight : Tensor (C_out, C_in / groups, kh, kw)
            Any layer. Depthwise layers (``groups == C_in == C_out``) get an
            element-wise plan; every other layer a
            :class:`deconv_ext.LayerPlan` (one
            ``C_in/groups x C_out/groups`` matrix per frequency and group).
        image_size : (H, W)
        groups, dilation : as in ``F.conv2d`` (stride 1)
        bias : Tensor (C_out,), optional
        eps : float >= 0 or str
            0 gives the pseudo-inverse; a rule name (``"gcv"``,
            ``"discrepancy"``, ``"lcurve"``, ``"upre"``, ``"risk"``,
            ``"auto"``) chooses a Tikhonov eps per sample on every call, from
            the operator's per-frequency singular values
            (a :class:`deconv_ext.LayerPlan` for every layer, Notes);
            ``plan(output, return_info=True)`` returns the choice.
        rcond : float in [0, 1), optional
        noise_std : float > 0 or Tensor, optional, keyword-only
            With a rule that uses a noise level: the output noise's standard
            deviation, a float or one value per sample (None: estimated).

        Returns
        -------
        DeconvPlan mapping an output (N, C_out, H, W) to an input (N, C_in, H, W).
        """
        size = V.size2("image_size", image_size)
        layer = V.conv_layer(weight, groups, dilation, bias, size)
        eps = V.layer_eps(eps)
        return cls._for_layer(layer, size, eps, V.rcond(rcond), V.layer_rule_args(eps, noise_std))

    @classmethod
    def _for_layer(cls, layer: V.Layer, size, eps: Union[float, str], rcond, noise_std=None):
        """:meth:`for_conv2d` of a checked layer."""
        # A rule chooses one eps per sample from the operator's singular values
        # and the data's projections on them: the layer plan's sums, exact for
        # depthwise layers too (1 x 1 blocks).
        if not layer.depthwise or isinstance(eps, str):
            return LayerPlan._checked(layer, size, eps, rcond, noise_std)
        # Depthwise: one image-convention PSF per channel, solved element-wise.
        psf = spectral.conv2d_kernel_as_psf(layer.weight[:, 0], layer.dilation)
        plan = cls(psf, size, eps=eps, method="tikhonov", reg=None, rcond=rcond)
        if layer.bias is not None:
            plan.bias = layer.bias.to(plan.dtype)
        return plan

    # What defines a plan; everything else (spectra, thresholds) is derived.
    _STATE_KEYS = ("image_size", "dtype", "method", "rcond", "bias", "psf", "reg", "eps",
                   "boundary", "taper", "geometry", "fft_size", "noise_std", "eps_per")

    _TENSOR_KEYS = ("psf", "reg", "eps", "bias", "noise_std")

    def __repr__(self) -> str:
        return (f"DeconvPlan(psf={tuple(self.psf.shape)}, image_size={self.image_size}, "
                f"method={self.method!r}, eps={self.eps if not isinstance(self.eps, torch.Tensor) else 'tensor'}, "
                f"reg={self.reg if not isinstance(self.reg, torch.Tensor) else 'tensor'}, "
                f"boundary={self.boundary!r}, "
                f"dtype={self.dtype}, device={self.psf.device})")

    # -- application --------------------------------------------------------
    def _check(self, image: torch.Tensor, name: str) -> torch.Tensor:
        V.plan_input(image, name, self.image_size, self.psf, self.dtype)
        V.kernel(self.psf, image.shape, name="the plan's psf")
        V.broadcasts_to("the plan's eps tensor", self.eps if isinstance(self.eps, torch.Tensor)
                        else None, image.shape, name)
        return image

    def __call__(self, image: torch.Tensor, *, return_info: bool = False):
        """Solve for ``x`` given the blurred ``image`` (..., H, W); same shape and dtype.

        ``return_info=True`` (plans with a rule only) also returns the
        :class:`~deconv_ext.maths.parameter_choice.EpsChoice` of this call.
        """
        self._check(image, "image")
        if return_info and self.rule is None:
            raise ValueError(f"return_info=True returns the eps a rule chose; this plan has a "
                             f"fixed eps={self.eps if not isinstance(self.eps, torch.Tensor) else 'tensor'} "
                             f"(make it with eps='auto', 'gcv', ...)")
        if self.rule is not None:
            choice.check_systems(self, image)
        x, chosen = self._solve(image, with_choice=True)
        return (x, chosen) if return_info else x

    def _solve(self, image: torch.Tensor, with_choice: bool = False):
        """:meth:`__call__` without the argument checks (the caller made them).

        ``with_choice=True`` returns ``(x, EpsChoice or None)``.
        """
        if image.numel() == 0:
            x = torch.empty_like(image)
            return (x, choice.empty(self, image)) if with_choice else x
        if self.rule is not None:
            if self.boundary != "circular":
                x, chosen = choice.padded_solve(self, image)
            else:
                x, chosen = choice.circular_solve(self, image)
            self.last_choice = chosen
            return (x, chosen) if with_choice else x
        if self.boundary != "circular":
            x = padded.padded_solve(self, image)
        else:
            y = image.to(self.dtype)
            if self.bias is not None:
                y = y - self.bias[:, None, None]
            x = execution.deconv2d(y, self._solve_spectrum, self._reg_op, self._eps_op,
                                   self.thresh)
        if self._out_scale is not None:
            x = x * self._out_scale
        if self._guard is not None:
            x = x + self._guard.to(x.dtype)
        x = x.to(image.dtype)
        return (x, None) if with_choice else x

    def filter_spectrum(self, rows: Optional[slice] = None) -> torch.Tensor:
        """The per-frequency factor ``X / Y`` of the circular solve, half spectrum.

        Parameters
        ----------
        rows : slice, optional
            Rows (dim -2) of the half spectrum to compute, default all: a
            caller short of memory asks for a few rows at a time.

        Returns
        -------
        Tensor (..., len(rows), W // 2 + 1), complex: ``conj(K) / (|K|^2 + eps
        |R|^2)``, or the thresholded ``1 / K`` (``method="pinv"``, and where
        ``eps |R|^2 = 0``) -- exactly the factor ``__call__`` applies, since it
        is that solve of ``Y = 1``.

        Raises
        ------
        ValueError
            For a plan whose filter is not one fixed factor: a non-circular
            boundary (pad, solve, crop) or an eps rule (chosen per call).
        """
        if self.boundary != "circular" or self.rule is not None:
            raise ValueError(f"filter_spectrum needs a circular plan with a fixed eps; this one "
                             f"has boundary={self.boundary!r}, eps={self.eps!r}")
        rows = slice(None) if rows is None else rows
        k = self._solve_spectrum[..., rows, :]
        reg = self._reg_op
        if isinstance(reg, torch.Tensor) and reg.dim() >= 2 and reg.shape[-2] > 1:
            reg = reg[..., rows, :]
        # Y = 1 as a broadcast view: the solve allocates only its output.
        ones = torch.ones((), dtype=k.dtype, device=k.device).expand(k.shape)
        g = execution.ops.spectral_solve(ones, k, reg, self._eps_op, self.thresh)
        return g * self._out_scale if self._out_scale is not None else g

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """The forward model ``x (*) psf`` (+ bias for conv plans), (..., H, W)."""
        return self._apply(x, conj=False, add_bias=True)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint of the (linear part of the) forward model, (..., H, W)."""
        return self._apply(y, conj=True, add_bias=False)

    def _apply(self, x: torch.Tensor, conj: bool, add_bias: bool) -> torch.Tensor:
        self._check(x, "x" if not conj else "y")
        if x.numel() == 0:
            return torch.empty_like(x)
        if self.boundary != "circular":
            return padded.plan_apply(self, x, adjoint=conj)
        out = execution.filter2d(x.to(self.dtype), self.spectrum, conj)
        if add_bias and self.bias is not None:
            out = out + self.bias[:, None, None]
        return out.to(x.dtype)
