"""The FFT-choice cache file: where it lives, and that a bad home never breaks a solve.

``fft_backend`` measures torch's and scipy's round trips once per shape and
keeps the winner in ``$XDG_CACHE_HOME/deconv_ext/fft_choice.json``. Each test
points the cache at a fresh folder and restores the module's state after.
"""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import deconv_ext as dx
from deconv_ext import fft_backend


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """auto FFT choice, empty in-memory cache, no warning given yet; restored afterwards."""
    monkeypatch.setenv(fft_backend.ENV, "auto")
    monkeypatch.setattr(fft_backend, "_override", None)
    monkeypatch.setattr(fft_backend, "_choices", {})
    monkeypatch.setattr(fft_backend, "_loaded", False)
    monkeypatch.setattr(fft_backend, "_warned", False)
    # One quick measurement per shape: the tests check the bookkeeping, not the timing.
    monkeypatch.setattr(fft_backend, "_measure", lambda shape, dtype: "torch")
    return tmp_path


def _solve_and_check(shape=(2, 21, 18)):
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.1
    psf = dx.gaussian(1.1, dtype=torch.float64)
    plan = dx.DeconvPlan(psf, shape[-2:], eps=0.0)
    restored = plan(plan.blur(x))
    assert torch.allclose(restored, x, atol=1e-8, rtol=0)


def _cache_warnings(record):
    return [w for w in record if "FFT-choice cache" in str(w.message)]


def test_xdg_cache_home_is_honoured(fresh_cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh_cache / "xdg"))
    path = fresh_cache / "xdg" / "deconv_ext" / "fft_choice.json"
    assert fft_backend.cache_path() == str(path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _solve_and_check()
    assert _cache_warnings(record) == []
    data = json.loads(path.read_text())
    assert list(data.values()) == ["torch"] and "(2, 21, 18)" in next(iter(data))


def test_relative_xdg_cache_home_falls_back_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fft_backend.cache_path() == str(tmp_path / ".cache" / "deconv_ext" / "fft_choice.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fft_backend.cache_path() == str(tmp_path / ".cache" / "deconv_ext" / "fft_choice.json")


def test_unwritable_cache_folder_warns_once_and_still_solves(fresh_cache, monkeypatch):
    # A regular file where the cache folder should be: no folder can be made
    # there, whoever runs the test (root ignores permission bits, not this).
    blocker = fresh_cache / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for shape in ((2, 21, 18), (1, 16, 23), (3, 20, 20)):  # three new shapes: three saves
            _solve_and_check(shape)
    found = _cache_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    assert "cannot write" in str(found[0].message) and str(blocker) in str(found[0].message)
    assert len(fft_backend._choices) == 3  # the choices still hold in memory
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder_warns_once(fresh_cache, monkeypatch):
    ro = fresh_cache / "ro"
    (ro / "deconv_ext").mkdir(parents=True)
    (ro / "deconv_ext").chmod(0o500)
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            _solve_and_check((2, 21, 18))
            _solve_and_check((1, 16, 23))
        assert len(_cache_warnings(record)) == 1
        assert os.listdir(ro / "deconv_ext") == []  # no temporary file left behind
    finally:
        (ro / "deconv_ext").chmod(0o700)


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", "\x00\xff garbage"],
                         ids=["truncated", "not-an-object", "binary"])
def test_corrupt_cache_file_warns_once_and_is_replaced(fresh_cache, monkeypatch, content):
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh_cache))
    path = fresh_cache / "deconv_ext" / "fft_choice.json"
    path.parent.mkdir()
    path.write_text(content, errors="surrogateescape")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _solve_and_check((2, 21, 18))
        _solve_and_check((1, 16, 23))
    found = _cache_warnings(record)
    assert len(found) == 1 and str(path) in str(found[0].message)
    assert len(json.loads(path.read_text())) == 2  # rewritten whole, as valid JSON


def test_cache_entries_with_unknown_values_are_ignored(fresh_cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(fresh_cache))
    path = fresh_cache / "deconv_ext" / "fft_choice.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"some key": "fftw-from-the-future", "other": "scipy"}))
    fft_backend._load()
    assert fft_backend._choices == {"other": "scipy"}
