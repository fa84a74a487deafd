"""Deterministic whole-dataset transforms: bring images to one size and channel count.

Source and target must reach a network at one size. Recipes choose ``fit: pad`` (centred
zero padding, e.g. MNIST 28×28 -> 32×32, which is exactly how the real MNIST-M test
images were made: MNIST digits padded by 2 px) or ``fit: resize`` (bilinear, antialiased).
The MNIST -> MNIST-M recipes pad MNIST to 32×32; USPS (16×16) is resized to 28×28.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.data.tensors import TensorData, to_float, to_uint8


def fit_images(x: Tensor, size: int, mode: str = "pad") -> Tensor:
    """Bring ``x: [N, C, H, W]`` (uint8 or float) to ``[N, C, size, size]``, same dtype.

    ``pad`` zero-pads centred when smaller and centre-crops when larger; ``resize`` uses
    bilinear interpolation with antialiasing.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if mode == "pad":
        if h > size or w > size:
            top, left = (h - size) // 2, (w - size) // 2
            x = x[..., max(top, 0) : max(top, 0) + min(h, size), max(left, 0) : max(left, 0) + min(w, size)]
            h, w = x.shape[-2:]
        pt, pl = (size - h) // 2, (size - w) // 2
        return F.pad(x, (pl, size - w - pl, pt, size - h - pt))
    if mode == "resize":
        out = F.interpolate(to_float(x), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return to_uint8(out) if x.dtype == torch.uint8 else out.clamp_(0, 1)
    raise ValueError(f"unknown fit mode {mode!r}; use pad or resize")


def fit_channels(x: Tensor, channels: int) -> Tensor:
    """Grey -> RGB by repetition, RGB -> grey by averaging; ``x: [N, C, H, W]``."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        grey = to_float(x).mean(dim=1, keepdim=True)
        return to_uint8(grey) if x.dtype == torch.uint8 else grey
    raise ValueError(f"cannot convert {c} channels to {channels}")


def fit_dataset(data: TensorData, size: int, channels: int, mode: str = "pad") -> TensorData:
    """:func:`fit_images` and :func:`fit_channels` applied to a dataset (recorded in ``info``)."""
    x = fit_channels(fit_images(data.x, size, mode), channels)
    if x is data.x:
        return data
    return data.with_x(x, fit={"from": list(data.image_shape), "size": size, "channels": channels, "mode": mode})
