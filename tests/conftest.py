"""pytest configuration shared by all test files."""
from __future__ import annotations

import os

# A stale inductor cache can serve old code for a redefined op (DESIGN.md
# section 5); set before torch (and its inductor config) is imported.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
# CPU calls use torch.fft (the ops) unless a test picks another FFT backend:
# no per-shape timing runs, no cache file written by the suite.
os.environ.setdefault("DECONV_EXT_FFT", "torch")

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
