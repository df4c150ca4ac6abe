"""What an exact solve did: :class:`SolveInfo`, returned with ``return_info=True``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["SolveInfo"]


@dataclass
class SolveInfo:
    """What an exact solve did (returned with ``return_info=True``).

    Attributes
    ----------
    iterations : Tensor (...,) int64
        Iterations per independent system (per image plane, or per sample of a
        multi-channel layer); 0 for direct solves.
    residual : Tensor (...,) float
        Relative residual of the normal equations reached,
        ``||A^T (y - A x) - eps R^T R x|| / ||A^T y||`` (0 where ``A^T y = 0``).
    converged : Tensor (...,) bool
        ``residual <= tol``; for the minimum-norm CG solve (``eps = 0``) also
        ``error <= tol``.
    solver : str
        ``"cg"``, ``"dct"`` or ``"fft"``.
    precond : str or None
        Preconditioner used by CG (``"dct"``, ``"fft"`` or None).
    error : Tensor (...,) float or None
        CG with ``eps = 0`` only: the estimated bound of the relative error
        ``||x - A^+ y|| / ||x||``, ``||r|| / (theta_min ||x||)`` with ``r`` the
        normal-equations residual and ``theta_min`` the smallest Ritz value of
        ``A^T A`` (an estimate of its smallest nonzero eigenvalue); ``inf``
        where no estimate exists. None for the other solves.
    eps : Tensor (...,) float64 or None
        With ``eps=<rule>``: the eps chosen per system (per image plane, or
        per sample with ``eps_per="sample"``); None for a given eps.
    objective : Tensor (...,) float64 or None
        The rule's objective at the chosen eps (GCV value, ``residual /
        (N noise_std^2)`` for the discrepancy principle, minus the L-curve
        curvature, ...; see :func:`deconv_ext.maths.parameter_choice.choose_eps`).
    rule : str or None
        The rule that ran (``"auto"`` resolved to its rule).
    noise_std : Tensor (...,) float64 or None
        The noise level the rule used (given or estimated); None for rules
        that need none.
    """

    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    solver: str
    precond: Optional[str] = None
    error: Optional[torch.Tensor] = None
    eps: Optional[torch.Tensor] = None
    objective: Optional[torch.Tensor] = None
    rule: Optional[str] = None
    noise_std: Optional[torch.Tensor] = None

    @property
    def max_iterations(self) -> int:
        """The largest iteration count over the batch (what the call cost)."""
        return int(self.iterations.max()) if self.iterations.numel() else 0
