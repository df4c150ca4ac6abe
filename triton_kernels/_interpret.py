"""Run the kernels in the Triton interpreter on machines without CUDA.

Triton decides, when a kernel is *defined* with ``@triton.jit``, whether it is
compiled for a GPU or interpreted (numpy on CPU tensors). This module must
therefore be imported before any kernel module of the package. Without a CUDA
device there is nothing to compile for, so the interpreter is switched on:
that is how the kernels are tested in CI and how
``DECONV_EXT_KERNELS=triton`` runs on a CPU-only machine (a test path, 100 to
1000 times slower than the C++ kernels).

If Triton was imported before this module, the ``@triton.jit`` helpers of
``triton.language`` itself (``tl.zeros``, ``tl.sum``, ``tl.cdiv``, ...) were
already defined for the compiler and fail in the interpreter: the kernels of
this package therefore use only builtins (``tl.full``, ``tl.where``, ...).

An explicit ``TRITON_INTERPRET`` in the environment is respected, e.g.
``TRITON_INTERPRET=0`` to compile the kernels ahead of time for a GPU target
on a machine that has none (see ``tests/test_triton.py``).
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: Whether the kernels of this process run in the Triton interpreter.
INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
