"""Helpers of the test-time adaptation tests (imported by their conftest and tests)."""

from __future__ import annotations

import torch

from shiftlab.backbones import create_backbone
from shiftlab.backbones.base import Backbone

SIZE = 16  # the digits are 8x8 upsampled; 16x16 keeps every test fast


def small_bn_cnn(seed: int = 0) -> Backbone:
    """``dann_cnn`` with BatchNorm (``norm=True``), hidden 64, 1x16x16 input, seeded init."""
    torch.manual_seed(seed)
    return create_backbone("dann_cnn", in_chans=1, num_classes=10, image_size=SIZE, norm=True, hidden=64)
