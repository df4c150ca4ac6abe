"""Options shared by the commands: the device, eps, and the solve's keyword arguments."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .. import validation as V
from ..functional import deconvolve
from .errors import UsageError

__all__ = ["resolve_device", "parse_eps", "parse_noise_std", "rule_problem", "solver_kwargs",
           "boundary_problem", "format_eps"]

#: What ``--eps`` accepts besides a number: the library's parameter-choice rules.
EPS_CHOICES = V.EPS_RULES


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


def parse_eps(text: Union[str, float]) -> Union[float, str]:
    """``--eps``: a number >= 0, or the name of a rule that chooses eps per image.

    UsageError (one line, listing the valid choices) for anything else:
    NaN, infinity, a negative number, an unknown name.
    """
    word = str(text).strip().lower()
    if word in EPS_CHOICES:
        return word
    expected = (f"expected a number >= 0 or a rule that chooses eps per image: "
                f"{', '.join(EPS_CHOICES)}")
    try:
        value = float(word)
    except ValueError:
        raise UsageError(f"--eps {text!r}: {expected}") from None
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"--eps {text!r}: {expected}")
    return value


def parse_noise_std(text: Optional[str]) -> Optional[float]:
    """``--noise-std``: None, or a finite number > 0 (UsageError otherwise)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"--noise-std {text!r}: expected the noise's standard deviation, a "
                         f"number > 0 on the [0, 1] pixel scale")
    return value


def rule_problem(eps: Union[float, str], method: str, solver: Optional[str],
                 noise_std: Optional[float]) -> Optional[str]:
    """None if ``deconvolve`` takes this eps with this method, solver and --noise-std, else
    its reason in the command line's words (the library's rules:
    ``validation.eps_rule_args`` and ``validation.rule_solver``)."""
    if not isinstance(eps, str):
        if noise_std is not None:
            return (f"--noise-std is the noise level a rule uses; it needs --eps one of "
                    f"{', '.join(EPS_CHOICES)}")
        return None
    if method == "pinv":
        return "a rule chooses a Tikhonov weight, and --method pinv has none; use --method tikhonov"
    if solver not in (None, "fft"):
        return (f"a rule chooses eps on the spectrum of the FFT solve, which --solver {solver} "
                f"does not have; run with --solver fft (it prints the eps chosen) and pass "
                f"that number to --solver {solver}")
    return None


def format_eps(rule: str, eps) -> str:
    """``eps=1.2e-03 (gcv)``, or one value per colour plane: ``eps=1.2e-03,9.8e-04 (gcv)``."""
    values = [float(v) for v in torch.as_tensor(eps).reshape(-1)]
    return f"eps={','.join(f'{v:.3g}' for v in values)} ({rule})"


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
