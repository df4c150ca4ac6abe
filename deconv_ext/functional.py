"""Public functions: validate, normalise shapes, get a plan, call the ops."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import _validate as V
from . import backend, multichannel, reference
from .plan import DeconvPlan

__all__ = ["deconvolve", "convolve", "conv2d_pinv", "conv2d_svdvals", "conv2d_opnorm",
           "conv2d_cond"]


def _check_boundary(boundary: str) -> str:
    V.choice("boundary", boundary, V.BOUNDARIES)
    if boundary != "circular":
        raise NotImplementedError(f"boundary={boundary!r} is not implemented yet; "
                                  f"only 'circular' is available")
    return boundary


def deconvolve(image: torch.Tensor, psf: torch.Tensor, eps: Union[float, torch.Tensor] = 1e-2,
               method: str = "tikhonov", reg: Union[None, str, torch.Tensor] = None,
               boundary: str = "circular", rcond: Optional[float] = None) -> torch.Tensor:
    """Undo a 2D blur: regularised inverse of ``blurred = image (*) psf``.

    Model: a true circular convolution with the PSF's origin at pixel
    ``(kh // 2, kw // 2)``, as in ``scipy.ndimage.convolve(mode="wrap")`` and
    ``skimage.restoration.wiener``.

    Parameters
    ----------
    image : Tensor (..., H, W)
        The blurred observation; float16/bfloat16/float32/float64. Leading
        dims are batch/channel dims.
    psf : Tensor (kh, kw) or (..., kh, kw)
        Shared, per-channel ``(C, kh, kw)`` or per-sample ``(N, C, kh, kw)``
        kernel; its leading dims broadcast **to** the image's (never enlarging
        the output). ``kh <= H``, ``kw <= W``.
    eps : float or Tensor, default 1e-2
        Regularisation weight ``>= 0``, or a real non-negative tensor
        broadcastable to ``(..., H, W)`` in ``fft2`` frequency layout (a
        per-frequency noise-to-signal ratio: the Wiener filter).
    method : {"tikhonov", "pinv"}
    reg : None, "laplacian" or Tensor
        Regulariser: identity, the 3x3 Laplacian, or any 2D kernel.
    boundary : {"circular"}
        The forward model's boundary.
    rcond : float in [0, 1), optional
        Relative threshold of the pseudo-inverse; default
        ``10 * max(H, W) * finfo(dtype).eps``.

    Returns
    -------
    Tensor (..., H, W), the image's shape, dtype and device.

    Notes
    -----
    Per frequency ``w`` with ``K`` the PSF's transfer function and ``R`` the
    regulariser's, Tikhonov solves ``X = conj(K) Y / (|K|^2 + eps |R|^2)``.
    Where ``eps |R|^2 = 0`` (``method="pinv"``, ``eps = 0``, or the
    Laplacian's DC term) the Moore-Penrose pseudo-inverse is used instead:
    ``X = Y / K`` where ``|K| > rcond * sigma_max``, else 0. Zero denominators
    give 0, never NaN. With ``reg="laplacian"`` and ``eps=balance`` this equals
    ``skimage.restoration.wiener(image, psf, balance, clip=False)``.
    Non-finite values in ``image`` propagate as they would through an FFT.

    References
    ----------
    .. [1] A. N. Tikhonov, V. Y. Arsenin, "Solutions of Ill-Posed Problems", 1977.
    .. [2] H. Sedghi, V. Gupta, P. M. Long, "The Singular Values of
       Convolutional Layers", ICLR 2019.
    """
    V.image(image)
    V.kernel(psf, image.shape)
    V.same_device("psf", psf, "image", image)
    V.choice("method", method, V.METHODS)
    _check_boundary(boundary)
    V.reg(reg, image.shape)
    V.eps(eps, tuple(image.shape[-2:]))
    V.rcond(rcond)
    if image.numel() == 0:
        return torch.empty_like(image)
    if backend.selected() == "torch":
        return reference.deconvolve(image, psf, eps=eps, method=method, reg=reg, rcond=rcond)
    dtype = reference.compute_dtype(image.dtype)
    plan = DeconvPlan(psf.to(dtype), tuple(image.shape[-2:]), eps=eps, method=method, reg=reg,
                      rcond=rcond, dtype=dtype)
    return plan(image)


def convolve(image: torch.Tensor, psf: torch.Tensor, boundary: str = "circular") -> torch.Tensor:
    """The forward blur ``image (*) psf`` (true convolution, origin ``(kh//2, kw//2)``).

    Parameters
    ----------
    image : Tensor (..., H, W)
    psf : Tensor (kh, kw) or (..., kh, kw), broadcastable to the image's leading dims
    boundary : {"circular"}

    Returns
    -------
    Tensor (..., H, W) in the image's dtype.
    """
    V.image(image)
    V.kernel(psf, image.shape)
    V.same_device("psf", psf, "image", image)
    _check_boundary(boundary)
    if image.numel() == 0:
        return torch.empty_like(image)
    if backend.selected() == "torch":
        return reference.convolve(image, psf)
    dtype = reference.compute_dtype(image.dtype)
    return DeconvPlan(psf.to(dtype), tuple(image.shape[-2:]), method="pinv", dtype=dtype).blur(image)


def conv2d_pinv(output: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                groups: int = 1, dilation=1, padding: str = "same",
                padding_mode: str = "circular", eps: float = 0.0,
                rcond: Optional[float] = None) -> torch.Tensor:
    """Pseudo-inverse (or Tikhonov inverse) of a stride-1 ``F.conv2d`` layer.

    Forward model: ``output = F.conv2d(F.pad(input, pads, mode="circular"),
    weight, bias, dilation=dilation, groups=groups)`` with the padding of
    ``padding="same"`` (total ``dilation * (k - 1)``, left half rounded down).

    Parameters
    ----------
    output : Tensor (N, C_out, H, W) or (C_out, H, W)
    weight : Tensor (C_out, C_in / groups, kh, kw)
        Any layer: ``C_out`` and ``C_in`` in any ratio, ``groups`` dividing
        ``C_out``, any dilation; the dilated kernel must fit in (H, W).
    bias : Tensor (C_out,), optional
    groups : int
    dilation : int or (int, int)
    padding : {"same"}
    padding_mode : {"circular"}
    eps : float >= 0
        0 gives the Moore-Penrose pseudo-inverse; > 0 Tikhonov.
    rcond : float in [0, 1), optional
        Singular values at or below ``rcond * sigma_max`` (largest singular
        value of the whole operator) are dropped; default
        ``10 * max(H, W) * finfo(dtype).eps``. Ignored if ``eps > 0``.

    Returns
    -------
    Tensor (N, C_in, H, W) (or (C_in, H, W)), ``output``'s dtype.

    Notes
    -----
    Per frequency ``w`` (half spectrum) the layer is a ``C_out x C_in`` matrix
    ``K(w)`` (block-diagonal over the groups). ``eps == 0`` applies its
    pseudo-inverse ``K(w)^+`` with one global threshold: the result equals
    ``torch.linalg.pinv(A, rtol=rcond) @ (y - b)`` for the dense operator
    ``A`` -- the minimum-norm solution when ``C_out < C_in``, the least-squares
    one when ``C_out > C_in``. ``eps > 0`` applies
    ``(K^H K + eps I)^-1 K^H`` (on the smaller side), the minimiser of
    ``||conv(x) - y||^2 + eps ||x||^2``. Depthwise layers are solved
    element-wise; other layers by :class:`deconv_ext.multichannel.MultiChannelPlan`
    """
    V.image(output, "output")
    if output.dim() not in (3, 4):
        raise ValueError(f"output has shape {tuple(output.shape)}; expected (N, C_out, H, W) or "
                         f"(C_out, H, W)")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (C_out, C_in / groups, kh, kw)")
    if output.shape[-3] != weight.shape[0]:
        raise ValueError(f"output has {output.shape[-3]} channels but weight has C_out="
                         f"{weight.shape[0]}; expected them equal")
    V.same_device("weight", weight, "output", output)
    multichannel.check_conv_weight(weight, groups, V.pair("dilation", dilation),
                                   tuple(output.shape[-2:]))
    if padding != "same":
        raise ValueError(f"padding={padding!r} is not valid; expected 'same'")
    V.choice("padding_mode", padding_mode, ("circular",))
    eps = V.eps(eps, tuple(output.shape[-2:]))
    V.rcond(rcond)
    if isinstance(eps, torch.Tensor):
        raise TypeError("conv2d_pinv takes a scalar eps")
    if backend.selected() == "torch":
        return reference.conv2d_pinv(output, weight, bias, groups=groups, dilation=dilation,
                                     eps=eps, rcond=rcond)
    dtype = reference.compute_dtype(output.dtype)
    plan = DeconvPlan.for_conv2d(weight.to(dtype), tuple(output.shape[-2:]), groups=groups,
                                 dilation=dilation, bias=bias, eps=eps, rcond=rcond)
    return plan(output)


def _layer_args(weight, input_size, groups, dilation):
    size = V.size2("input_size", input_size)
    dil = V.pair("dilation", dilation)
    multichannel.check_conv_weight(weight, groups, dil, size)
    return weight.to(reference.compute_dtype(weight.dtype)), size, int(groups), dil


def conv2d_svdvals(weight: torch.Tensor, input_size, groups: int = 1, dilation=1) -> torch.Tensor:
    """Every singular value of a stride-1 circular "same" conv layer.

    Parameters
    ----------
    weight : Tensor (C_out, C_in / groups, kh, kw)
    input_size : (H, W)
    groups : int, dividing C_out
    dilation : int or (int, int)

    Returns
    -------
    Tensor (H * W * groups * min(C_out/groups, C_in/groups),), real, sorted
    descending: exactly ``torch.linalg.svdvals(A)`` of the dense
    ``(C_out H W) x (C_in H W)`` operator ``A`` (float16/bfloat16 weights are
    computed in float32).

    Notes
    -----
    ``A`` is block-diagonalised by the 2D DFT: its singular values are those
    of the ``C_out x C_in`` matrices ``K(w)`` over all ``H W`` frequencies
    (block-diagonal over the groups) [1]_. They are computed on the ``rfft2``
    half spectrum; a column ``w`` other than 0 (and ``W/2`` for even ``W``)
    also stands for its mirror ``-w`` (``K(-w) = conj(K(w))``) and is counted
    twice. Differentiable w.r.t. ``weight`` (where the values are distinct).

    References
    ----------
    .. [1] H. Sedghi, V. Gupta, P. M. Long, "The Singular Values of
       Convolutional Layers", ICLR 2019.
    """
    w, size, groups, dil = _layer_args(weight, input_size, groups, dilation)
    if backend.selected() == "torch":
        return reference.conv2d_svdvals(w, size, groups, dil)
    return multichannel.svdvals(w, size, groups, dil)


def conv2d_opnorm(weight: torch.Tensor, input_size, groups: int = 1, dilation=1) -> torch.Tensor:
    """Operator 2-norm (largest singular value, Lipschitz constant) of a conv layer.

    Same model and arguments as :func:`conv2d_svdvals`; returns a 0-dim
    tensor, computed block by block without storing every ``K(w)``.
    """
    w, size, groups, dil = _layer_args(weight, input_size, groups, dilation)
    return multichannel.opnorm(w, size, groups, dil)


def conv2d_cond(weight: torch.Tensor, input_size, groups: int = 1, dilation=1) -> torch.Tensor:
    """2-norm condition number ``sigma_max / sigma_min`` of a conv layer.

    Over the ``H W groups min(C_out/groups, C_in/groups)`` singular values of
    :func:`conv2d_svdvals` (as ``torch.linalg.cond`` of the dense operator);
    ``inf`` when ``sigma_min == 0``. Returns a 0-dim tensor.
    """
    s = conv2d_svdvals(weight, input_size, groups, dilation)
    return s[0] / s[-1] if bool(s[-1] > 0) else torch.full_like(s[0], float("inf"))
