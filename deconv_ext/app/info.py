"""``deconv-ext info``: what this installation of deconv_ext runs on.

Every fact is read in :func:`describe` (the one place that looks at the
library's internals); :func:`format_info` only lays them out.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from typing import Any, Dict

import torch

from .. import __version__, build_check, config, execution
from ..execution import fft_choice, library

__all__ = ["describe", "format_info"]


def _version_of(module: str):
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def describe() -> Dict[str, Any]:
    """The versions, the extension's FFT route, the devices and the caches, as plain data.

    Returns
    -------
    dict
        JSON-serialisable: ``deconv_ext`` (version, location), ``python``,
        ``torch`` (version, CUDA build, C++11 ABI), ``triton`` (version or
        None), ``extension`` (loaded, error, path, built_against, CPU FFT
        route), ``fft`` (the library picked for eager CPU calls and the
        choice cache), ``cuda`` (devices) and ``triton_kernels`` (usable,
        why not).
    """
    loaded = execution.available()
    extension: Dict[str, Any] = {"loaded": loaded, "error": None, "path": None,
                                 "built_against": build_check.recorded(), "cpu_fft": None}
    if loaded:
        extension["path"] = library.extension_path()
        extension["cpu_fft"] = ("MKL DFTI, called directly" if execution.mkl_dfti_enabled()
                                else "torch.fft")
    else:
        extension["error"] = " ".join(str(execution.load_error()).split())

    cfg = config.get()
    fft_library = cfg.cpu_fft
    cache = fft_choice.cache_path()

    cuda_ok = torch.cuda.is_available()
    devices = []
    if cuda_ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                            "memory_gib": round(p.total_memory / 2 ** 30, 1)})
    triton_version = _version_of("triton")
    if triton_version is None:
        kernels = {"usable": False, "reason": 'Triton is not installed: pip install '
                                               '"deconv_ext[gpu]"'}
    elif not cuda_ok:
        kernels = {"usable": False, "reason": "no CUDA device (DECONV_EXT_KERNELS=triton runs "
                                              "them in the Triton interpreter: a test path)"}
    else:
        kernels = {"usable": True, "reason": None}

    return {
        "deconv_ext": {"version": __version__,
                       "location": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                  "threads": torch.get_num_threads()},
        "triton": {"version": triton_version},
        "extension": extension,
        "kernels": cfg.kernels,
        "fft": {"cpu_library": fft_library, "env": "DECONV_EXT_CPU_FFT",
                "cache": cache, "cache_exists": os.path.isfile(cache)},
        "cuda": {"available": cuda_ok, "devices": devices},
        "triton_kernels": kernels,
    }


def format_info(info: Dict[str, Any], as_json: bool = False) -> str:
    """The text ``deconv-ext info`` prints for ``describe()``'s result (or its JSON)."""
    if as_json:
        return json.dumps(info, indent=2, sort_keys=True)
    ext, t = info["extension"], info["torch"]
    built = ext["built_against"]
    lines = [
        f"deconv_ext   {info['deconv_ext']['version']}  ({info['deconv_ext']['location']})",
        f"python       {info['python']['version']}  ({info['python']['executable']})",
        f"torch        {t['version']}  (CUDA build: {t['cuda'] or 'none'}, C++11 ABI "
        f"{int(t['cxx11_abi'])}, {t['threads']} threads)",
        f"triton       {info['triton']['version'] or 'not installed'}",
    ]
    if ext["loaded"]:
        lines.append(f"extension    loaded: {ext['path']}")
        lines.append(f"  CPU FFT    {ext['cpu_fft']}")
    else:
        lines.append(f"extension    NOT loaded: {ext['error']}")
    if built:
        lines.append(f"  built for  torch {built['torch_version']}, C++11 ABI "
                     f"{int(built['cxx11_abi'])}, "
                     f"{'with' if built['mkl_dfti'] else 'without'} MKL's DFTI header")
    fft = info["fft"]
    lines.append(f"FFT library  {fft['cpu_library']} (eager CPU calls; set {fft['env']})")
    lines.append(f"FFT cache    {fft['cache']}{'' if fft['cache_exists'] else ' (not written yet)'}")
    cuda = info["cuda"]
    if cuda["devices"]:
        for d in cuda["devices"]:
            lines.append(f"cuda:{d['index']}       {d['name']} (sm {d['capability']}, "
                         f"{d['memory_gib']} GiB)")
    else:
        lines.append("CUDA         no device")
    k = info["triton_kernels"]
    lines.append("Triton kernels usable" if k["usable"] else f"Triton kernels not usable: {k['reason']}")
    return "\n".join(lines)
