"""Batched AugMix and its PIL-equivalent ops (used by MEMO)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from shiftlab.data.augment import (
    affine_pixels,
    augmix,
    autocontrast,
    equalize,
    posterize,
    solarize_levels,
)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x * 255).round().byte().permute(1, 2, 0).numpy())


def _back(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture
def images() -> torch.Tensor:
    x = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    return (x * 255).round() / 255


def test_pixel_ops_equal_pil(images: torch.Tensor) -> None:
    bits = torch.tensor([4, 3, 4, 3])
    thr = torch.tensor([230, 128, 10, 256])
    eq, po, so = equalize(images), posterize(images, bits), solarize_levels(images, thr)
    for i in range(4):
        img = _pil(images[i])
        assert torch.equal(_back(ImageOps.equalize(img)), eq[i])
        assert torch.equal(_back(ImageOps.posterize(img, int(bits[i]))), po[i])
        assert torch.equal(_back(ImageOps.solarize(img, int(thr[i]))), so[i])
    low = images * 0.2 + 0.3
    ac = autocontrast(low)
    assert torch.allclose(ac.amin(dim=(2, 3)), torch.zeros(4, 3)) and torch.allclose(ac.amax(dim=(2, 3)), torch.ones(4, 3))


def test_affine_pixels_translates_like_pil(images: torch.Tensor) -> None:
    ident = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3)
    assert torch.allclose(affine_pixels(images, ident), images, atol=1e-6)
    shift = torch.tensor([[1.0, 0, 3], [0, 1.0, -2]]).expand(4, 2, 3)
    ours = affine_pixels(images, shift)
    ref = _back(_pil(images[0]).transform((20, 20), Image.AFFINE, (1, 0, 3, 0, 1, -2), Image.BILINEAR))
    assert torch.allclose(ours[0], ref, atol=1 / 255 + 1e-6)


def test_augmix_is_seeded_varied_and_in_range(images: torch.Tensor) -> None:
    views = images[:1].expand(32, -1, -1, -1)
    a = augmix(views, torch.Generator().manual_seed(5))
    b = augmix(views, torch.Generator().manual_seed(5))
    c = augmix(views, torch.Generator().manual_seed(6))
    assert a.shape == views.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    diffs = (a - views).abs().mean(dim=(1, 2, 3))
    assert (diffs > 1e-3).float().mean() > 0.8  # almost every copy is changed ...
    assert (a[0] - a[1:]).abs().mean() > 0.01  # ... and differently
    assert augmix(torch.rand(5, 1, 16, 16), torch.Generator().manual_seed(0)).shape == (5, 1, 16, 16)
    with pytest.raises(ValueError):
        augmix(views, torch.Generator(), severity=0)
