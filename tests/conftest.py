"""pytest configuration shared by all test files."""
from __future__ import annotations

import os

import pytest
import torch

# A stale inductor cache can serve old code for a redefined op (DESIGN.md section 5).
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
