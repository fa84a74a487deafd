"""A small BatchNorm CNN trained on the embedded ``digits`` (real handwritten digits, no data
folder), shared by the test-time adaptation tests, and a strongly corrupted test set.

The source model: ``dann_cnn`` with ``norm=True`` (BatchNorm after every convolution and
hidden linear layer), hidden width 64, on the digits resized to 16x16 (1 channel), 4 epochs
of Adam (lr 1e-3, batch 64), seed 0: about 3 s on one core, about 97% clean test accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from tta_support import SIZE, small_bn_cnn

from shiftlab.backbones.base import Backbone
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData
from shiftlab.data.transforms import fit_dataset


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny batches gain nothing from a second intra-op thread, and two OpenMP threads
    stall (10x slower) when the machine's other core is busy. Function-scoped so that it
    runs after the suite-wide fixture that sets two threads for every test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def digits_test() -> TensorData:
    return fit_dataset(load_dataset("digits", "test"), SIZE, 1, mode="resize")


@pytest.fixture(scope="package")
def source_model() -> Iterator[Callable[[], Backbone]]:
    """A factory of fresh copies of the trained source network (eval mode)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train = fit_dataset(load_dataset("digits", "train"), SIZE, 1, mode="resize")
    net = small_bn_cnn(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        net.train()
        for batch in train.batches(64, shuffle=True, generator=gen):
            loss = F.cross_entropy(net(batch.x), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    torch.set_num_threads(before)

    def fresh() -> Backbone:
        return copy.deepcopy(net)

    yield fresh
