from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per xdist worker: `make test` runs one worker per core, and two threads per
    # worker oversubscribed the cores (the LPN toy test took 223 s instead of ~70 s)
    torch.set_num_threads(1)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def real_data() -> Path:
    """The shared real-data folder; tests using it skip cleanly when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA
