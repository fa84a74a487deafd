"""Fixtures of the SSL method tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from ssl_support import load_digits16

from shiftlab.data.tensors import TensorData


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small batches gain nothing from a second thread (and stall when the other core is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits16() -> tuple[TensorData, TensorData, TensorData]:
    """See :func:`ssl_support.load_digits16`."""
    return load_digits16()
