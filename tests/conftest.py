"""Shared fixtures.

The real data lives beside the repository in ``../shared/data`` (see its PROVENANCE.md).
Tests that need it use the ``shared_data`` fixture, which skips with a clear reason when
the folder is absent (it is present in CI, where those tests must run).
``$SHIFTLAB_TEST_DATA`` points elsewhere if needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHIFTLAB_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder ``../shared/data``; skips (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA} is absent; put the shared data there or set "
            "$SHIFTLAB_TEST_DATA (CI always has it)"
        )
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    # Two cores on CI: keep torch from oversubscribing, and every test deterministic.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(0)
