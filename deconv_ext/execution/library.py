"""Loading the compiled extension ``deconv_ext._C``: the one place that imports it.

Importing the extension registers the op schemas and their CPU kernels
(``csrc/ops.cpp``) as ``torch.ops.deconv_ext.*``. Without a build the ops do
not exist; :func:`require` then says how to build.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import config
from ..build_check import check_build

__all__ = ["available", "require", "load_error", "ops", "cpp", "mkl_dfti_enabled",
           "extension_path", "check_one_device", "on_one_device", "BUILD_HINT"]

BUILD_HINT = (
    "the C++ extension deconv_ext._C is not built. Build it with "
    "`pip install --no-build-isolation -e .` in the repository (or `make build`)"
)

_LOAD_ERROR: Optional[BaseException] = None
try:
    check_build()  # built for another torch: a clear ImportError instead of a bad load
    from .. import _C as cpp  # the pybind11 module: eager fast paths only
except ImportError as exc:  # pragma: no cover - exercised only without a build
    cpp = None
    _LOAD_ERROR = exc
else:
    cpp.set_mkl_dfti(config.get().mkl_dfti)

#: ``torch.ops.deconv_ext``: every op, through the dispatcher.
ops = torch.ops.deconv_ext


def check_one_device(op: str, args) -> None:
    """Raise a ValueError unless every tensor in ``args`` is on one device.

    A 0-dim CPU tensor may join tensors on any device (torch's rule for
    scalars). The CPU kernels check the same in C++ (csrc/checks.cpp); the
    fake and CUDA kernels registered in Python call this: the dispatcher
    picks a kernel by the highest-priority device among the arguments, so a
    kernel can be handed an operand that lives elsewhere.
    """
    tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    devices = {a.device for _, a in tensors if a.dim() > 0 or a.device.type != "cpu"}
    if len(devices) > 1:
        where = ", ".join(f"argument {i} on {a.device}" for i, a in tensors)
        raise ValueError(f"deconv_ext.{op}: every tensor argument must be on one device, got "
                         f"{where}")


def on_one_device(op: str, kernel):
    """``kernel`` (a fake or CUDA kernel of ``op``), preceded by :func:`check_one_device`."""
    @functools.wraps(kernel)
    def checked(*args, **kwargs):
        check_one_device(op, args)
        return kernel(*args, **kwargs)
    return checked


def available() -> bool:
    """Whether the compiled ops exist."""
    return _LOAD_ERROR is None


def load_error() -> Optional[BaseException]:
    """Why the extension did not load (None when it did)."""
    return _LOAD_ERROR


def require() -> None:
    """Raise a RuntimeError that says how to build, if the ops do not exist."""
    if _LOAD_ERROR is not None:
        raise RuntimeError(f"{BUILD_HINT} (import error: {_LOAD_ERROR})")


def extension_path() -> Optional[str]:
    """The file of the loaded extension (None without a build)."""
    return None if cpp is None else cpp.__file__


def mkl_dfti_enabled() -> bool:
    """Whether the C++ pipelines call MKL's DFTI directly (else ``torch.fft``)."""
    return cpp is not None and bool(cpp.mkl_dfti_enabled())
