"""Builds the C++ CPU extension deconv_ext._C; the package's metadata is in pyproject.toml.

Build against the torch already installed in the environment:

    pip install --no-build-isolation -e .          # editable (a checkout)
    pip wheel --no-build-isolation --no-deps .     # a wheel for this torch

With ninja installed (``pip install ninja``) the sources compile in parallel
(``MAX_JOBS`` sets how many at once; default: all cores); without it, one
after another. The torch compiled against is recorded in
``deconv_ext/_build_info.py`` (see deconv_ext/build_check.py), so a later
import under another torch fails with a message saying how to rebuild.
"""
import glob
import importlib.util
import os
import sysconfig

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _record_build_info(mkl_dfti: bool) -> None:
    # By file path: importing the package would load the extension being built.
    spec = importlib.util.spec_from_file_location(
        "_deconv_ext_build_check", os.path.join(HERE, "deconv_ext", "build_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_build_info(os.path.join(HERE, "deconv_ext"), mkl_dfti=mkl_dfti)


# -g0 overrides the -g in Python's own CFLAGS: debug info for torch's
# templates doubled the compile time and made the library 30x larger.
cxx_flags = ["-O3", "-g0", "-std=c++17", "-fopenmp"]
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
_record_build_info(mkl_dfti=bool(macros))

setup(
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
)
