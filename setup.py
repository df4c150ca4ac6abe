"""Builds deconv_ext and its C++ CPU extension deconv_ext._C.

Build against the torch already installed in the environment:

    pip install --no-build-isolation -e .

The Triton kernels live in the top-level folder ``triton_kernels/`` of the
repository but are shipped as ``deconv_ext.triton_kernels``: the top-level
import name ``triton_kernels`` belongs to another project.
"""
import glob
import os
import sysconfig

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))

cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
if os.environ.get("DECONV_EXT_NATIVE", "0") == "1":
    # Opt-in: binaries tuned for the build machine are not portable.
    cxx_flags.append("-march=native")

include_dirs, macros = [], []
# MKL's DFTI header (pip package mkl-include, x86 only): with it the CPU
# pipelines call the MKL inside torch's x86 builds directly (csrc/fft.cpp).
# Without it, or with a torch built without MKL, they use torch.fft.
# DECONV_EXT_MKL_DFTI=0 builds without it.
mkl_include = os.path.join(sysconfig.get_paths()["data"], "include")
if (os.environ.get("DECONV_EXT_MKL_DFTI", "1") != "0" and torch.backends.mkl.is_available()
        and os.path.exists(os.path.join(mkl_include, "mkl_dfti.h"))):
    include_dirs.append(mkl_include)
    macros.append(("DECONV_EXT_MKL_DFTI", "1"))

setup(
    name="deconv_ext",
    version="0.1.0",
    description="Fast, exact pseudo-inverses and Tikhonov/Wiener inverses of 2D convolutions "
    "for PyTorch (CPU C++ extension, GPU Triton kernels).",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=["deconv_ext", "deconv_ext.triton_kernels"],
    # deconv_ext.dask: lazy Dask arrays, one machine or a cluster.
    extras_require={"dask": ["dask[array]>=2024.1", "distributed>=2024.1"]},
    package_dir={"deconv_ext": "deconv_ext", "deconv_ext.triton_kernels": "triton_kernels"},
    ext_modules=[
        CppExtension(
            "deconv_ext._C",
            sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["deconv-ext=deconv_ext.cli:main"]},
    zip_safe=False,
)
