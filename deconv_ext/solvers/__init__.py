"""Solvers above the plans: exact iterative and direct solves of non-circular models.

Modules: ``boundary`` (``deconvolve`` for non-circular boundaries and other
solvers), ``layer`` (``conv2d_pinv`` for non-circular or "valid" layers, and with eps
chosen by a rule),
``cg`` (conjugate gradients), ``lanczos`` (Ritz values of the CG coefficients),
``precond`` (transform preconditioners),
``dct`` (the direct DCT-II solve), ``operators`` (exact forward models and
adjoints), ``info`` (:class:`SolveInfo`).
"""
from __future__ import annotations

from .boundary import deconvolve_boundary
from .info import SolveInfo
from .layer import conv2d_chosen, conv2d_exact
from .precond import PRECONDS

__all__ = ["SolveInfo", "deconvolve_boundary", "conv2d_exact", "conv2d_chosen", "PRECONDS"]
