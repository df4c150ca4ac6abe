"""The execution layer: the only code that reaches a compute back end.

Everything above it (plans, solvers, the public API) calls the functions
here; only this package imports ``deconv_ext._C``, the Triton kernels,
``scipy.fft`` or pyFFTW. Each op's route (C++ / Triton / another FFT library)
is chosen in one place, :mod:`.routes`, from one table.

Modules
-------
library       loads the extension (op schemas + CPU kernels, ``csrc/ops.cpp``)
fake_kernels  the ops' fake kernels (``torch.compile``, ``torch.export``)
autograd      the ops' backward formulas (each the exact adjoint)
cuda          the ops' CUDA kernels (Triton, cuFFT) and the interpreter test path
torch_pipeline  ``torch.fft`` around per-frequency kernels (CUDA, interpreter)
cpu_fft       the CPU pipelines on ``scipy.fft`` / FFTW
fft_choice    ``DECONV_EXT_CPU_FFT=auto``: the measured per-shape choice
threads       thread counts for small work and batched small-matrix LAPACK
routes        the route table and the routed functions
"""
from __future__ import annotations

from .library import BUILD_HINT, available, load_error, mkl_dfti_enabled, ops, require

if available():
    from . import autograd, cuda, fake_kernels  # noqa: F401  (registrations)

    cuda.register()

from .routes import (RULE_KERNELS, bin_power, channel_mix, crop, dct_solve,  # noqa: E402
                     deconv2d, deconv2d_chosen, edge_risk_search, filter2d,
                     kernel_spectrum, pad, pad_adjoint, padded_deconv2d, route, rule_search,
                     spectral_power)
from .threads import batched_linalg, single_threaded  # noqa: E402

__all__ = ["available", "require", "load_error", "mkl_dfti_enabled", "ops", "BUILD_HINT", "route",
           "deconv2d", "deconv2d_chosen", "filter2d", "padded_deconv2d", "dct_solve", "pad",
           "pad_adjoint", "crop", "kernel_spectrum", "spectral_power", "channel_mix", "bin_power",
           "rule_search", "edge_risk_search", "RULE_KERNELS", "batched_linalg",
           "single_threaded"]
