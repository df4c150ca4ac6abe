"""Is the compiled extension ``deconv_ext._C`` built for the torch that is running?

A C++ extension links against one torch's C++ symbols: loaded into another
torch it fails with an undefined symbol, or worse, misbehaves. So the build
records the torch it compiled against (``setup.py`` calls
:func:`write_build_info`, which writes ``deconv_ext/_build_info.py``: not in
git, shipped in the wheel), and :func:`check_build` compares that record with
the running torch before ``_C`` is loaded.

This module imports only the standard library and torch: ``setup.py`` loads
it by file path, before deconv_ext is importable.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch

__all__ = ["REBUILD_HINT", "running", "recorded", "check_build", "write_build_info"]

REBUILD_HINT = ("rebuild it against the running torch: `pip install --no-build-isolation "
                "--force-reinstall --no-deps <deconv_ext source folder>` (in a checkout: "
                "`make build`)")

_INFO_MODULE = "deconv_ext._build_info"


def _release(version: str) -> str:
    # "2.13.0+cpu" and "2.13.0+cu126" share one C++ API; the local label is a
    # build flavour, the release is what the extension's symbols depend on.
    return version.split("+", 1)[0]


def running() -> dict:
    """The running torch's version and C++11 ABI flag, in the recorded form."""
    return {"torch_version": torch.__version__,
            "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI)}


def recorded() -> Optional[dict]:
    """What the extension was built against, or None if the build wrote no record.

    A checkout built before the record existed, or an extension copied in
    by hand, has none; then nothing is checked.
    """
    try:
        info = importlib.import_module(_INFO_MODULE)
    except ImportError:
        return None
    return {"torch_version": info.TORCH_VERSION, "cxx11_abi": bool(info.CXX11_ABI),
            "mkl_dfti": bool(getattr(info, "MKL_DFTI", False))}


def check_build(built: Optional[dict] = None, now: Optional[dict] = None) -> None:
    """Raise ImportError if the extension was built for another torch.

    Parameters
    ----------
    built : dict, optional
        ``{"torch_version": str, "cxx11_abi": bool}``; default :func:`recorded`.
    now : dict, optional
        The same for the running torch; default :func:`running`.

    Raises
    ------
    ImportError
        Naming both torch versions (and ABI flags) and the rebuild command.
    """
    built = recorded() if built is None else built
    if built is None:
        return
    now = running() if now is None else now
    same_release = _release(built["torch_version"]) == _release(now["torch_version"])
    if same_release and bool(built["cxx11_abi"]) == bool(now["cxx11_abi"]):
        return
    raise ImportError(
        f"deconv_ext._C was built against torch {built['torch_version']} (C++11 ABI "
        f"{int(built['cxx11_abi'])}) but torch {now['torch_version']} (C++11 ABI "
        f"{int(now['cxx11_abi'])}) is running; {REBUILD_HINT}")


def write_build_info(package_dir: str, mkl_dfti: bool = False) -> str:
    """Write ``_build_info.py`` into ``package_dir``; returns its path.

    It records the running torch and whether the extension is compiled with
    MKL's DFTI header (``mkl_dfti``: the CPU pipelines can call MKL directly).
    """
    info = running()
    path = os.path.join(package_dir, "_build_info.py")
    text = ('"""Written by setup.py: the torch deconv_ext._C was compiled against."""\n'
            f"TORCH_VERSION = {info['torch_version']!r}\n"
            f"CXX11_ABI = {info['cxx11_abi']!r}\n"
            f"MKL_DFTI = {bool(mkl_dfti)!r}\n")
    old = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if old != text:  # unchanged: keep the file's time stamp (no needless rebuilds)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path
