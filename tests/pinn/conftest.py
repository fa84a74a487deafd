"""PINN tests run torch on one thread.

The networks here are tiny (a few hundred to a few thousand weights): one thread is as fast
as two on an idle machine and 10-20x faster when another process holds the second core
(OpenMP barriers on small tensors), so the folder's run time does not depend on the load.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
