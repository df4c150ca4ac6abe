"""Public functions: check the arguments, get a plan (or a solver), apply it."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import validation as V
from .maths import spectral
from .plans import DeconvPlan, cache
from .plans.layer_spectra import opnorm, svdvals
from .solvers import PRECONDS, conv2d_chosen, conv2d_exact, deconvolve_boundary

__all__ = ["deconvolve", "convolve", "conv2d_pinv", "conv2d_svdvals", "conv2d_opnorm",
           "conv2d_cond"]


def _check_boundary(boundary: str) -> str:
    return V.choice("boundary", boundary, V.BOUNDARIES)


def deconvolve(image: torch.Tensor, psf: torch.Tensor,
               eps: Union[float, str, torch.Tensor] = 1e-2, method: str = "tikhonov",
               reg: Union[None, str, torch.Tensor] = None, boundary: str = "circular",
               rcond: Optional[float] = None, *, solver: str = "fft", tol: float = 1e-6,
               max_iter: Optional[int] = None, taper: Optional[int] = None,
               precond: str = "auto", noise_std=None, eps_per: str = "plane",
               return_info: bool = False, check_finite: bool = False):
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
    eps : float, str or Tensor, default 1e-2
        Regularisation weight ``>= 0``; a real non-negative tensor
        broadcastable to ``(..., H, W)`` in ``fft2`` frequency layout (a
        per-frequency noise-to-signal ratio: the Wiener filter); or the name
        of a rule that chooses it from each image (Notes): ``"auto"``,
        ``"gcv"``, ``"discrepancy"``, ``"lcurve"``, ``"upre"``, ``"risk"``
        (``method="tikhonov"`` and ``solver="fft"`` only).
        A NaN, Inf or negative value in an eps tensor is a ``ValueError``;
        under ``torch.compile``, where checking the values would cost a host
        sync and a graph break, it makes the whole result NaN instead.
    method : {"tikhonov", "pinv"}
    reg : None, "laplacian" or Tensor
        Regulariser: identity, the 3x3 Laplacian, or any 2D kernel, finite
        (NaN/Inf: a ``ValueError``, under ``torch.compile`` a NaN result).
    boundary : {"circular", "reflect", "symmetric", "replicate", "zeros"}
        The forward model's boundary: how the blur extended the image past
        its edges (names of ``F.pad``; "symmetric" repeats the edge pixel,
        "reflect" does not). Non-circular models are
        ``A_b x = crop(circ_conv(pad_b(x)))``, i.e.
        ``scipy.ndimage.convolve`` with mode "mirror", "reflect", "nearest",
        "constant" respectively (see :func:`convolve`).
    rcond : float in [0, 1), optional
        Relative threshold of the pseudo-inverse; default
        ``10 * max(H, W) * finfo(dtype).eps``. Not used by ``solver="cg"``.
    solver : {"fft", "cg", "dct"}, keyword-only
        * ``"fft"`` (default): the FFT solve. Circular: exact. Otherwise the
          fast approximation: the observation is extended by the boundary
          rule by at least the PSF's half size per side up to a fast FFT
          size, solved circularly and cropped; ringing stays near the edges.
        * ``"cg"``: the solution, to ``tol``, of the exact model's
          ``min ||A_b x - y||^2 + eps ||R_b x||^2`` (``eps = 0`` or
          ``method="pinv"``: the minimum-norm least-squares solution) by
          conjugate gradients on the normal equations (CGLS), preconditioned
          per ``precond``, batched (each image plane stops on its own).
          Differentiable w.r.t. ``image`` (one more CG solve backward).
        * ``"dct"``: direct exact solve for ``boundary="symmetric"`` with a
          PSF symmetric in each axis (the DCT-II diagonalises it).
    tol : float > 0, default 1e-6, keyword-only
        CG stops when ``||r|| <= tol ||A^T y||``, with
        ``r = A^T (y - A x) - eps R^T R x`` the normal-equations residual.
        For the minimum-norm solution (``eps = 0`` or ``method="pinv"``) a
        small residual alone does not bound the error (``A^T A`` has no
        lower bound), so CG also needs the estimated bound of the relative
        error ``||x - A^+ y|| / ||x||`` (``SolveInfo.error``, the residual
        over the smallest Ritz value of ``A^T A``) to be ``<= tol``; an
        ill-conditioned operator then takes more iterations, and a tol that
        the dtype cannot certify stops early with a ``RuntimeWarning``
        (see :func:`deconv_ext.solvers.cg.cgls`).
    max_iter : int >= 1, optional, keyword-only
        CG iteration cap (default 1000). If a plane does not converge, its
        last iterate is returned with a ``RuntimeWarning`` stating the
        residual (and error bound) reached.
    taper : int >= 0, optional, keyword-only
        Fast path only: blend the extended border toward the image mean over
        this many pixels (reduces residual ringing).
    precond : {"auto", "dct", "fft", "none"}, keyword-only
        CG preconditioner: ``M = A_c^T A_c + eps R_c^T R_c`` with ``A_c`` the
        Neumann (DCT) or circulant (FFT) approximation of ``A_b``. "auto"
        picks the one measured best (:func:`deconv_ext.solvers.precond.auto_precond`:
        FFT for circular, DCT for symmetric/zeros with an axis-symmetric PSF,
        FFT for zeros otherwise, none for reflect/replicate, where both
        transforms add iterations); none when ``eps = 0`` (preconditioning
        would lose the minimum-norm property).
    noise_std : float > 0 or Tensor, optional, keyword-only
        With a rule that uses a noise level (``"discrepancy"``, ``"upre"``,
        ``"risk"``, and ``"auto"`` where it does): the standard deviation of
        the additive white noise in image units, a float or a tensor with one
        value per system (broadcastable to ``image.shape[:-2]``, or
        ``[:-3]`` with ``eps_per="sample"``). None estimates it from each
        image's spectrum (the median power where the blur damps most).
    eps_per : {"plane", "sample"}, default "plane", keyword-only
        With a rule: one eps per ``(H, W)`` plane, each chosen on its own,
        or ``"sample"``: one per sample, shared by its channels (dim -3),
        chosen from the rule's sums over the whole sample.
    return_info : bool, default False, keyword-only
        Also return a :class:`deconv_ext.SolveInfo` (iterations,
        relative normal-equations residual and convergence flag per image
        plane; 0 iterations for the direct solvers), like
        ``scipy.sparse.linalg.cg``'s ``(x, info)``. With a rule it also
        holds the chosen ``eps``, the rule's ``objective`` there, the
        ``rule`` that ran and the ``noise_std`` it used, one entry per system.
    check_finite : bool, default False, keyword-only
        Check ``image``, ``psf`` (and a tensor ``reg``) for NaN/Inf first and
        raise a ``ValueError`` naming the argument (one extra pass over the
        data). By default non-finite values are not checked: they propagate
        as through an FFT, i.e. a single NaN/Inf pixel typically makes the
        whole output plane (and with a shared PSF only that plane) NaN.

    Returns
    -------
    Tensor (..., H, W), the image's shape, dtype and device; with
    ``return_info=True`` a tuple ``(x, info)``.

    Notes
    -----
    Per frequency ``w`` with ``K`` the PSF's transfer function and ``R`` the
    regulariser's, Tikhonov solves ``X = conj(K) Y / (|K|^2 + eps |R|^2)``.
    Where ``eps |R|^2 = 0`` (``method="pinv"``, ``eps = 0``, or the
    Laplacian's DC term) the Moore-Penrose pseudo-inverse is used instead:
    ``X = Y / K`` where ``|K| > rcond * sigma_max``, else 0. Zero denominators
    give 0, never NaN. With ``reg="laplacian"`` and ``eps=balance`` this equals
    ``skimage.restoration.wiener(image, psf, balance, clip=False)``.
    Non-finite values in ``image`` propagate as they would through an FFT
    (every output pixel of that image plane may become NaN) unless
    ``check_finite=True``.

    The solve is scale invariant: a PSF scaled by ``s`` with ``eps`` scaled
    by ``s**2`` gives the result divided by ``s``, in float32 too for PSF
    values far from 1 (the PSF is brought near 1 by an exact power of two
    first; eagerly, not under ``torch.compile``). A positive ``eps`` below
    the dtype's smallest normal number (a subnormal) acts as that number.

    **Choosing eps.** A rule name chooses eps per image from the spectrum the
    solve computes anyway (no extra FFT on the circular boundary), in closed
    form: with ``f = |K|^2 / (|K|^2 + eps |R|^2)``, ``g = 1 - f`` per
    frequency and ``N`` pixels,
    ``||y - A x||^2 = sum g^2 |Y|^2 / N`` and ``trace(A A_eps^+) = sum f``.

    * ``"gcv"`` (generalised cross-validation [3]_): minimise
      ``N ||y - A x||^2 / (N - trace)^2``; needs no noise level; assumes white
      noise and the right forward model.
    * ``"discrepancy"`` (Morozov [4]_): the eps where
      ``||y - A x||^2 = N noise_std^2``; assumes white noise of known (or
      estimated) level; slightly over-smooths.
    * ``"lcurve"`` (Hansen [5]_, [6]_): the corner (maximum curvature) of
      ``(log ||y - A x||, log ||R x||)``; needs no noise level; unreliable
      for smooth solutions and large images.
    * ``"upre"`` (Mallows' C_L) and ``"risk"`` (an unbiased estimate of the
      solution error ``||x_eps - x||^2``) need the noise level.
    * ``"auto"``: :data:`deconv_ext.maths.parameter_choice.AUTO_RULE` -- see
      that module for the rule and the measurements behind it.

    Every rule falls back to eps = 1e-2 with a ``RuntimeWarning`` where its
    objective is flat (a constant or zero image: every eps gives the same
    result). The formulas, the search and the references are in
    :mod:`deconv_ext.maths.parameter_choice`.

    References
    ----------
    .. [1] A. N. Tikhonov, V. Y. Arsenin, "Solutions of Ill-Posed Problems", 1977.
    .. [2] H. Sedghi, V. Gupta, P. M. Long, "The Singular Values of
       Convolutional Layers", ICLR 2019.
    .. [3] G. H. Golub, M. Heath, G. Wahba, "Generalized cross-validation as a
       method for choosing a good ridge parameter", Technometrics 21(2), 1979.
    .. [4] V. A. Morozov, "On the solution of functional equations by the
       method of regularization", Soviet Math. Dokl. 7, 1966.
    .. [5] P. C. Hansen, "Analysis of discrete ill-posed problems by means of
       the L-curve", SIAM Review 34(4), 1992.
    .. [6] P. C. Hansen, D. P. O'Leary, "The use of the L-curve in the
       regularization of discrete ill-posed problems", SIAM J. Sci. Comput.
       14(6), 1993.
    """
    if check_finite:
        V.finite("image", image)
        V.finite("psf", psf)
        V.finite("reg", reg)
    V.image(image)
    V.kernel(psf, image.shape)
    V.same_device("psf", psf, "image", image)
    V.choice("method", method, V.METHODS)
    _check_boundary(boundary)
    V.reg(reg, image.shape)
    V.eps_or_rule(eps, tuple(image.shape[-2:]))
    V.broadcasts_to("eps", eps if isinstance(eps, torch.Tensor) else None, image.shape, "image")
    noise_std, eps_per = V.eps_rule_args(eps, method, noise_std, eps_per)
    V.rcond(rcond)
    V.choice("solver", solver, V.SOLVERS)
    V.tol(tol)
    V.max_iter(max_iter)
    V.taper(taper)
    V.choice("precond", precond, PRECONDS)
    rule = eps if isinstance(eps, str) else None
    if rule is not None:
        V.rule_solver(rule, solver)
    if boundary != "circular" or solver != "fft" or return_info or taper or rule:
        if isinstance(eps, torch.Tensor):
            raise ValueError("a tensor eps (per-frequency Wiener weights) needs boundary='circular' "
                             "and solver='fft'; pass a float eps")
        if solver == "dct" and boundary != "symmetric":
            raise ValueError(f"solver='dct' solves boundary='symmetric' exactly; got "
                             f"boundary={boundary!r} (use solver='cg' or 'fft')")
        if taper and boundary == "circular":
            raise ValueError("taper= applies to the padded fast path of a non-circular boundary; "
                             "boundary='circular' has no border to taper")
        if image.numel() == 0 and rule is None:
            x = torch.empty_like(image)
            return (x, None) if return_info else x
        return deconvolve_boundary(image, psf, eps, method, reg, boundary, rcond, solver, tol,
                                   max_iter, taper, precond, return_info, noise_std, eps_per)
    if image.numel() == 0:
        return torch.empty_like(image)
    dtype = spectral.compute_dtype(image.dtype)
    size = tuple(image.shape[-2:])
    plan = cache.cached_plan(
        psf, (size, dtype, eps, method, reg, rcond),
        lambda: DeconvPlan(psf.to(dtype), size, eps=eps, method=method, reg=reg, rcond=rcond,
                           dtype=dtype))
    return plan._solve(image)  # the arguments are checked above


def convolve(image: torch.Tensor, psf: torch.Tensor, boundary: str = "circular", *,
             check_finite: bool = False) -> torch.Tensor:
    """The forward blur ``image (*) psf`` (true convolution, origin ``(kh//2, kw//2)``).

    Parameters
    ----------
    image : Tensor (..., H, W)
    psf : Tensor (kh, kw) or (..., kh, kw), broadcastable to the image's leading dims
    boundary : {"circular", "reflect", "symmetric", "replicate", "zeros"}
        ``A_b x = crop(circ_conv(pad_b(x)))``: the image is extended by the
        rule ``b`` by ``kh - 1 - kh // 2`` rows above and ``kh // 2`` below
        (likewise for columns), blurred, and the (H, W) window is kept. This
        equals ``scipy.ndimage.convolve(image, psf, mode=m)`` with ``m`` =
        "wrap", "mirror", "reflect", "nearest", "constant" respectively, and
        is the model that ``deconvolve(..., boundary=b, solver="cg")`` inverts.
    check_finite : bool, default False, keyword-only
        Raise a ``ValueError`` naming the argument if ``image`` or ``psf``
        holds NaN/Inf. By default they propagate as through an FFT.

    Returns
    -------
    Tensor (..., H, W) in the image's dtype.
    """
    if check_finite:
        V.finite("image", image)
        V.finite("psf", psf)
    V.image(image)
    V.kernel(psf, image.shape)
    V.same_device("psf", psf, "image", image)
    _check_boundary(boundary)
    if image.numel() == 0:
        return torch.empty_like(image)
    dtype = spectral.compute_dtype(image.dtype)
    size = tuple(image.shape[-2:])
    plan = cache.cached_plan(
        psf, ("blur", size, dtype, boundary),
        lambda: DeconvPlan(psf.to(dtype), size, method="pinv", dtype=dtype, boundary=boundary))
    return plan.blur(image)


def conv2d_pinv(output: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                groups: int = 1, dilation=1, padding: str = "same",
                padding_mode: str = "circular", eps: Union[float, str] = 0.0,
                rcond: Optional[float] = None, *, solver: Optional[str] = None,
                tol: float = 1e-6, max_iter: Optional[int] = None, precond: str = "auto",
                noise_std=None, return_info: bool = False, check_finite: bool = False):
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
    padding : {"same", "valid"}
        As ``nn.Conv2d`` (stride 1). "valid": no padding, the input is
        ``dilation * (k - 1)`` larger than the output.
    padding_mode : {"circular", "zeros", "reflect", "replicate"}
        As ``nn.Conv2d``. Anything but circular "same" (or ``solver="cg"``)
        is solved exactly by conjugate gradients
        (:func:`deconv_ext.solvers.layer.conv2d_exact`): the Tikhonov problem
        ``min ||conv(x) - (output - bias)||^2 + eps ||x||^2``, or for
        ``eps = 0`` its minimum-norm least-squares solution.
    check_finite : bool, default False, keyword-only
        Raise a ``ValueError`` naming the argument if ``output``, ``weight``
        or ``bias`` holds NaN/Inf. By default non-finite values propagate as
        through an FFT (the affected samples' outputs become NaN).
    solver : {None, "fft", "cg"}, keyword-only
        None: "fft" for circular "same" (the exact per-frequency solve), "cg"
        otherwise. "fft" with another padding_mode: the padded fast
        approximation (depthwise "same" layers only).
    tol, max_iter, precond, return_info : keyword-only
        As in :func:`deconvolve` (CG stopping rule, with an error bound for
        ``eps = 0``; iteration cap with a RuntimeWarning and the last iterate
        if not converged; preconditioner;
        and ``(x, SolveInfo)`` output; multi-channel layers have one system
        per sample and no transform preconditioner).
    eps : float >= 0 or str
        0 gives the Moore-Penrose pseudo-inverse; > 0 Tikhonov; or the name
        of a rule that chooses a Tikhonov eps per sample (Notes): ``"gcv"``,
        ``"discrepancy"``, ``"lcurve"``, ``"upre"``, ``"risk"``, ``"auto"``
        (the discrepancy principle here: the identity regulariser is no
        smoothness prior). Rules need circular ``"same"`` padding and the
        FFT solve.
    rcond : float in [0, 1), optional
        Singular values at or below ``rcond * sigma_max`` (largest singular
        value of the whole operator) are dropped; default
        ``10 * max(H, W) * finfo(dtype).eps``. Ignored if ``eps > 0`` or a rule.
    noise_std : float > 0 or Tensor, optional, keyword-only
        With a rule that uses a noise level (``"discrepancy"``, ``"upre"``,
        ``"risk"``, ``"auto"``): the standard deviation of the white noise on
        ``output``, a float or one value per sample (shape ``(N,)``); None
        estimates it from each sample (the median power of the components
        of the smallest singular values).

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
    element-wise; other layers by :class:`deconv_ext.LayerPlan`
    (memory rule and fused C++ channel mixing documented there).

    **Choosing eps.** With ``K(w) = U diag(s) V^H`` per frequency and
    ``z = U^H Y(w)``, the influence matrix ``A A_eps^+`` of the whole
    operator has the eigenvalues ``s_i^2 / (s_i^2 + eps)``, so GCV [1]_,
    ``N ||(I - A A_eps^+) y||^2 / trace(I - A A_eps^+)^2`` with
    ``N = C_out H W``, is in closed form:
    ``||(I - A A_eps^+) y||^2 = sum_w c(w) [sum_i (eps / (s_i^2 + eps))^2
    |z_i|^2 + ||P_perp Y(w)||^2] / (H W)`` (``P_perp Y``: the part of the
    data outside ``range(K(w))``, when ``C_out`` exceeds the rank) and
    ``trace(I - A A_eps^+) = sum_w c(w) [C_out - sum_i s_i^2 / (s_i^2 + eps)]``,
    exact on the half spectrum with the mirrored columns weighted
    (``c(w) = 2``; 1 for the columns 0 and, even ``W``, ``W / 2``). The other
    rules use the same sums (:mod:`deconv_ext.maths.parameter_choice`). Each
    sample gets its own eps; with ``return_info=True`` the
    :class:`~deconv_ext.SolveInfo` holds ``eps``, ``objective``, ``rule``
    and ``noise_std`` per sample (and the direct solve's residual).

    References
    ----------
    .. [1] G. H. Golub, M. Heath, G. Wahba, "Generalized cross-validation as a
       method for choosing a good ridge parameter", Technometrics 21(2),
       215-223, 1979.
    """
    if check_finite:
        V.finite("output", output)
        V.finite("weight", weight)
        V.finite("bias", bias)
    V.image(output, "output")
    if output.dim() not in (3, 4):
        raise ValueError(f"output has shape {tuple(output.shape)}; expected (N, C_out, H, W) or "
                         f"(C_out, H, W)")
    V.choice("padding", padding, V.PADDINGS)
    V.choice("padding_mode", padding_mode, V.PADDING_MODES)
    size = tuple(output.shape[-2:])
    layer = V.conv_layer(weight, groups, dilation, bias, size if padding == "same" else None)
    if output.shape[-3] != layer.c_out:
        raise ValueError(f"output has {output.shape[-3]} channels but weight has C_out="
                         f"{layer.c_out}; expected them equal")
    V.same_device("weight", weight, "output", output)
    eps = V.layer_eps(eps)
    noise_std = V.layer_rule_args(eps, noise_std)
    V.rcond(rcond)
    if solver is not None:
        V.choice("solver", solver, ("fft", "cg"))
    V.tol(tol)
    V.max_iter(max_iter)
    V.choice("precond", precond, PRECONDS)
    circular = padding == "same" and padding_mode == "circular"
    if isinstance(eps, str):
        V.rule_solver(eps, "fft" if solver is None else solver)
        if not circular:
            raise ValueError(f"eps={eps!r} chooses eps on the per-frequency singular values of "
                             f"a circular 'same' layer; got padding={padding!r}, "
                             f"padding_mode={padding_mode!r} (pass a float eps there)")
        if isinstance(noise_std, torch.Tensor):
            V.broadcasts_to("noise_std", noise_std, tuple(output.shape[:-3]),
                            "one value per sample")
        return conv2d_chosen(output, layer, eps, rcond, noise_std, return_info)
    if padding == "valid" and solver == "fft":
        raise ValueError("padding='valid' has no FFT solve; use solver='cg'")
    if solver == "fft" and not circular and (padding == "valid" or not layer.depthwise):
        raise ValueError("solver='fft' for conv2d_pinv with a non-circular padding_mode is the "
                         "padded fast path of depthwise 'same' layers only; use solver='cg'")
    if precond not in ("auto", "none") and not layer.depthwise:
        raise ValueError(f"precond={precond!r} needs a depthwise layer (the transform "
                         f"preconditioners are per channel); use 'auto' or 'none'")
    if output.numel() == 0 and not return_info:
        return output.new_empty((*output.shape[:-3], layer.c_in, *size))
    if not circular or solver == "cg" or return_info:
        # Non-circular / "valid" layers and the CG solver (deconv_ext.solvers.layer).
        return conv2d_exact(output, layer, padding, padding_mode, eps, rcond,
                            "cg" if solver is None else solver, tol, max_iter, precond,
                            return_info)
    dtype = spectral.compute_dtype(output.dtype)
    # Repeated calls with the same layer reuse its plan (the per-frequency
    # SVD costs far more than a solve).
    plan = cache.cached_plan(
        layer.weight, ("layer", size, dtype, layer.groups, layer.dilation, layer.bias, eps, rcond),
        lambda: DeconvPlan._for_layer(layer._replace(weight=layer.weight.to(dtype)), size, eps,
                                      rcond))
    return plan(output)


def _layer_args(weight, input_size, groups, dilation):
    size = V.size2("input_size", input_size)
    layer = V.conv_layer(weight, groups, dilation, None, size)
    return (layer.weight.to(spectral.compute_dtype(weight.dtype)), size, layer.groups,
            layer.dilation)


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
    return svdvals(w, size, groups, dil)


def conv2d_opnorm(weight: torch.Tensor, input_size, groups: int = 1, dilation=1) -> torch.Tensor:
    """Operator 2-norm (largest singular value, Lipschitz constant) of a conv layer.

    Same model and arguments as :func:`conv2d_svdvals`; returns a 0-dim
    tensor, computed block by block without storing every ``K(w)``.
    """
    w, size, groups, dil = _layer_args(weight, input_size, groups, dilation)
    return opnorm(w, size, groups, dil)


def conv2d_cond(weight: torch.Tensor, input_size, groups: int = 1, dilation=1) -> torch.Tensor:
    """2-norm condition number ``sigma_max / sigma_min`` of a conv layer.

    Over the ``H W groups min(C_out/groups, C_in/groups)`` singular values of
    :func:`conv2d_svdvals` (as ``torch.linalg.cond`` of the dense operator);
    ``inf`` when ``sigma_min == 0``. Returns a 0-dim tensor.
    """
    s = conv2d_svdvals(weight, input_size, groups, dilation)
    return s[0] / s[-1] if bool(s[-1] > 0) else torch.full_like(s[0], float("inf"))
