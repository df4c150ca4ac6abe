"""A build for another torch fails clearly: deconv_ext.build_check.

Nothing is compiled: the record of the torch the extension was built
against is faked, and the message and the library's reaction are checked.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deconv_ext import build_check

TESTS = os.path.dirname(os.path.abspath(__file__))


def _now(version=None, abi=None):
    info = build_check.running()
    return {"torch_version": version or info["torch_version"],
            "cxx11_abi": info["cxx11_abi"] if abi is None else abi}


def test_same_torch_passes():
    build_check.check_build(built=_now(), now=_now())
    # The local label (+cpu, +cu126) is a flavour of the same release: accepted.
    build_check.check_build(built=_now("2.13.0+cpu"), now=_now("2.13.0+cu126"))


@pytest.mark.parametrize("built,now", [("2.12.1+cpu", "2.13.0+cpu"), ("2.13.0", "2.13.1"),
                                       ("2.6.0", "2.13.0+cu126")])
def test_other_torch_version_names_both_and_the_rebuild(built, now):
    with pytest.raises(ImportError) as exc:
        build_check.check_build(built=_now(built), now=_now(now))
    msg = str(exc.value)
    assert f"built against torch {built}" in msg and f"torch {now}" in msg
    assert "pip install --no-build-isolation --force-reinstall --no-deps" in msg
    assert "make build" in msg and "\n" not in msg


def test_other_cxx11_abi_is_refused():
    here = _now()
    with pytest.raises(ImportError, match="C\\+\\+11 ABI"):
        build_check.check_build(built=dict(here, cxx11_abi=not here["cxx11_abi"]), now=here)


def test_recorded_info_is_read_from_the_build_info_module(monkeypatch, tmp_path):
    """write_build_info writes what recorded() reads, and check_build uses it by default."""
    path = build_check.write_build_info(str(tmp_path))
    assert os.path.basename(path) == "_build_info.py"
    namespace = {}
    exec(open(path).read(), namespace)
    assert namespace["TORCH_VERSION"] == torch.__version__
    assert namespace["CXX11_ABI"] == bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert namespace["MKL_DFTI"] is False

    fake = type(sys)("deconv_ext._build_info")
    fake.TORCH_VERSION, fake.CXX11_ABI = "1.13.1", namespace["CXX11_ABI"]
    fake.MKL_DFTI = True
    monkeypatch.setitem(sys.modules, "deconv_ext._build_info", fake)
    assert build_check.recorded() == {"torch_version": "1.13.1", "mkl_dfti": True,
                                      "cxx11_abi": namespace["CXX11_ABI"]}
    with pytest.raises(ImportError, match="built against torch 1.13.1"):
        build_check.check_build()


def test_no_record_checks_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "deconv_ext._build_info", None)  # import fails
    assert build_check.recorded() is None
    build_check.check_build()


MISMATCH = textwrap.dedent("""
    import sys, types
    fake = types.ModuleType("deconv_ext._build_info")
    fake.TORCH_VERSION, fake.CXX11_ABI = "1.13.1", True
    sys.modules["deconv_ext._build_info"] = fake
    import torch
    import deconv_ext
    from deconv_ext import execution
    assert not execution.available()
    assert "deconv_ext._C" not in sys.modules, "the mismatched library was loaded"
    try:
        execution.require()
    except RuntimeError as exc:
        print(exc)
""")


def test_mismatched_build_is_not_loaded_and_says_why():
    """In a fresh interpreter: the extension is not loaded, and the library says why."""
    proc = subprocess.run([sys.executable, "-c", MISMATCH], cwd=TESTS, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "built against torch 1.13.1" in out and f"torch {torch.__version__}" in out
    assert "--force-reinstall" in out
