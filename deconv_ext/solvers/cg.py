"""Conjugate gradients for the exact solve of non-circular convolutions.

* :func:`cgls`: conjugate gradients on the normal equations of the
  Tikhonov problem ``min_x ||A x - y||^2 + eps ||R x||^2`` (CGLS form: the
  data residual ``s = y - A x`` is carried, and the normal residual
  ``r = A^T s - eps R^T R x`` recomputed from it, which is more stable than
  updating ``A^T A`` products), batched (one step length per image),
  optionally preconditioned by a fast transform solve;
* :func:`pcg`: plain preconditioned CG, for the backward pass;
* :class:`Problem`: one Tikhonov least-squares problem, differentiable w.r.t.
  ``y`` (one more CG solve in the backward pass).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from .info import SolveInfo

__all__ = ["cgls", "pcg", "Problem", "residual_info", "DEFAULT_MAX_ITER"]

DEFAULT_MAX_ITER = 1000


def cgls(op, y: torch.Tensor, eps: float = 0.0, reg_op=None,
         precond: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, tol: float = 1e-6,
         max_iter: int = DEFAULT_MAX_ITER, x0: Optional[torch.Tensor] = None,
         warn: bool = True) -> Tuple[torch.Tensor, SolveInfo]:
    """Solve ``min_x ||A x - y||^2 + eps ||R x||^2`` by (preconditioned) CG on
    the normal equations ``(A^T A + eps R^T R) x = A^T y``.

    Every independent system (the dims ``op.sample_dims`` of one image or
    sample) gets its own step lengths and stops on its own; a stopped system
    keeps its iterate while the others go on. ``eps = 0`` without a
    preconditioner and ``x0 = None`` is CGLS, whose iterates stay in the
    range of ``A^T``: it converges to the minimum-norm least-squares solution
    ``A^+ y`` (a preconditioner or a warm start would lose that property).

    Parameters
    ----------
    op : object with ``matvec`` (x -> A x), ``rmatvec`` (y -> A^T y) and
        ``sample_dims`` (the dims one system spans, e.g. ``(-2, -1)``)
    y : Tensor, the observation (the op's output shape), computation dtype
    eps : float >= 0
    reg_op : op for ``R`` (None: identity)
    precond : callable ``r -> M^-1 r`` (symmetric positive definite), optional
    tol : float > 0; stop when ``||r|| <= tol ||A^T y||``, with
        ``r = A^T (y - A x) - eps R^T R x`` the normal-equations residual
    max_iter : int >= 1
    x0 : initial guess (only meaningful for ``eps > 0``), optional
    warn : bool; a RuntimeWarning with the residual reached when a system did
        not converge

    Returns
    -------
    x : Tensor (the op's input shape); for each system, the iterate of
        smallest residual seen (never NaN unless ``y`` holds NaN/inf)
    info : SolveInfo, per-system iterations, residual, converged flags
    """
    dims = op.sample_dims

    def dot(a, b):
        return (a * b).sum(dim=dims, keepdim=True)

    def normal_residual(s, x, rx):
        r = op.rmatvec(s)
        if eps:
            r = r - eps * (x if reg_op is None else reg_op.rmatvec(rx))
        return r

    b = op.rmatvec(y)
    bnorm = dot(b, b).sqrt()
    bsafe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    if x0 is None:
        x = torch.zeros_like(b)
        s = y.clone()
        rx = None if reg_op is None else reg_op.matvec(x)
        r = b.clone()
    else:
        x = x0.to(b.dtype).clone()
        s = y - op.matvec(x)
        rx = None if reg_op is None else reg_op.matvec(x)
        r = normal_residual(s, x, rx)
    res = dot(r, r).sqrt() / bsafe
    res = torch.where(bnorm > 0, res, torch.zeros_like(res))
    best_x, best_res = x.clone(), res.clone()
    active = (res > tol) & torch.isfinite(res)
    iters = torch.zeros_like(res, dtype=torch.int64)

    z = precond(r) if precond is not None else r
    p = z.clone()
    gamma = dot(r, z)
    for _ in range(int(max_iter)):
        if not bool(active.any()):
            break
        q = op.matvec(p)
        delta = dot(q, q)
        rp = None
        if eps:
            if reg_op is None:
                delta = delta + eps * dot(p, p)
            else:
                rp = reg_op.matvec(p)
                delta = delta + eps * dot(rp, rp)
        # A breakdown (delta or gamma <= 0: exact convergence, or an M that
        # rounding made indefinite) stops that system instead of dividing by 0.
        ok = active & (delta > 0) & (gamma > 0)
        alpha = torch.where(ok, gamma / torch.where(ok, delta, torch.ones_like(delta)),
                            torch.zeros_like(delta))
        x = x + alpha * p
        s = s - alpha * q
        if rp is not None:
            rx = rx + alpha * rp
        r = normal_residual(s, x, rx)
        new_res = dot(r, r).sqrt() / bsafe
        iters = iters + ok.to(iters.dtype)
        res = torch.where(ok, new_res, res)
        better = ok & (res < best_res)
        best_x = torch.where(better, x, best_x)
        best_res = torch.where(better, res, best_res)
        active = ok & (res > tol) & torch.isfinite(res)
        z = precond(r) if precond is not None else r
        gamma_new = dot(r, z)
        beta = torch.where(active & (gamma > 0), gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        p = z + beta * p
        gamma = gamma_new
    # A^T y = 0: the solution is 0 (for eps > 0 and for the minimum norm alike).
    best_x = torch.where(bnorm > 0, best_x, torch.zeros_like(best_x))
    # A non-finite observation has no solution: NaN out, as the FFT path gives,
    # and never reported as converged.
    bad = ~torch.isfinite(bnorm)
    best_x = torch.where(bad, torch.full_like(best_x, float("nan")), best_x)
    best_res = torch.where(bad, torch.full_like(best_res, float("nan")), best_res)
    converged = best_res <= tol
    info = SolveInfo(iterations=_squeeze(iters, dims), residual=_squeeze(best_res, dims),
                     converged=_squeeze(converged, dims), solver="cg",
                     precond=getattr(precond, "name", None if precond is None else "custom"))
    if warn and not bool(converged.all()):
        bad = int((~converged).sum())
        worst = float(best_res.max())
        warnings.warn(f"deconv_ext: conjugate gradients did not reach tol={tol:g} in "
                      f"max_iter={int(max_iter)} iterations for {bad} of {converged.numel()} "
                      f"system(s); relative residual reached {worst:.3g}. Returning the best "
                      f"iterate; raise max_iter or eps, or loosen tol", RuntimeWarning,
                      stacklevel=3)
    return best_x, info


def _squeeze(t: torch.Tensor, dims) -> torch.Tensor:
    """Drop the (trailing, size-1) reduced dims of a per-system scalar."""
    for _ in dims:
        t = t.squeeze(-1)
    return t


def pcg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, sample_dims,
        precond: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, tol: float = 1e-6,
        max_iter: int = DEFAULT_MAX_ITER) -> torch.Tensor:
    """Plain preconditioned CG for ``N z = b`` with ``N`` SPD, batched like :func:`cgls`.

    Used for the backward pass of the CG solve (``N`` is the normal matrix,
    symmetric, so the gradient needs one more solve with it). Returns the
    best iterate; no warning (the forward solve already reported).
    """

    def dot(a, c):
        return (a * c).sum(dim=sample_dims, keepdim=True)

    z = torch.zeros_like(b)
    r = b.clone()
    bnorm = dot(b, b).sqrt()
    bsafe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    w = precond(r) if precond is not None else r
    p = w.clone()
    gamma = dot(r, w)
    active = bnorm > 0
    for _ in range(int(max_iter)):
        if not bool(active.any()):
            break
        q = matvec(p)
        delta = dot(p, q)
        ok = active & (delta > 0) & (gamma > 0)
        alpha = torch.where(ok, gamma / torch.where(ok, delta, torch.ones_like(delta)),
                            torch.zeros_like(delta))
        z = z + alpha * p
        r = r - alpha * q
        active = ok & (dot(r, r).sqrt() / bsafe > tol)
        w = precond(r) if precond is not None else r
        gamma_new = dot(r, w)
        beta = torch.where(active & (gamma > 0), gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        p = w + beta * p
        gamma = gamma_new
    return z


class _CGSolve(torch.autograd.Function):
    """``x = (A^T A + eps R^T R)^-1 A^T y`` with the gradient w.r.t. ``y``.

    ``dL/dy = A N^-1 dL/dx`` (``N`` symmetric): one more CG solve in the
    backward pass, to the same tolerance.
    """

    @staticmethod
    def forward(ctx, y, problem):
        x, info = problem.solve(y.detach())
        ctx.problem = problem
        ctx.info = info
        return x

    @staticmethod
    def backward(ctx, g):
        pb = ctx.problem
        z = pcg(pb.normal_matvec, g, pb.op.sample_dims, pb.precond, pb.tol, pb.max_iter)
        return pb.op.matvec(z), None


class Problem:
    """One Tikhonov least-squares problem: operator, regulariser, preconditioner, stopping rule."""

    def __init__(self, op, eps, reg_op, precond, tol, max_iter, x0_fn=None):
        self.op, self.eps, self.reg_op, self.precond = op, eps, reg_op, precond
        self.tol, self.max_iter, self.x0_fn = tol, max_iter, x0_fn

    def normal_matvec(self, p):
        out = self.op.rmatvec(self.op.matvec(p))
        if self.eps:
            out = out + self.eps * (p if self.reg_op is None
                                    else self.reg_op.rmatvec(self.reg_op.matvec(p)))
        return out

    def solve(self, y):
        with torch.no_grad():
            x0 = self.x0_fn(y) if self.x0_fn is not None else None
            return cgls(self.op, y, self.eps, self.reg_op, self.precond, self.tol, self.max_iter,
                        x0=x0)

    def run(self, y):
        """(x, info), differentiable w.r.t. ``y`` when autograd records."""
        if torch.is_grad_enabled() and y.requires_grad:
            x = _CGSolve.apply(y, self)
            return x, x.grad_fn.info  # the Function's ctx is the grad_fn
        return self.solve(y)


def residual_info(op, y, x, eps, reg_op, solver: str) -> SolveInfo:
    """SolveInfo of a direct solve: 0 iterations, its normal-equations residual."""
    dims = op.sample_dims
    b = op.rmatvec(y)
    r = op.rmatvec(y - op.matvec(x))
    # eps: a float, or one value per system broadcast as (..., 1, 1) (a rule's choice).
    if isinstance(eps, torch.Tensor) or eps:
        r = r - eps * (x if reg_op is None else reg_op.rmatvec(reg_op.matvec(x)))
    bn = (b * b).sum(dim=dims, keepdim=True).sqrt()
    res = (r * r).sum(dim=dims, keepdim=True).sqrt() / torch.where(bn > 0, bn, torch.ones_like(bn))
    res = _squeeze(torch.where(bn > 0, res, torch.zeros_like(res)), dims)
    return SolveInfo(iterations=torch.zeros_like(res, dtype=torch.int64), residual=res,
                     converged=torch.ones_like(res, dtype=torch.bool), solver=solver)
