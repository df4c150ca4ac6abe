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
from typing import Callable, Optional, Tuple

import torch

from .info import SolveInfo
from .lanczos import RitzValues

__all__ = ["cgls", "pcg", "Problem", "residual_info", "DEFAULT_MAX_ITER"]

DEFAULT_MAX_ITER = 1000


def cgls(op, y: torch.Tensor, eps: float = 0.0, reg_op=None,
         precond: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, tol: float = 1e-6,
         max_iter: int = DEFAULT_MAX_ITER, x0: Optional[torch.Tensor] = None,
         warn: bool = True) -> Tuple[torch.Tensor, SolveInfo]:
    """Solve ``min_x ||A x - y||^2 + eps ||R x||^2`` by (preconditioned) CG on
    the normal equations ``N x = A^T y``, ``N = A^T A + eps R^T R``.

    Every independent system (the dims ``op.sample_dims`` of one image or
    sample) gets its own step lengths and stops on its own; a stopped system
    keeps its iterate while the others go on.

    Stopping rule, with ``r = A^T (y - A x) - eps R^T R x`` the
    normal-equations residual:

    * ``eps > 0``: ``||r|| <= tol ||A^T y||``. The error is then
      ``||x - x*|| <= ||r|| / lambda_min(N)``, ``lambda_min(N) >= eps`` for
      ``R = I``: a relative error of at most ``cond(N) tol``.
    * ``eps = 0``: plain CGLS from 0 without preconditioner, whose iterates
      stay in the range of ``A^T``: it converges to the minimum-norm
      least-squares solution ``A^+ y``. ``N`` has no lower bound here, and a
      small residual alone says little (at ``cond(A) = 6e4`` a relative
      residual of 1e-6 can leave the iterate 80% away from ``A^+ y``). The
      residual is turned into a bound of the error,
      ``||x - A^+ y|| <= ||r|| / lambda_min``, with ``lambda_min`` the
      smallest nonzero eigenvalue of ``N`` that CG sees, estimated by the
      smallest Ritz value ``theta_min`` (:mod:`deconv_ext.solvers.lanczos`;
      it decreases to ``lambda_min`` as CG finds it). A system converges
      when ``||r|| <= tol ||A^T y||`` and ``||r|| / (theta_min ||x||) <=
      tol``, both with ``r`` recomputed from ``x`` (CG's recursively updated
      residual drifts below the true one in long runs). It stops
      unconverged at ``max_iter``, or earlier when the recursive residual is
      16 times below the bound that the true one misses: the rounding error
      of the updates has become the residual, more iterations no longer
      lower it, and ``tol`` is below what this dtype can certify for this
      operator.

    Parameters
    ----------
    op : object with ``matvec`` (x -> A x), ``rmatvec`` (y -> A^T y) and
        ``sample_dims`` (the dims one system spans, e.g. ``(-2, -1)``)
    y : Tensor, the observation (the op's output shape), computation dtype
    eps : float >= 0
    reg_op : op for ``R`` (None: identity)
    precond : callable ``r -> M^-1 r`` (symmetric positive definite), optional;
        ``eps > 0`` only (it would lose the minimum-norm property)
    tol : float > 0, see the stopping rule
    max_iter : int >= 1
    x0 : initial guess, optional; ``eps > 0`` only (likewise)
    warn : bool; a RuntimeWarning with the residual (and error bound) reached
        when a system did not converge

    Returns
    -------
    x : Tensor (the op's input shape); for each system its last iterate with
        a finite residual (CG's error decreases at every step, its residual
        does not); NaN where ``y`` holds NaN/inf
    info : SolveInfo, per-system iterations, residual, converged flags, and for
        ``eps = 0`` the error bound estimate
    """
    if not eps and (precond is not None or x0 is not None):
        raise ValueError("cgls with eps = 0 computes the minimum-norm solution: plain CGLS from "
                         "0, without precond or x0")
    min_norm = not eps
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
    x_out, res_out = x.clone(), res.clone()
    active = (res > tol) & torch.isfinite(res)
    iters = torch.zeros_like(res, dtype=torch.int64)
    if min_norm:
        bound = _ErrorBound(op, y, res, tol, bsafe, dot)

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
        rnorm = dot(r, r).sqrt()
        iters = iters + ok.to(iters.dtype)
        res = torch.where(ok, rnorm / bsafe, res)
        finite = ok & torch.isfinite(res)
        x_out = torch.where(finite, x, x_out)
        res_out = torch.where(finite, res, res_out)
        z = precond(r) if precond is not None else r
        gamma_new = dot(r, z)
        beta = torch.where(ok & (gamma > 0), gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        if min_norm:
            done = bound.step(x, rnorm, res, finite, iters, alpha, beta)
        else:
            done = res <= tol
        active = ok & ~done & torch.isfinite(res)
        beta = torch.where(active, beta, torch.zeros_like(beta))
        p = z + beta * p
        gamma = gamma_new
    # A^T y = 0: the solution is 0 (for eps > 0 and for the minimum norm alike).
    x_out = torch.where(bnorm > 0, x_out, torch.zeros_like(x_out))
    error = None
    if min_norm:
        res_out, error = bound.final(x_out, iters)
        converged = (res_out <= tol) & (error <= tol)
    else:
        converged = res_out <= tol
    # A non-finite observation has no solution: NaN out, as the FFT path gives,
    # and never reported as converged.
    bad = ~torch.isfinite(bnorm)
    nan = float("nan")
    x_out = torch.where(bad, torch.full_like(x_out, nan), x_out)
    res_out = torch.where(bad, torch.full_like(res_out, nan), res_out)
    if error is not None:
        error = torch.where(bad, torch.full_like(error, nan), error)
    converged = converged & ~bad
    info = SolveInfo(iterations=_squeeze(iters, dims), residual=_squeeze(res_out, dims),
                     converged=_squeeze(converged, dims), solver="cg",
                     precond=getattr(precond, "name", None if precond is None else "custom"),
                     error=None if error is None else _squeeze(error, dims))
    if warn and not bool(converged.all()):
        msg = (f"deconv_ext: conjugate gradients did not reach tol={tol:g} for "
               f"{int((~converged).sum())} of {converged.numel()} system(s); relative residual "
               f"reached {float(res_out[~converged].max()):.3g}")
        if min_norm:
            msg += bound.describe(~converged, error)
        else:
            msg += (f" in max_iter={int(max_iter)} iterations. Returning the last iterate; "
                    f"raise max_iter or eps, or loosen tol")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return x_out, info


class _ErrorBound:
    """The stopping rule of the minimum-norm CGLS solve (``eps = 0``, see :func:`cgls`).

    Tracks, per system, the CG coefficients (for the Ritz values), the cached
    smallest Ritz value ``lo`` and the recursive residual level at which to
    check again. Between checks the cached values only make the test a
    necessary condition (``theta_min`` decreases with the iterations), so
    the Ritz values and the true residual (two operator applications) are
    computed only where a system may have converged.
    """

    def __init__(self, op, y, res, tol, bsafe, dot):
        self.op, self.y, self.tol, self.bsafe, self.dot = op, y, tol, bsafe, dot
        self.ritz = RitzValues(res.numel())
        self.lo = torch.full_like(res, float("inf"))
        self.hi = torch.zeros_like(res)
        self.next_check = torch.full_like(res, float("inf"))
        self.at_floor = torch.zeros_like(res, dtype=torch.bool)

    def _extremes(self, iters, which):
        lo, hi = self.ritz.extremes(iters, which)
        lo, hi = lo.to(self.lo).view_as(self.lo), hi.to(self.hi).view_as(self.hi)
        self.lo = torch.where(which, lo, self.lo)
        self.hi = torch.where(which, hi, self.hi)

    def _measure(self, x):
        """True relative residual and error bound of ``x``, per system."""
        r = self.op.rmatvec(self.y - self.op.matvec(x))
        rnorm = self.dot(r, r).sqrt()
        xnorm = self.dot(x, x).sqrt()
        known = torch.isfinite(self.lo) & (self.lo > 0) & (xnorm > 0)
        denom = torch.where(known, self.lo * xnorm, torch.ones_like(xnorm))
        error = torch.where(known, rnorm / denom, torch.full_like(rnorm, float("inf")))
        error = torch.where(rnorm == 0, torch.zeros_like(error), error)
        return rnorm / self.bsafe, error

    def step(self, x, rnorm, res, finite, iters, alpha, beta):
        """Record one CG step; the systems that stop (converged or at the floor)."""
        self.ritz.record(alpha, beta)
        tol = self.tol
        xnorm = self.dot(x, x).sqrt()
        maybe = (finite & (res <= tol) & (rnorm <= tol * self.lo * xnorm)
                 & (rnorm <= self.next_check))
        if not bool(maybe.any()):
            return torch.zeros_like(maybe)
        self._extremes(iters, maybe)
        true_res, error = self._measure(x)
        converged = maybe & (true_res <= tol) & (error <= tol)
        floor = maybe & ~converged & (16 * rnorm <= tol * self.lo * xnorm)
        self.at_floor = self.at_floor | floor
        self.next_check = torch.where(maybe & ~converged, rnorm / 4, self.next_check)
        return converged | floor

    def final(self, x, iters):
        """Relative residual and error bound of the returned iterates."""
        self._extremes(iters, torch.ones_like(self.at_floor))
        res, error = self._measure(x)
        zero = self.bsafe == 1  # A^T y = 0 (bsafe is 1 there): x = 0 is exact
        return (torch.where(zero, torch.zeros_like(res), res),
                torch.where(zero, torch.zeros_like(error), error))

    def describe(self, bad, error) -> str:
        """The part of the warning that says what the bound reached and why it stopped."""
        cond = (self.hi / self.lo).sqrt()
        msg = (f", estimated relative error bound {float(error[bad].max()):.3g} (eps = 0: the "
               f"minimum-norm least-squares solution; cond(A) estimate "
               f"{float(cond[bad].max()):.3g})")
        floor = bad & self.at_floor
        if bool(floor.any()):
            wider = "float64, " if self.y.dtype != torch.float64 else ""
            return msg + (f"; {int(floor.sum())} stopped where rounding errors stall the "
                          f"residual: this tol cannot be certified in {self.y.dtype} for this "
                          f"operator. Returning the last iterate; use {wider}eps > 0, or a "
                          f"larger tol")
        return msg + (". Returning the last iterate; raise max_iter, use eps > 0, or loosen tol")


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
