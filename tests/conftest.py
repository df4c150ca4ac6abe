"""pytest configuration shared by all test files."""
from __future__ import annotations

import os

# A stale inductor cache can serve old code for a redefined op; set before
# torch (and its inductor config) is imported.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
# CPU calls use the C++ pipeline unless a test picks another FFT library: no
# per-shape timing runs, no cache file written by the suite. (Set before
# deconv_ext is imported: its configuration is read once.)
os.environ.setdefault("DECONV_EXT_CPU_FFT", "pipeline")

import pytest  # noqa: E402
import torch  # noqa: E402


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker gets one core's worth of intra-op threads: two workers
    # with two OpenMP threads each on a 2-core machine stall at every barrier
    # (tiny-tensor tests ran ~20x slower). Tests that need more set it locally.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def configure(monkeypatch):
    """``configure(cpu_fft="scipy", ...)``: change deconv_ext's configuration for one test."""
    import dataclasses

    from deconv_ext import config

    def change(**changes):
        monkeypatch.setattr(config, "_current", dataclasses.replace(config.get(), **changes))

    return change


# -- hypothesis profiles (tests/test_properties.py) --------------------------
# "ci" (the default): 400 examples per property (>= 200 asked), derandomized (a fixed seed
# derived from each test, so CI runs are reproducible), no deadline (a shared
# 2-core machine makes timings noisy) and no example database, so nothing is
# written into the repository. "dev": a quick local loop. "thorough": a
# longer random search with a local database (.hypothesis/ is git-ignored).
# Select with HYPOTHESIS_PROFILE=<name>.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=400, deadline=None, derandomize=True,
                          database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None, database=None)
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
