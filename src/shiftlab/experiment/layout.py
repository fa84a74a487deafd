"""Memory layout of image batches (channels_last on CPU), shared by the runners and
:mod:`shiftlab.experiment.bn_stats` without an import cycle."""

from __future__ import annotations

import torch

from shiftlab.errors import ShiftlabError


def memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in channels_last layout when asked and 4-D (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def use_channels_last(option: str, device: torch.device) -> bool:
    """Resolve ``RunOptions.channels_last`` (``auto``: on CPU only)."""
    if option not in ("auto", "on", "off"):
        raise ShiftlabError(f"channels_last must be auto, on or off, got {option!r}.")
    return option == "on" or (option == "auto" and device.type == "cpu")
