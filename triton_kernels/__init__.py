"""Triton GPU kernels of deconv_ext (shipped as ``deconv_ext.triton_kernels``).

Each public launcher has the name, signature and semantics of the op it
implements (``torch.ops.deconv_ext.<name>``, schema in ``csrc/ops.cpp``);
``deconv_ext.execution.cuda`` registers them as the ops' CUDA kernels. No
``torch.library`` code lives here. Without a CUDA device the kernels run in
the Triton interpreter on CPU tensors (see ``_interpret``): a test path.

Modules: ``spectral`` (fused solve, multiply, their gradients), ``pad_crop``
(fused pad, its adjoint, crop), ``_layout`` (stride arithmetic).

Importing this package is cheap: Triton is imported, and the kernels are
defined, on first access to a launcher (PEP 562 module ``__getattr__``), so
``import deconv_ext`` does not pay for Triton, nor switch it to the
interpreter, unless the kernels are used.
"""
from __future__ import annotations

import importlib

#: The op names implemented here, each a launcher of this package.
OP_NAMES: tuple = ("spectral_solve", "spectral_solve_", "spectral_mul", "spectral_solve_backward",
                   "spectral_mul_grad_k", "pad", "pad_backward", "crop")

_MODULE_OF = {"spectral_solve": "spectral", "spectral_solve_": "spectral", "spectral_mul": "spectral",
              "spectral_solve_backward": "spectral", "spectral_mul_grad_k": "spectral",
              "pad": "pad_crop", "pad_backward": "pad_crop", "crop": "pad_crop",
              "INTERPRETED": "_interpret"}

__all__ = list(OP_NAMES) + ["OP_NAMES", "INTERPRETED"]


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))
