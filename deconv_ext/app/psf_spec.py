"""The command line's ``--psf`` strings: parsed into PSF tensors, or loaded from files.

A spec is ``gaussian:SIGMA[,SIZE]``, ``box:SIZE``, ``motion:LENGTH,ANGLE``,
``disk:RADIUS`` (the constructors of :mod:`deconv_ext.psf`) or the path of a
``.npy`` array or an image file, normalised to sum 1.
"""
from __future__ import annotations

import math

import os

import numpy as np
import torch

from ..psf import box, disk, gaussian, motion
from .image_io import ImageError, read_image

__all__ = ["parse_spec", "load_psf_file", "PSFSpecError", "SPEC_HELP"]

SPEC_HELP = ("gaussian:SIGMA[,SIZE], box:SIZE, motion:LENGTH,ANGLE, disk:RADIUS, "
             "or a PSF file (.npy or an image)")


class PSFSpecError(ValueError):
    """A ``--psf`` string or PSF file that cannot be turned into a PSF."""


# kind -> (constructor, (fewest, most) arguments, usage, which arguments are whole numbers)
_CONSTRUCTORS = {
    "gaussian": (gaussian, (1, 2), "gaussian:SIGMA[,SIZE]", (False, True)),
    "box": (box, (1, 1), "box:SIZE", (True,)),
    "motion": (motion, (1, 2), "motion:LENGTH,ANGLE", (False, False)),
    "disk": (disk, (1, 1), "disk:RADIUS", (False,)),
}


#: Largest size, length, radius or sigma a ``--psf`` spec may ask for (pixels).
MAX_PARAMETER = 4096


def _number(text: str, spec: str, integer: bool = False):
    try:
        v = float(text)
    except ValueError:
        raise PSFSpecError(f"--psf {spec!r}: {text!r} is not a number") from None
    # A PSF parameter past MAX_PARAMETER pixels would build a kernel larger than
    # any image this tool can hold (and NaN/inf builds none at all).
    if not math.isfinite(v) or abs(v) > MAX_PARAMETER:
        raise PSFSpecError(f"--psf {spec!r}: {text!r} is not valid; expected a finite number "
                           f"of at most {MAX_PARAMETER:g} pixels")
    if integer:
        if v != int(v):
            raise PSFSpecError(f"--psf {spec!r}: {text!r} must be a whole number of pixels")
        return int(v)
    return v


def load_psf_file(path: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A PSF from a ``.npy`` array or an image file, normalised to sum 1.

    Parameters
    ----------
    path : str
        A 2D array, or an image (a colour image's brightness, the mean of its
        colour channels, is the PSF).
    dtype : torch.dtype, default float32

    Returns
    -------
    Tensor (kh, kw), non-negative, sums to 1.

    Raises
    ------
    PSFSpecError
        Unreadable file, not 2D, negative or non-finite entries, zero sum.
    """
    try:
        arr = read_image(path)
    except ImageError as exc:
        raise PSFSpecError(f"--psf {path!r}: {exc}") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise PSFSpecError(f"--psf {path!r}: expected a 2D kernel, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0:
        raise PSFSpecError(f"--psf {path!r}: a PSF must be finite and non-negative")
    total = arr.sum()
    if total <= 0:
        raise PSFSpecError(f"--psf {path!r}: the PSF sums to {total:g}; expected > 0")
    return torch.from_numpy(arr / total).to(dtype)


def parse_spec(spec: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a ``--psf`` string into a PSF tensor normalised to sum 1.

    Parameters
    ----------
    spec : str
        ``gaussian:SIGMA[,SIZE]``, ``box:SIZE``, ``motion:LENGTH,ANGLE``,
        ``disk:RADIUS``, or the path of a ``.npy`` array or an image (see
        :func:`load_psf_file`).
    dtype : torch.dtype, default float32

    Returns
    -------
    Tensor (kh, kw)

    Raises
    ------
    PSFSpecError
        With a one-line message naming the spec and what was expected.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PSFSpecError(f"--psf {spec!r}: expected {SPEC_HELP}")
    kind, sep, args = spec.strip().partition(":")
    if sep and kind.lower() in _CONSTRUCTORS:
        fn, (lo, hi), usage, integer = _CONSTRUCTORS[kind.lower()]
        parts = [p.strip() for p in args.split(",")] if args.strip() else []
        if not lo <= len(parts) <= hi:
            raise PSFSpecError(f"--psf {spec!r}: expected {usage}")
        values = [_number(p, spec, integer=i) for p, i in zip(parts, integer)]
        try:
            return fn(*values, dtype=dtype)
        except (ValueError, MemoryError, OverflowError) as exc:
            raise PSFSpecError(f"--psf {spec!r}: {exc}") from None
    if os.path.exists(spec):
        return load_psf_file(spec, dtype)
    if sep and not os.path.splitext(spec)[1]:
        raise PSFSpecError(f"--psf {spec!r}: unknown PSF kind {kind!r}; expected {SPEC_HELP}")
    raise PSFSpecError(f"--psf {spec!r}: not a known PSF kind and no such file; expected {SPEC_HELP}")
