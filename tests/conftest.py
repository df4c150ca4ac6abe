"""pytest configuration shared by all test files."""
from __future__ import annotations

import os

# A stale inductor cache can serve old code for a redefined op (DESIGN.md
# section 5); set before torch (and its inductor config) is imported.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
