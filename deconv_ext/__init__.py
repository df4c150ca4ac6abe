"""deconv_ext: fast, exact pseudo-inverses of 2D convolutions for PyTorch.

The public names; each function's docstring gives the model and the shapes,
``docs/architecture.md`` the maths, the layers and how one call flows.
"""
from . import execution  # noqa: F401  (loads the extension: ops, fake kernels, autograd, CUDA)
from .functional import (conv2d_cond, conv2d_opnorm, conv2d_pinv, conv2d_svdvals, convolve,
                         deconvolve)
from .maths.noise import estimate_noise
from .nn import ConvPinv2d
from .plans import DeconvPlan, LayerPlan, MultiChannelPlan, Plan
from .psf import box, disk, gaussian, motion
from .solvers import SolveInfo
from .tiling import deconvolve_tiled, filter_reach

__all__ = ["deconvolve", "convolve", "conv2d_pinv", "DeconvPlan", "LayerPlan", "MultiChannelPlan",
           "Plan", "SolveInfo", "conv2d_svdvals", "conv2d_opnorm", "conv2d_cond", "ConvPinv2d",
           "gaussian", "box", "motion", "disk", "deconvolve_tiled", "filter_reach",
           "estimate_noise"]
__version__ = "0.1.0"
