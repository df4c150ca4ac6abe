"""Extreme eigenvalue estimates of the normal matrix from the CG coefficients.

Conjugate gradients on ``N z = b`` (``N`` symmetric positive semi-definite)
is the Lanczos process in disguise: after ``k`` steps with step lengths
``alpha_j`` and ``beta_j = gamma_{j+1} / gamma_j``, the symmetric
tridiagonal matrix

    T_k[0, 0]     = 1 / alpha_0
    T_k[j, j]     = 1 / alpha_j + beta_{j-1} / alpha_{j-1}
    T_k[j, j + 1] = sqrt(beta_j) / alpha_j

is ``N`` projected on the Krylov space. Its eigenvalues (the Ritz values)
interlace: the smallest decreases and the largest increases with ``k``
towards the extreme eigenvalues of ``N`` on the space CG explores (Golub &
Van Loan, "Matrix Computations", 4th ed., 11.3.5). The smallest one turns
the normal-equations residual into an error estimate:
``||x - x*|| = ||N^+ r|| <= ||r|| / lambda_min``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigvalsh_tridiagonal

__all__ = ["RitzValues"]

# The most accurate bisection LAPACK's stebz offers (2 * safe minimum): the
# smallest Ritz value can be 1e-10 of the largest, below stebz's default
# absolute tolerance eps * ||T||.
_ABSTOL = 2.0 * np.finfo(np.float64).tiny


class RitzValues:
    """The CG coefficients of ``B`` independent systems and their extreme Ritz values.

    Parameters
    ----------
    n_systems : int
        ``B``, the number of independent systems (their step lengths are
        recorded as flat tensors of ``B`` values).
    """

    def __init__(self, n_systems: int):
        self.n = int(n_systems)
        self._alpha: list = []
        self._beta: list = []

    def record(self, alpha: torch.Tensor, beta: torch.Tensor) -> None:
        """One CG step: ``alpha`` and ``beta`` of every system (any shape of ``B`` values).

        A system that has stopped records whatever it likes; :meth:`extremes`
        reads only its first ``iterations`` steps.
        """
        self._alpha.append(alpha.detach().reshape(self.n))
        self._beta.append(beta.detach().reshape(self.n))

    def extremes(self, iterations: torch.Tensor, which: torch.Tensor):
        """Smallest and largest Ritz values of the systems selected by ``which``.

        Parameters
        ----------
        iterations : Tensor of ``B`` ints, the steps each system has taken
        which : Tensor of ``B`` bools, the systems to evaluate

        Returns
        -------
        lo, hi : float64 CPU Tensors of ``B`` values; ``+inf`` / ``0`` where not
            evaluated or where a system has taken no step (no estimate yet).
        """
        lo = torch.full((self.n,), float("inf"), dtype=torch.float64)
        hi = torch.zeros(self.n, dtype=torch.float64)
        sel = which.reshape(self.n).cpu().numpy()
        if not self._alpha or not sel.any():
            return lo, hi
        its = iterations.reshape(self.n).cpu().numpy()
        a = torch.stack(self._alpha).to(device="cpu", dtype=torch.float64).numpy()
        b = torch.stack(self._beta).to(device="cpu", dtype=torch.float64).numpy()
        for i in np.flatnonzero(sel & (its > 0)):
            k = int(its[i])
            ai, bi = a[:k, i], b[:k - 1, i]
            if not (np.all(np.isfinite(ai)) and np.all(ai > 0) and np.all(np.isfinite(bi))):
                continue  # a breakdown: no estimate (the caller treats it as unknown)
            diag = 1.0 / ai
            diag[1:] += bi / ai[:-1]
            off = np.sqrt(np.maximum(bi, 0.0)) / ai[:-1]
            if k == 1:
                lo[i] = hi[i] = float(diag[0])
                continue
            lo[i] = float(eigvalsh_tridiagonal(diag, off, select="i", select_range=(0, 0),
                                               tol=_ABSTOL)[0])
            hi[i] = float(eigvalsh_tridiagonal(diag, off, select="i", select_range=(k - 1, k - 1),
                                               tol=_ABSTOL)[0])
        return lo, hi
