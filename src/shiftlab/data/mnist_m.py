"""MNIST-M generator: MNIST digits blended onto BSDS500 photo patches.

Recipe of Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation" (ICML
2015), as in the widely used reference script (``create_mnistm.py``):

1. binarise each MNIST digit: a pixel is "ink" when its value is ``> threshold``
   (default ``0``, i.e. any non-zero pixel). This default was checked against the real
   MNIST-M test set (the first 9,001 MNIST test digits): the mean intensity of its pixels
   is about 108 where the MNIST pixel is 0 and about 147 for every non-zero MNIST value
   from 1 to 255 alike, so the real set inverted every non-zero pixel, not only those above
   128;
2. pad the 28×28 digit by 2 px to 32×32;
3. take a uniformly random 32×32 crop of a uniformly random BSDS500 training photo
   (200 JPEGs in ``BSDS500/BSDS500_train_images.tar``, read straight from the tar, sorted
   by name);
4. output ``|crop - 255 * ink|`` per RGB channel: the crop where there is no ink, its
   negative ``255 - crop`` on the strokes.

Output: ``x: [N, 3, 32, 32]`` uint8. Generation is deterministic per ``seed``
(:class:`numpy.random.Generator`: photo index, then crop offsets as uniforms) and vectorised
per photo (one fancy-indexing gather for all crops of a photo); 60,000 images take a few
seconds.

:func:`prepare_mnist_m` writes ``<cache_dir>/MNIST-M/generated/mnist_m_<split>_seed<k>.npz``
(uncompressed, atomic: temporary file then ``os.replace``) with ``x``, ``y`` and the
provenance (MNIST/BSDS MD5s, seed, threshold). ``split="train"`` uses all 60,000 MNIST
training digits (the real MNIST-M train set has 59,001); ``split="test"`` uses the first
9,001 MNIST test digits, like the real MNIST-M test set. The ``mnist_m`` loader looks for
the seed-0 training file under the data root, then under ``$SHIFTLAB_CACHE``.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from shiftlab.data.files import (
    FIX_HINT,
    atomic_save_npz,
    decode_image,
    is_writable_dir,
    known_md5,
    verify_known,
)
from shiftlab.errors import DataError

log = logging.getLogger(__name__)

BSDS_TAR = "BSDS500/BSDS500_train_images.tar"
GENERATED_DIR = "MNIST-M/generated"
#: Environment variable naming a writable folder for derived data (e.g. generated MNIST-M).
CACHE_ENV = "SHIFTLAB_CACHE"
#: Number of MNIST test digits the real MNIST-M test set was made from.
MNIST_M_TEST_SIZE = 9001


def load_bsds_backgrounds(root: Path) -> list[np.ndarray]:
    """The 200 BSDS500 training photos, decoded from ``root/BSDS500/BSDS500_train_images.tar``.

    The tar's MD5 is verified; members are read directly (nothing is extracted) and sorted
    by name so the list order does not depend on the tar's member order.

    Args:
        root: the data root.

    Returns:
        A list of ``[H, W, 3]`` uint8 arrays (481×321 or 321×481).

    Raises:
        DataError: missing or corrupt tar, or no JPEG inside.
    """
    path = verify_known(
        root,
        BSDS_TAR,
        hint="It holds the BSDS500 training photos (see PROVENANCE.md); "
        "torchvision cannot download it. " + FIX_HINT,
    )
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg")):
                    fh = tf.extractfile(m)
                    if fh is not None:
                        blobs[m.name] = fh.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"Archive {path} is unreadable or truncated ({e}). {FIX_HINT}") from e
    if not blobs:
        raise DataError(f"Archive {path} holds no JPEG images. {FIX_HINT}")
    return [decode_image(blobs[n], "RGB", f"{path}:{n}") for n in sorted(blobs)]


def generate_mnist_m(
    digits: np.ndarray,
    backgrounds: list[np.ndarray],
    seed: int = 0,
    threshold: int = 0,
) -> np.ndarray:
    """Blend digits onto random photo crops (the MNIST-M recipe, see the module docstring).

    Args:
        digits: ``[N, 28, 28]`` uint8 MNIST digits (white ink on black).
        backgrounds: photos ``[H, W, 3]`` uint8, each at least 32×32.
        seed: seed of the :class:`numpy.random.Generator` choosing photos and crops.
        threshold: a pixel is ink when ``digit > threshold`` (0: any non-zero pixel).

    Returns:
        ``[N, 3, 32, 32]`` uint8.
    """
    digits = np.asarray(digits)
    if digits.ndim != 3 or digits.shape[1:] != (28, 28):
        raise ValueError(f"digits must be [N, 28, 28], got {digits.shape}")
    if not backgrounds:
        raise ValueError("no background photos")
    for bg in backgrounds:
        if bg.ndim != 3 or bg.shape[2] != 3 or bg.shape[0] < 32 or bg.shape[1] < 32:
            raise ValueError(f"backgrounds must be [H>=32, W>=32, 3], got {bg.shape}")
    n = len(digits)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(backgrounds), size=n)
    u = rng.random((n, 2))
    out = np.empty((n, 32, 32, 3), np.uint8)
    ar = np.arange(32)
    for b, bg in enumerate(backgrounds):
        idx = np.flatnonzero(which == b)
        if idx.size == 0:
            continue
        h, w = bg.shape[:2]
        oy = np.minimum((u[idx, 0] * (h - 31)).astype(np.int64), h - 32)
        ox = np.minimum((u[idx, 1] * (w - 31)).astype(np.int64), w - 32)
        out[idx] = bg[oy[:, None, None] + ar[None, :, None], ox[:, None, None] + ar[None, None, :]]
    ink = np.pad(digits > threshold, ((0, 0), (2, 2), (2, 2)))
    # |crop - 255 * ink|: 255 - crop on ink, crop elsewhere.
    np.subtract(255, out, out=out, where=ink[..., None])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def generated_path(cache_dir: Path, split: str = "train", seed: int = 0) -> Path:
    """Where :func:`prepare_mnist_m` writes: ``cache_dir/MNIST-M/generated/mnist_m_<split>_seed<k>.npz``."""
    return Path(cache_dir) / GENERATED_DIR / f"mnist_m_{split}_seed{seed}.npz"


def generated_candidates(root: Path, split: str = "train", seed: int = 0) -> list[Path]:
    """Places the loader looks for a generated file, in order: the data root, ``$SHIFTLAB_CACHE``."""
    out = [generated_path(root, split, seed)]
    env = os.environ.get(CACHE_ENV)
    if env:
        out.append(generated_path(Path(env).expanduser(), split, seed))
    return out


def prepare_mnist_m(
    root: str | os.PathLike[str],
    seed: int = 0,
    split: str = "train",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    threshold: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate an MNIST-M split from the MNIST and BSDS500 files of ``root`` and save it.

    Args:
        root: data root holding ``MNIST/raw/`` and ``BSDS500/BSDS500_train_images.tar``
            (may be read-only).
        seed: generator seed (the loader uses seed 0).
        split: ``"train"`` (60,000 MNIST training digits) or ``"test"`` (the first 9,001
            MNIST test digits, like the real MNIST-M test set).
        cache_dir: writable folder to write into (default: ``root``).
        threshold: ink threshold, see :func:`generate_mnist_m`.
        overwrite: regenerate even if the file exists.

    Returns:
        Path of the ``.npz`` holding ``x: [N, 3, 32, 32]`` uint8, ``y: [N]`` int64 and the
        provenance strings ``mnist_md5``, ``bsds_md5``, ``seed``, ``threshold``.

    Raises:
        DataError: missing/corrupt inputs, or an unwritable ``cache_dir``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    out_root = Path(cache_dir).expanduser() if cache_dir is not None else root
    out = generated_path(out_root, split, seed)
    if out.is_file() and not overwrite:
        log.info("MNIST-M %s (seed %d) already generated at %s", split, seed, out)
        return out
    if not is_writable_dir(out.parent):
        raise DataError(
            f"Cannot write the generated MNIST-M set to {out}: {out_root} is not writable. Pass a "
            f"writable folder (`shiftlab data prepare mnist_m --cache-dir DIR`) and set "
            f"${CACHE_ENV}=DIR so the loader finds it."
        )
    t0 = time.perf_counter()
    x, y, info = generate_in_memory(root, split, seed=seed, threshold=threshold)
    arrays: dict[str, Any] = {
        "x": x,
        "y": y,
        "seed": np.array(seed),
        "threshold": np.array(threshold),
        "mnist_files": np.array(info["mnist_files"]),
        "mnist_md5": np.array(info["mnist_md5"]),
        "bsds_md5": np.array(info["bsds_md5"]),
        "recipe": np.array(info["recipe"]),
    }
    atomic_save_npz(out, arrays)
    log.info("generated MNIST-M %s (%d images, seed %d) in %.1fs -> %s", split, len(x), seed, time.perf_counter() - t0, out)
    return out


def generate_in_memory(
    root: str | os.PathLike[str], split: str = "train", seed: int = 0, threshold: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate an MNIST-M split in memory (nothing written): ``x [N, 3, 32, 32]`` uint8, ``y``, provenance."""
    from shiftlab.data.loaders import read_mnist

    root = Path(root).expanduser()
    digits, labels, mnist_info = read_mnist(root, split)
    if split == "test":
        digits, labels = digits[:MNIST_M_TEST_SIZE], labels[:MNIST_M_TEST_SIZE]
    x = generate_mnist_m(digits, load_bsds_backgrounds(root), seed=seed, threshold=threshold)
    info = {
        "variant": "generated",
        "seed": seed,
        "threshold": threshold,
        "mnist_files": list(mnist_info["files"]),
        "mnist_md5": list(mnist_info["md5"]),
        "bsds_md5": known_md5(BSDS_TAR),
        "recipe": "ganin2015: ink=digit>threshold, pad 2, random 32x32 BSDS500 crop, |crop-255*ink|",
    }
    return x, labels.astype(np.int64), info


def read_generated(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a file written by :func:`prepare_mnist_m`.

    Returns:
        ``x: [N, 3, 32, 32]`` uint8, ``y: [N]`` int64 and its provenance dict.

    Raises:
        DataError: truncated/corrupt file or wrong arrays (names the file).
    """
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"].astype(np.int64)
            info = {
                k: z[k].tolist()
                for k in ("seed", "threshold", "mnist_files", "mnist_md5", "bsds_md5", "recipe")
                if k in z.files
            }
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(
            f"Generated MNIST-M file {path} is truncated or corrupt ({e}). Delete it and run "
            "`shiftlab data prepare mnist_m` again."
        ) from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or len(y) != len(x):
        raise DataError(
            f"Generated MNIST-M file {path} has unexpected arrays (x {x.dtype} {x.shape}, y {y.shape}). "
            "Delete it and run `shiftlab data prepare mnist_m` again."
        )
    return x, y, info
