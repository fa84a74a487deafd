"""Embedded datasets that need no data folder: ``digits`` and ``digits_m``.

Both come from files bundled with scikit-learn, so ``shiftlab demo`` and the method tests
run anywhere.

* ``digits``: :func:`sklearn.datasets.load_digits` (1,797 real handwritten digits, 8×8,
  values 0..16; Alpaydin & Kaynak, UCI optdigits). Each image is scaled to [0, 1],
  upsampled **8 → 20 px** (bilinear, ``align_corners=False``) and zero-padded by **4 px**
  on each side to 28×28, like MNIST's 20×20 digit box centred in a 28×28 frame; stored as
  uint8 ``[N, 1, 28, 28]``.
* ``digits_m``: the same digits the MNIST-M way (Ganin & Lempitsky 2015): the 28×28 digit
  is binarised (ink where the upsampled value is ``> 0.5``; the 8×8 digits have no
  anti-aliasing worth keeping, and a threshold of 0 would turn the bilinear halo into
  ink), a uniformly random 28×28 patch is cut from one of scikit-learn's two sample
  photos (``china.jpg``, ``flower.jpg``, :func:`sklearn.datasets.load_sample_images`),
  and the image is ``|patch - 255 * ink|`` per RGB channel: uint8 ``[N, 3, 28, 28]``.
  Photos and offsets come from ``numpy.random.default_rng(0)``, so the set is identical
  on every machine.

Splits: a fixed stratified split of the 1,797 images, ``train`` 1,347 / ``test`` 450
(:func:`sklearn.model_selection.train_test_split` with ``test_size=450``,
``random_state=0``, stratified on the label; indices kept in ascending order). ``digits``
and ``digits_m`` use the same indices, so ``digits_m/test`` shows the test digits of
``digits/test`` on photos.

The arrays are built once per process (``functools.lru_cache`` on pure functions);
loaders hand out copies, so the cached arrays are never modified.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shiftlab.data.sources import DATASETS
from shiftlab.data.tensors import TensorData

SPLIT_SEED = 0
TEST_SIZE = 450
PHOTO_SEED = 0
INK_THRESHOLD = 0.5
CLASSES = tuple(str(i) for i in range(10))


@functools.lru_cache(maxsize=1)
def _digits_float() -> tuple[np.ndarray, np.ndarray]:
    """``x: [1797, 28, 28]`` float32 in [0, 1] and ``y: [1797]`` int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4)).clamp_(0.0, 1.0)[:, 0]
    return x.numpy(), d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified split: ``{"train": [1347] int64, "test": [450] int64}`` (sorted)."""
    from sklearn.model_selection import train_test_split

    _, y = _digits_float()
    train, test = train_test_split(
        np.arange(len(y)), test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    return {"train": np.sort(train), "test": np.sort(test)}


@functools.lru_cache(maxsize=1)
def _digits_uint8() -> np.ndarray:
    x, _ = _digits_float()
    return np.rint(x * 255.0).astype(np.uint8)[:, None]


@functools.lru_cache(maxsize=1)
def _digits_m_uint8() -> np.ndarray:
    """``[1797, 3, 28, 28]`` uint8: the digits on random sample-photo patches."""
    from sklearn.datasets import load_sample_images

    x, _ = _digits_float()
    photos = [np.asarray(p, np.uint8) for p in load_sample_images().images]
    n = len(x)
    rng = np.random.default_rng(PHOTO_SEED)
    which = rng.integers(0, len(photos), size=n)
    u = rng.random((n, 2))
    out = np.empty((n, 28, 28, 3), np.uint8)
    ar = np.arange(28)
    for b, ph in enumerate(photos):
        idx = np.flatnonzero(which == b)
        h, w = ph.shape[:2]
        oy = np.minimum((u[idx, 0] * (h - 27)).astype(np.int64), h - 28)
        ox = np.minimum((u[idx, 1] * (w - 27)).astype(np.int64), w - 28)
        out[idx] = ph[oy[:, None, None] + ar[None, :, None], ox[:, None, None] + ar[None, None, :]]
    ink = x > INK_THRESHOLD
    np.subtract(255, out, out=out, where=ink[..., None])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _make(name: str, x_all: np.ndarray, split: str, info: dict[str, object]) -> TensorData:
    from shiftlab.errors import DataError

    idx = split_indices().get(split)
    if idx is None:
        raise DataError(f"Unknown split {split!r} for dataset {name!r}; available splits: train, test.")
    _, y = _digits_float()
    x = torch.from_numpy(x_all[idx].copy())
    return TensorData(x, torch.from_numpy(y[idx].copy()), name, split, CLASSES, info)


@DATASETS.register(
    "digits",
    summary="scikit-learn's 1,797 8x8 digits upsampled to [1, 28, 28]; 1,347 train / 450 test (embedded)",
    paper="Alpaydin, Kaynak. Optical recognition of handwritten digits (UCI optdigits). 1998",
)
def load_digits_dataset(root: Path, split: str, download: bool) -> TensorData:
    """``x: [N, 1, 28, 28]`` uint8; ``root`` and ``download`` are ignored (bundled data)."""
    info = {"files": ["sklearn.datasets.load_digits"], "variant": "8->20 bilinear, pad 4", "split_seed": SPLIT_SEED}
    return _make("digits", _digits_uint8(), split, info)


@DATASETS.register(
    "digits_m",
    summary="digits blended onto sample-photo patches the MNIST-M way, [3, 28, 28] (embedded)",
    paper="Ganin, Lempitsky. Unsupervised domain adaptation by backpropagation. ICML 2015",
)
def load_digits_m(root: Path, split: str, download: bool) -> TensorData:
    """``x: [N, 3, 28, 28]`` uint8, same split indices as ``digits``; ``root`` is ignored."""
    info = {
        "files": ["sklearn.datasets.load_digits", "sklearn.datasets.load_sample_images"],
        "variant": f"|patch - 255*ink|, ink > {INK_THRESHOLD}, photo seed {PHOTO_SEED}",
        "split_seed": SPLIT_SEED,
    }
    return _make("digits_m", _digits_m_uint8(), split, info)
