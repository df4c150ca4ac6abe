"""deconv_ext: fast, exact pseudo-inverses of 2D convolutions for PyTorch.

Public names only; each function's docstring is its reference.
"""
from . import _ops  # noqa: F401  (registers fake kernels, autograd, CUDA kernels)
from .functional import (conv2d_cond, conv2d_opnorm, conv2d_pinv, conv2d_svdvals, convolve,
                         deconvolve)
from .nn import ConvPinv2d
from .plan import DeconvPlan
from .psf import box, disk, gaussian, motion  # noqa: F401  (PSF constructors)

__all__ = ["deconvolve", "convolve", "conv2d_pinv", "DeconvPlan", "conv2d_svdvals",
           "conv2d_opnorm", "conv2d_cond", "ConvPinv2d"]
__version__ = "0.1.0"
