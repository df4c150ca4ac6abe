"""Options shared by the commands: the device, and the solve's keyword arguments."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional import deconvolve
from .errors import UsageError

__all__ = ["resolve_device", "solver_kwargs", "boundary_problem"]


def resolve_device(name: str) -> torch.device:
    """A torch.device from 'auto' / 'cpu' / 'cuda[:N]'; UsageError if unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {name!r} is not a device; expected cpu, cuda, cuda:N or "
                         f"auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r}: no CUDA device is available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not supported; expected cpu or cuda")
    return dev


def solver_kwargs(boundary: str, solver: Optional[str]) -> dict:
    """Keyword arguments of ``deconvolve`` naming the boundary and (if given) the solver."""
    kwargs = {"boundary": boundary}
    if solver is not None:
        kwargs["solver"] = solver
    return kwargs


def boundary_problem(boundary: str, solver: Optional[str], psf: torch.Tensor) -> Optional[str]:
    """None if ``deconvolve`` accepts this boundary, solver and PSF, else its reason.

    Some combinations are refused whatever the image (the DCT solve needs a
    PSF symmetric in each axis, for one): trying it once on a small image
    lets a batch fail with one message instead of one per file.

    Parameters
    ----------
    boundary : str
    solver : str or None
    psf : Tensor (kh, kw)
    """
    kh, kw = psf.shape[-2:]
    probe = torch.linspace(0.1, 1.0, (2 * kh + 2) * (2 * kw + 3),
                           dtype=psf.dtype).reshape(2 * kh + 2, 2 * kw + 3)
    try:
        deconvolve(probe, psf.cpu(), eps=1e-2, **solver_kwargs(boundary, solver))
    except (NotImplementedError, ValueError, TypeError) as exc:
        return " ".join(str(exc).split())
    return None
