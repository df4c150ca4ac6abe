"""``deconvolve`` for a non-circular boundary or a non-default solver."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..maths import spectral
from ..plans import DeconvPlan, cache
from ..plans.choice import check_systems as choice_checks
from .cg import DEFAULT_MAX_ITER, Problem, residual_info
from .dct import dct_deconvolve
from .operators import ConvOperator
from .precond import auto_precond, make_precond

__all__ = ["deconvolve_boundary"]


def _reg_kernel(reg, dtype, device):
    if reg is None:
        return None
    if isinstance(reg, str):
        return torch.tensor(spectral.LAPLACIAN, dtype=dtype, device=device)
    return reg.to(dtype=dtype, device=device)


def deconvolve_boundary(image: torch.Tensor, psf: torch.Tensor, eps, method: str, reg,
                        boundary: str, rcond, solver: str, tol: float, max_iter: Optional[int],
                        taper: Optional[int], precond: str, return_info: bool,
                        noise_std=None, eps_per: str = "plane"):
    """``deconvolve`` for a non-circular boundary or a non-default solver (validated inputs).

    * ``solver="fft"``: the padded fast path (``DeconvPlan(boundary=...)``);
    * ``solver="dct"``: :func:`dct_deconvolve` (``boundary="symmetric"`` only);
    * ``solver="cg"``: :func:`cgls` on ``A_b`` (:class:`~deconv_ext.solvers.operators.ConvOperator`),
      preconditioned per ``precond``, warm-started from the padded fast
      solve when ``eps > 0``.

    ``eps`` may name a rule (``solver="fft"`` only): the plan chooses it per
    system and the SolveInfo carries the choice.

    Returns ``x`` or ``(x, SolveInfo)``.
    """
    if solver == "cg" and psf.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("gradients w.r.t. the PSF through solver='cg' are not "
                                  "supported (only w.r.t. the image); use solver='fft' or "
                                  "detach the PSF")
    dtype = spectral.compute_dtype(image.dtype)
    size = tuple(image.shape[-2:])
    psf_c = psf.to(dtype)
    eps_eff = 0.0 if method == "pinv" else eps
    need_op = solver == "cg" or return_info
    # The direct solves' info is measured with the PSF's own operator (CG builds a scaled one).
    op = ConvOperator(psf_c, size, boundary, dtype) if return_info and solver != "cg" else None
    reg_k = _reg_kernel(reg, dtype, image.device)
    reg_op = ConvOperator(reg_k, size, boundary, dtype) if need_op and reg_k is not None else None
    info = None
    chosen = None
    if solver == "fft":
        # Repeated calls with the same small PSF reuse the plan.
        plan = cache.cached_plan(
            psf, ("padded", size, dtype, eps, method, reg, rcond, boundary, taper, noise_std,
                  eps_per),
            lambda: DeconvPlan(psf_c, size, eps=eps, method=method, reg=reg, rcond=rcond,
                               dtype=dtype, boundary=boundary, taper=taper,
                               noise_std=noise_std, eps_per=eps_per))
        if plan.rule is not None:
            choice_checks(plan, image)
        x, chosen = plan._solve(image, with_choice=True)
        if chosen is not None:
            # The per-system eps, as the exact operators below broadcast it.
            eps_eff = chosen.eps.to(dtype).reshape(*chosen.eps.shape,
                                                   *([1] * (image.dim() - chosen.eps.dim())))
    elif solver == "dct":
        x = dct_deconvolve(image.to(dtype), psf_c, eps=eps_eff, method=method, reg=reg,
                           rcond=rcond)
    else:
        # CG squares the operator and the residuals: a PSF or an image far
        # from 1 would overflow (or underflow) float32 norms. Solve for
        # u = 2^(m - k) x with the PSF times 2^k, the image times 2^m and eps
        # times 4^k instead (exact powers of two: the same maths and the same
        # iterates, scaled), then scale back.
        y = image.to(dtype)
        k, m = spectral.scale_exponent(psf_c), spectral.scale_exponent(y)
        psf_s, eps_s = psf_c * 2.0 ** k, eps_eff * 4.0 ** k
        op = ConvOperator(psf_s, size, boundary, dtype)
        pname = auto_precond(boundary, psf_c) if precond == "auto" else (None if precond == "none" else precond)
        # eps = 0 asks for the minimum-norm least-squares solution: only plain
        # CGLS from 0 converges to it (see cgls), so no preconditioner then.
        if eps_eff == 0:
            pname = None
        pc = make_precond(pname, psf_s, size, eps_s, reg, dtype)
        x0_fn = None
        if eps_eff > 0 and boundary != "circular":
            # The padded fast solve is close to the answer away from the edges:
            # starting there saves iterations (the solution is unique for eps > 0).
            warm = DeconvPlan(psf_s, size, eps=eps_s, method="tikhonov", reg=reg, rcond=rcond,
                              dtype=dtype, boundary=boundary)
            x0_fn = warm
        problem = Problem(op, eps_s, reg_op, pc, tol,
                           DEFAULT_MAX_ITER if max_iter is None else max_iter, x0_fn)
        u, info = problem.run(y * 2.0 ** m)
        x = u * 2.0 ** (k - m)
    x = x.to(image.dtype)
    if not return_info:
        return x
    if info is None:
        with torch.no_grad():
            info = residual_info(op, image.to(dtype), x.to(dtype), eps_eff, reg_op, solver)
    if chosen is not None:
        info = dataclasses.replace(info, eps=chosen.eps, objective=chosen.objective,
                                   rule=chosen.rule, noise_std=chosen.noise_std)
    return x, info
