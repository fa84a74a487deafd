"""Embedded datasets (scikit-learn's bundled digits): no data folder needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shiftlab.data import embedded as E
from shiftlab.data.sources import load_dataset
from shiftlab.errors import DataError


@pytest.mark.parametrize("name", ["digits", "digits_m"])
def test_counts_shapes_and_split(name: str, tmp_path: Path) -> None:
    tr = load_dataset(name, "train", data_dir=tmp_path / "no-data-here")
    te = load_dataset(name, "test", data_dir=tmp_path / "no-data-here")
    c = 1 if name == "digits" else 3
    assert (len(tr), len(te)) == (1347, 450)
    assert tr.image_shape == te.image_shape == (c, 28, 28)
    assert tr.x.dtype == torch.uint8 and tr.y.dtype == torch.int64
    assert tr.classes == tuple("0123456789")
    # stratified: every digit has 43-46 test images (1,797 digits, 174-183 per class)
    assert all(43 <= n <= 46 for n in torch.bincount(te.y, minlength=10).tolist())
    assert int(tr.x.max()) == 255 and int(tr.x.min()) == 0
    assert not (tmp_path / "no-data-here").exists()


def test_split_is_fixed_and_disjoint() -> None:
    idx = E.split_indices()
    tr, te = set(idx["train"].tolist()), set(idx["test"].tolist())
    assert not tr & te and len(tr | te) == 1797
    assert idx["test"][:5].tolist() == sorted(idx["test"][:5].tolist())
    assert torch.equal(load_dataset("digits", "test").x, load_dataset("digits", "test").x)


def test_digits_look_like_mnist() -> None:
    d = load_dataset("digits", "train")
    assert int(d.x[:, :, :4].max()) == 0 and int(d.x[:, :, :, -4:].max()) == 0  # 4 px empty border
    inner = d.x[:, :, 4:24, 4:24].float()
    assert inner.mean() > 60  # the 20x20 box holds the digit
    # the upsampled 8x8 image round-trips: average-pooling 20 -> 8 correlates with the original
    from sklearn.datasets import load_digits

    orig = torch.from_numpy(load_digits().images[E.split_indices()["train"]]).float() / 16
    back = torch.nn.functional.interpolate(inner / 255, size=(8, 8), mode="area")[:, 0]
    corr = torch.corrcoef(torch.stack([back.flatten(), orig.flatten()]))[0, 1]
    assert corr > 0.95


def test_digits_m_is_the_same_digits_on_photos() -> None:
    g, m = load_dataset("digits", "test"), load_dataset("digits_m", "test")
    assert torch.equal(g.y, m.y)
    assert m.x.float().std(dim=(0, 2, 3)).min() > 40  # coloured, textured backgrounds
    # the photo is inverted on the ink (upsampled value > 0.5): horizontally adjacent pixels
    # on either side of a stroke edge differ far more than neighbours off the strokes
    ink = g.x[:, 0] > 127.5
    assert ink.any(dim=(1, 2)).all()
    edge = (ink[:, :, 1:] != ink[:, :, :-1]).unsqueeze(1).expand(-1, 3, -1, -1)
    off = (~ink[:, :, 1:] & ~ink[:, :, :-1]).unsqueeze(1).expand(-1, 3, -1, -1)
    step = (m.x[..., 1:].float() - m.x[..., :-1].float()).abs()
    assert step[edge].mean() > 3 * step[off].mean()
    assert not torch.equal(m.x, load_dataset("digits_m", "train").x[:450])
    assert torch.equal(m.x, load_dataset("digits_m", "test").x)  # deterministic


def test_copies_do_not_leak_into_the_cache() -> None:
    a = load_dataset("digits", "test")
    a.x.zero_()
    assert int(load_dataset("digits", "test").x.max()) == 255


def test_unknown_split() -> None:
    with pytest.raises(DataError, match="train, test"):
        load_dataset("digits", "val")
