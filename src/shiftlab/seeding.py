"""Seeding and device selection."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, ask torch for deterministic kernels, return a data RNG.

    On CPU this makes a run bit-for-bit repeatable. Library code never draws from the global
    RNGs for data order or augmentation: it uses explicit generators (see
    :func:`epoch_generator`); the global torch RNG only drives weight init and dropout.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator for one epoch's data order/augmentation, independent of earlier epochs.

    Because it depends only on ``(seed, epoch, stream)``, a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 1_009 + stream * 7_919 + 12345) % (2**63))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps if available, else cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ValueError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.")
    return torch.device(device)
