"""Which implementation runs a call: the ``DECONV_EXT_BACKEND`` switch.

* unset / ``"cpp"``: the compiled ops (``torch.ops.deconv_ext.*``): C++ on
  CPU tensors, Triton on CUDA tensors;
* ``"triton"``: the same ops on CUDA; on a machine without CUDA, the Triton
  launchers run on CPU tensors in the Triton interpreter (a test path);
* ``"torch"``: ``deconv_ext.reference``, the pure-torch specification.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch

BACKENDS = ("cpp", "triton", "torch")
ENV = "DECONV_EXT_BACKEND"


def selected() -> str:
    """The backend named by the environment (default ``"cpp"``)."""
    name = os.environ.get(ENV, "").strip().lower() or "cpp"
    if name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r} is not valid; expected one of "
                         f"{', '.join(map(repr, BACKENDS))} (or unset)")
    return name


def kernels(device: torch.device):
    """The fused kernels for tensors on ``device``: an object with the op names.

    Compiled ops unless the Triton interpreter is forced on a CUDA-less machine.
    """
    from . import _ops

    if selected() == "triton" and device.type == "cpu":
        if torch.cuda.is_available():
            raise ValueError(f"{ENV}=triton on CPU tensors is a test path for machines without "
                             f"CUDA; move the tensors to CUDA instead")
        from functools import partial

        from . import pipeline
        from . import triton_kernels as tk

        launchers = SimpleNamespace(**{name: getattr(tk, name) for name in tk.OP_NAMES})
        # The pipeline ops are torch.fft around the per-frequency kernels.
        for name in pipeline.__all__:
            if name != "irfft2_backward":
                setattr(launchers, name, partial(getattr(pipeline, name), launchers))
        return launchers
    _ops.require()
    return _ops.ops
