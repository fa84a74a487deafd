"""Loaders of real data files, registered in :data:`shiftlab.data.sources.DATASETS`.

Every loader is ``loader(root, split, download) -> TensorData`` with ``x: [N, C, H, W]``
uint8 and ``y: [N]`` int64; layouts follow torchvision's so existing data folders work.
Each ``TensorData.info`` records the files read, their MD5s and the variant used.

Datasets and decisions:

* ``mnist``: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; the
  uncompressed file is preferred when present (faster), else the ``.gz``; either is
  MD5-verified (uncompressed MD5s are those of the decompressed canonical ``.gz``).
  60,000 / 10,000 images ``[1, 28, 28]``. ``download=True`` fetches through
  ``torchvision.datasets.MNIST``.
* ``usps``: splits ``train``/``test`` choose one variant for both splits: LIBSVM
  (``usps.bz2`` + ``usps.t.bz2``, values in [-1, 1] mapped like torchvision,
  ``uint8((v + 1) / 2 * 255)``, labels ``1..10`` minus 1) **only when both LIBSVM files
  exist**, else ``usps.h5`` (floats in [0, 1], rounded to uint8) for both, so train and
  test always share one normalisation (``info["variant"]``, and ``info["note"]`` when a
  lone ``usps.t.bz2`` was passed over); with no h5 at all, a split's own LIBSVM file is
  used (:func:`usps_variant`). Explicit splits ``train_libsvm``, ``test_libsvm``,
  ``train_h5``, ``test_h5`` read one variant. 7,291 / 2,007 images ``[1, 16, 16]``
  (resizing happens elsewhere). ``download=True`` fetches the LIBSVM files through
  ``torchvision.datasets.USPS`` when no usable variant is present.
* ``mnist_m``: ``test`` from the canonical folder ``root/MNIST-M/mnist_m/mnist_m_test/`` +
  ``mnist_m_test_labels.txt`` when present, else straight from
  ``root/MNIST-M/mnist_m_test.tar.gz`` (streamed and decoded in memory, about 1.5 s for
  9,001 PNGs, so nothing is cached on disk and a read-only root works). ``train`` from
  the canonical folder, else the file written by ``shiftlab data prepare mnist_m``
  (:mod:`shiftlab.data.mnist_m`; looked up under the root, then ``$SHIFTLAB_CACHE``).
  ``[3, 32, 32]``. There is nothing to download (no official URL).
* ``omniglot``: splits ``background_small1`` (2,720 images), ``background_small2``
  (3,120), ``background`` (19,280), ``evaluation`` (13,180) from
  ``root/omniglot-py/images_<split>.zip`` (MD5-verified) or the extracted folder
  ``root/omniglot-py/images_<split>/`` (torchvision layout). Images ``[1, 105, 105]`` at
  native size, **inverted so strokes are 255 on a 0 background** (like MNIST; the PNGs
  are black strokes on white). Labels index ``classes`` = sorted ``"Alphabet/characterNN"``.
  For alphabet-level splits, per class (so it stays valid after ``TensorData.subset``):
  ``info["alphabet"]`` is the alphabet name of each class and ``info["class_alphabet"]``
  its index into ``info["alphabets"]`` (sorted names); an image's alphabet index is
  ``torch.tensor(info["class_alphabet"])[y]``.
* ``omniglot_runs``: Lake et al.'s 20 one-shot 20-way runs
  (``root/omniglot-py/one-shot-classification/all_runs.zip`` or its extracted
  ``all_runs/`` folder), split ``test``. ``x`` holds 800 images run by run: for run ``r``
  (0-based) rows ``40 r .. 40 r + 19`` are the 20 training images ``class01..class20``
  (the support, one per class) and rows ``40 r + 20 .. 40 r + 39`` the 20 test images
  ``item01..item20`` (the queries). ``y`` is run-local: support ``k`` has label ``k``; a
  query's label is the index of its class's support image. ``info["runs"]`` is a list
  of 20 dicts ``{"name", "support_idx", "query_idx", "query_target"}`` (20 ints each;
  ``query_target[j]`` indexes ``support_idx``). Same inversion as ``omniglot``.
* ``cifar10`` / ``cifar100``: torchvision pickle format
  (``root/cifar-10-batches-py/`` or ``root/cifar-100-python/``, fine labels), read with a
  restricted unpickler; if the folder is absent but ``cifar-10-python.tar.gz`` /
  ``cifar-100-python.tar.gz`` is present (MD5-verified), the batches are read from the
  tarball in memory. ``[3, 32, 32]``. Checksum policy: a batch file whose MD5 equals
  torchvision's is verified; a file that does not match **and holds the canonical number
  of images** (10,000 per CIFAR-10 batch, 50,000/10,000 for CIFAR-100) is a corrupt
  canonical file and an error; a file with another number of images is a user's own
  subset or a test fixture in the same format, loaded with ``info["verified"] = False``
  and a logged warning. ``download=True`` goes through ``torchvision.datasets.CIFAR10/100``.
* ``folder`` (``folder:PATH``): ImageFolder layout ``PATH[/<split>]/<class>/**/*.png|jpg|...``;
  ``PATH/<split>`` is used when it is a folder, else ``PATH`` itself (the split is then
  only recorded). Classes are the sorted sub-folders holding images. Images are
  grayscale (``[1, H, W]``) when every file is grayscale, else RGB. Images of differing
  sizes are resized (bilinear) to the most common size, with a warning and
  ``info["resized"]`` counting them.
* ``npz`` (``npz:PATH``): arrays ``x`` and ``y`` (the split is then ignored and
  ``info["split_ignored"]`` is true), or ``x_<split>`` / ``y_<split>`` (e.g.
  ``x_train``, ``x_test``). ``x`` may be ``[N, H, W]``, ``[N, H, W, C]`` or
  ``[N, C, H, W]``: channels-last when the last axis is 1 or 3 and axis 1 is not,
  channels-first otherwise. uint8/bool/integer ``x`` is taken on the 0..255 scale
  (out-of-range is an error), float ``x`` must lie in [0, 1]. ``y`` must be integers
  ``>= 0``; an optional ``classes`` string array names them. Loaded with
  ``allow_pickle=False``.
"""

from __future__ import annotations

import collections
import logging
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftlab.data.files import (
    FIX_HINT,
    cached_md5,
    decode_image,
    known_md5,
    read_h5_split,
    read_idx,
    read_libsvm_bz2,
    safe_unpickle,
    verify_file,
    verify_known,
)
from shiftlab.data.sources import DATASETS
from shiftlab.data.tensors import TensorData
from shiftlab.errors import DataError

log = logging.getLogger(__name__)

DIGIT_CLASSES = tuple(str(i) for i in range(10))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _split_error(dataset: str, split: str, allowed: tuple[str, ...] | list[str]) -> DataError:
    return DataError(f"Unknown split {split!r} for dataset {dataset!r}; available splits: {', '.join(allowed)}.")


def _hint(download: str) -> str:
    return (
        f"{download} Point the data root at a folder that has the files (--data-dir or "
        "$SHIFTLAB_DATA), and check every known file with `shiftlab data verify`."
    )


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _check_labels(path: Any, y: np.ndarray, num_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"Labels in {path} lie outside 0..{num_classes - 1} (found {y.min()}..{y.max()}). {FIX_HINT}")


# ----------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_DOWNLOAD = "Use --download to fetch MNIST through torchvision.datasets.MNIST."


def _download_mnist(root: Path) -> None:
    try:
        from torchvision.datasets import MNIST

        MNIST(str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"Downloading MNIST into {root / 'MNIST' / 'raw'} failed ({e}). {_hint('')}") from e


def read_mnist(root: Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read and verify MNIST's idx files.

    Args:
        root: the data root (files under ``root/MNIST/raw/``).
        split: ``"train"`` or ``"test"``.
        download: fetch missing files through torchvision.

    Returns:
        ``x: [N, 28, 28]`` uint8, ``y: [N]`` int64 and ``info`` (``files``, ``md5``).

    Raises:
        DataError: missing, truncated or corrupt files (names the file and MD5).
    """
    if split not in MNIST_FILES:
        raise _split_error("mnist", split, list(MNIST_FILES))
    root = Path(root)
    raw = root / "MNIST" / "raw"

    def find(stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (raw / name).is_file():
                return raw / name
        return None

    paths = [find(stem) for stem in MNIST_FILES[split]]
    if None in paths and download:
        _download_mnist(root)
        paths = [find(stem) for stem in MNIST_FILES[split]]
    for stem, p in zip(MNIST_FILES[split], paths, strict=True):
        if p is None:
            gz = f"MNIST/raw/{stem}.gz"
            raise DataError(
                f"MNIST {split} file missing: expected {root / gz} (MD5 {known_md5(gz)}) or the "
                f"uncompressed {raw / stem}. {_hint(_MNIST_DOWNLOAD)}"
            )
    files, md5s = [], []
    for p in paths:
        assert p is not None
        rel = p.relative_to(root).as_posix()
        verify_known(root, rel, hint=_hint(_MNIST_DOWNLOAD))
        files.append(rel)
        md5s.append(cached_md5(p))
    x = read_idx(paths[0])
    y = read_idx(paths[1]).astype(np.int64)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or y.shape != (x.shape[0],):
        raise DataError(f"MNIST files {paths} have unexpected shapes {x.shape} / {y.shape}. {FIX_HINT}")
    _check_labels(paths[1], y, 10)
    return x, y, {"files": files, "md5": md5s, "variant": "idx"}


@DATASETS.register(
    "mnist",
    summary="MNIST handwritten digits: 60,000 train / 10,000 test, [1, 28, 28]",
    paper="LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document recognition. 1998",
)
def load_mnist(root: Path, split: str, download: bool) -> TensorData:
    """MNIST from ``root/MNIST/raw`` (idx, gz or not): ``x: [N, 1, 28, 28]`` uint8."""
    x, y, info = read_mnist(root, split, download)
    xt, yt = _to_tensors(x[:, None], y)
    return TensorData(xt, yt, "mnist", split, DIGIT_CLASSES, info)


# ----------------------------------------------------------------------------- USPS

USPS_SPLITS = ("train", "test", "train_libsvm", "test_libsvm", "train_h5", "test_h5")
_USPS_LIBSVM = {"train": "usps.bz2", "test": "usps.t.bz2"}
_USPS_DOWNLOAD = "Use --download to fetch the LIBSVM files (usps.bz2, usps.t.bz2) through torchvision.datasets.USPS."


def _download_usps(folder: Path) -> None:
    try:
        from torchvision.datasets import USPS

        for train in (True, False):
            USPS(str(folder), train=train, download=True)
    except Exception as e:
        raise DataError(f"Downloading USPS into {folder} failed ({e}). {_hint('')}") from e


def usps_variant(folder: Path, split: str) -> str | None:
    """The USPS variant split ``"train"``/``"test"`` reads from ``folder`` (``None``: none usable).

    LIBSVM when both LIBSVM files exist; else h5 when ``usps.h5`` exists (for both splits,
    even if one LIBSVM file is there); else LIBSVM when this split's LIBSVM file exists
    (no h5 to be inconsistent with).
    """
    if all((folder / f).is_file() for f in _USPS_LIBSVM.values()):
        return "libsvm"
    if (folder / "usps.h5").is_file():
        return "h5"
    if (folder / _USPS_LIBSVM[split]).is_file():
        return "libsvm"
    return None


@DATASETS.register(
    "usps",
    summary="USPS handwritten digits: 7,291 train / 2,007 test, [1, 16, 16] (LIBSVM or h5 variant)",
    paper="Hull. A database for handwritten text recognition research. TPAMI 1994",
)
def load_usps(root: Path, split: str, download: bool) -> TensorData:
    """USPS from ``root/USPS``: ``x: [N, 1, 16, 16]`` uint8 (variant rules in the module docstring)."""
    if split not in USPS_SPLITS:
        raise _split_error("usps", split, USPS_SPLITS)
    root = Path(root)
    folder = root / "USPS"
    base, _, forced = split.partition("_")
    info: dict[str, Any] = {}
    if forced:
        variant = forced
        if variant == "libsvm" and not (folder / _USPS_LIBSVM[base]).is_file() and download:
            _download_usps(folder)
    else:
        variant = usps_variant(folder, base)
        if variant is None and download:
            _download_usps(folder)
            variant = usps_variant(folder, base)
        if variant is None:
            raise DataError(
                f"USPS not found: expected {folder / 'usps.bz2'} (MD5 {known_md5('USPS/usps.bz2')}) and "
                f"{folder / 'usps.t.bz2'} (MD5 {known_md5('USPS/usps.t.bz2')}), or {folder / 'usps.h5'} "
                f"(MD5 {known_md5('USPS/usps.h5')}). {_hint(_USPS_DOWNLOAD)}"
            )
        if variant == "h5" and (folder / "usps.t.bz2").is_file():
            info["note"] = (
                "usps.t.bz2 is present but usps.bz2 is not: the h5 variant is used for both splits "
                "so that train and test share one normalisation (use split 'test_libsvm' for the LIBSVM test set)"
            )
    if variant == "libsvm":
        rel = f"USPS/{_USPS_LIBSVM[base]}"
        path = verify_known(root, rel, hint=_hint(_USPS_DOWNLOAD))
        xf, y = read_libsvm_bz2(path, 256)
        x = ((xf + 1.0) / 2.0 * 255.0).clip(0, 255).astype(np.uint8)  # torchvision's mapping
        y = y - 1
    else:
        rel = "USPS/usps.h5"
        path = verify_known(root, rel, hint=_hint(_USPS_DOWNLOAD))
        xf, y = read_h5_split(path, base)
        x = np.rint(np.clip(xf, 0.0, 1.0) * 255.0).astype(np.uint8)
    if x.shape[1:] != (256,):
        raise DataError(f"USPS file {path} has {x.shape[1:]} features per image, expected 256. {FIX_HINT}")
    _check_labels(path, y, 10)
    info.update({"files": [rel], "md5": [cached_md5(path)], "variant": variant})
    xt, yt = _to_tensors(x.reshape(-1, 1, 16, 16), y)
    return TensorData(xt, yt, "usps", split, DIGIT_CLASSES, info)


# ----------------------------------------------------------------------------- MNIST-M

MNIST_M_TAR = "MNIST-M/mnist_m_test.tar.gz"
_MNIST_M_HINT = (
    "MNIST-M cannot be downloaded (no official URL): put the original folder "
    "MNIST-M/mnist_m/mnist_m_<split>/ with mnist_m_<split>_labels.txt under the data root"
)


def _parse_label_lines(text: str, what: str) -> list[tuple[str, int]]:
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{what}: line {i + 1} is not '<png> <digit>': {line!r}. {FIX_HINT}")
        out.append((parts[0], int(parts[1])))
    return out


def _decode_listed(labels: list[tuple[str, int]], get: Callable[[str], bytes | None], what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(labels), 3, 32, 32), np.uint8)
    for i, (name, _) in enumerate(labels):
        data = get(name)
        if data is None:
            raise DataError(f"{what}: image {name} listed in the labels file is missing. {FIX_HINT}")
        img = decode_image(data, "RGB", f"{what}:{name}")
        if img.shape != (32, 32, 3):
            raise DataError(f"{what}:{name} is {img.shape}, expected 32x32 RGB. {FIX_HINT}")
        x[i] = img.transpose(2, 0, 1)
    y = np.array([lab for _, lab in labels], np.int64)
    _check_labels(what, y, 10)
    return x, y


def _mnist_m_from_folder(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    base = root / "MNIST-M" / "mnist_m"
    folder, labels_file = base / f"mnist_m_{split}", base / f"mnist_m_{split}_labels.txt"
    if not (folder.is_dir() and labels_file.is_file()):
        return None
    labels = _parse_label_lines(labels_file.read_text(), str(labels_file))

    def get(name: str) -> bytes | None:
        p = folder / name
        return p.read_bytes() if p.is_file() else None

    x, y = _decode_listed(labels, get, str(folder))
    return x, y, {"files": [folder.relative_to(root).as_posix()], "variant": "folder"}


def _mnist_m_test_from_tar(root: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    path = root / MNIST_M_TAR
    if not path.is_file():
        return None
    verify_known(root, MNIST_M_TAR, hint=_hint(_MNIST_M_HINT + "."))
    blobs: dict[str, bytes] = {}
    label_text: str | None = None
    try:
        with tarfile.open(path, "r|gz") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                fh = tf.extractfile(m)
                if fh is None:
                    continue
                leaf = m.name.rsplit("/", 1)[-1]
                if m.name.endswith("mnist_m_test_labels.txt"):
                    label_text = fh.read().decode("ascii")
                elif "/mnist_m_test/" in f"/{m.name}" and leaf.endswith(".png"):
                    blobs[leaf] = fh.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"Archive {path} is unreadable or truncated ({e}). {FIX_HINT}") from e
    if label_text is None:
        raise DataError(f"Archive {path} lacks mnist_m_test_labels.txt. {FIX_HINT}")
    labels = _parse_label_lines(label_text, f"{path}:mnist_m_test_labels.txt")
    x, y = _decode_listed(labels, blobs.get, str(path))
    return x, y, {"files": [MNIST_M_TAR], "md5": [cached_md5(path)], "variant": "real"}


@DATASETS.register(
    "mnist_m",
    summary="MNIST-M: MNIST digits on BSDS500 photo patches, [3, 32, 32] (test real; train real or generated)",
    paper="Ganin, Lempitsky. Unsupervised domain adaptation by backpropagation. ICML 2015",
)
def load_mnist_m(root: Path, split: str, download: bool) -> TensorData:
    """MNIST-M: ``x: [N, 3, 32, 32]`` uint8 (sources in the module docstring).

    Splits: ``test`` (the real 9,001 test images), ``train`` (the canonical folder when a
    user has it, else the generated set), ``generated_train`` (60,000, from the MNIST
    training digits) and ``generated_test`` (from the first 9,001 MNIST test digits, the
    digits of the real test set: for checking the generator's fidelity). A generated split
    is read from the cache written by ``shiftlab data prepare mnist_m`` when present, else
    generated in memory (deterministic, seed 0, about 3 s for 60,000 images; nothing is
    written).
    """
    from shiftlab.data import mnist_m as gen

    splits = ("train", "test", "generated_train", "generated_test")
    if split not in splits:
        raise _split_error("mnist_m", split, splits)
    root = Path(root)
    got = _mnist_m_from_folder(root, split) if split in ("train", "test") else None
    if got is None and split == "test":
        got = _mnist_m_test_from_tar(root)
    if got is None and split in ("train", "generated_train", "generated_test"):
        gsplit = "test" if split == "generated_test" else "train"
        for cand in gen.generated_candidates(root, gsplit, 0):
            if cand.is_file():
                x, y, ginfo = gen.read_generated(cand)
                got = (x, y, {"files": [str(cand)], "variant": "generated", **ginfo})
                break
        if got is None and (root / gen.BSDS_TAR).is_file():
            got = gen.generate_in_memory(root, gsplit, seed=0)
    if got is None:
        if split == "test":
            raise DataError(
                f"MNIST-M test not found: expected {root / MNIST_M_TAR} (MD5 {known_md5(MNIST_M_TAR)}) or "
                f"the folder {root / 'MNIST-M/mnist_m/mnist_m_test'} with "
                f"{root / 'MNIST-M/mnist_m/mnist_m_test_labels.txt'}. {_hint(_MNIST_M_HINT + ' (--download cannot fetch it).')}"
            )
        looked = ", ".join(str(p) for p in gen.generated_candidates(root, "train", 0))
        raise DataError(
            f"MNIST-M {split} not found: no folder {root / 'MNIST-M/mnist_m/mnist_m_train'}, no generated "
            f"set ({looked}) and no BSDS500 photos ({root / gen.BSDS_TAR}) to generate it from. Put MNIST "
            f"and BSDS500 under the data root and run `shiftlab data prepare mnist_m` (add --cache-dir DIR "
            f"and set ${gen.CACHE_ENV}=DIR when the data root is read-only); --download cannot fetch MNIST-M."
        )
    x, y, info = got
    xt, yt = _to_tensors(x, y)
    return TensorData(xt, yt, "mnist_m", split, DIGIT_CLASSES, info)


# ----------------------------------------------------------------------------- Omniglot

OMNIGLOT_SPLITS = ("background_small1", "background_small2", "background", "evaluation")
_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"


def _omniglot_download(root: Path, split: str) -> None:
    try:
        if split in ("background", "evaluation"):
            from torchvision.datasets import Omniglot

            Omniglot(str(root), background=split == "background", download=True)
        else:
            from torchvision.datasets.utils import download_url

            name = f"images_{split}.zip"
            download_url(_OMNIGLOT_URL + name, str(root / "omniglot-py"), name, known_md5(f"omniglot-py/{name}"))
    except Exception as e:
        raise DataError(f"Downloading Omniglot {split} into {root / 'omniglot-py'} failed ({e}). {_hint('')}") from e


def _ink(img: np.ndarray) -> np.ndarray:
    """Omniglot PNG (mode '1', True = white paper) -> uint8 with strokes 255."""
    if img.dtype == bool:
        return np.where(img, 0, 255).astype(np.uint8)
    return (255 - img).astype(np.uint8)


def _read_members(source: Path, predicate: Callable[[str], bool]) -> dict[str, bytes]:
    """``{relative name: bytes}`` of the files of a zip or folder whose name satisfies ``predicate``."""
    out: dict[str, bytes] = {}
    if source.is_dir():
        for p in source.rglob("*"):
            rel = p.relative_to(source.parent).as_posix()
            if p.is_file() and predicate(rel):
                out[rel] = p.read_bytes()
        return out
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                if not info.is_dir() and predicate(info.filename):
                    out[info.filename] = zf.read(info)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"Archive {source} is unreadable or truncated ({e}). {FIX_HINT}") from e
    return out


@DATASETS.register(
    "omniglot",
    summary="Omniglot characters, [1, 105, 105], strokes bright; splits background_small1/2, background, evaluation",
    paper="Lake, Salakhutdinov, Tenenbaum. Human-level concept learning through probabilistic program induction. Science 2015",
)
def load_omniglot(root: Path, split: str, download: bool) -> TensorData:
    """Omniglot images ``x: [N, 1, 105, 105]`` uint8 (ink 255), labels = character classes."""
    if split not in OMNIGLOT_SPLITS:
        raise _split_error("omniglot", split, OMNIGLOT_SPLITS)
    root = Path(root)
    rel_zip = f"omniglot-py/images_{split}.zip"
    zpath, folder = root / rel_zip, root / f"omniglot-py/images_{split}"
    if not zpath.is_file() and not folder.is_dir() and download:
        _omniglot_download(root, split)
    hint = _hint(
        "Use --download to fetch it (torchvision.datasets.Omniglot for background/evaluation, "
        "the authors' GitHub for the small splits)."
    )
    if zpath.is_file():
        verify_known(root, rel_zip, hint=hint)
        source, info = zpath, {"files": [rel_zip], "md5": [cached_md5(zpath)]}
    elif folder.is_dir():
        source, info = folder, {"files": [folder.relative_to(root).as_posix()]}
    else:
        raise DataError(
            f"Omniglot {split} not found: expected {zpath} (MD5 {known_md5(rel_zip)}) or the extracted "
            f"folder {folder}. {hint}"
        )
    blobs = _read_members(source, lambda n: n.lower().endswith(".png"))
    items: list[tuple[str, str, str]] = []
    for name in blobs:
        parts = name.split("/")
        if len(parts) < 4:
            raise DataError(f"{source}: unexpected member {name!r}, expected images_{split}/<alphabet>/<character>/<file>.png.")
        items.append((parts[-3], parts[-2], name))
    if not items:
        raise DataError(f"{source} holds no PNG images. {hint}")
    items.sort()
    classes = sorted({f"{a}/{c}" for a, c, _ in items})
    alphabets = sorted({a for a, _, _ in items})
    class_index = {c: i for i, c in enumerate(classes)}
    alpha_index = {a: i for i, a in enumerate(alphabets)}
    x = np.empty((len(items), 1, 105, 105), np.uint8)
    for i, (_, _, name) in enumerate(items):
        img = decode_image(blobs[name], "1", f"{source}:{name}")
        if img.shape != (105, 105):
            raise DataError(f"{source}:{name} is {img.shape}, expected 105x105. {FIX_HINT}")
        x[i, 0] = _ink(img)
    y = np.array([class_index[f"{a}/{c}"] for a, c, _ in items], np.int64)
    info.update(
        {
            "variant": "ink=255",
            "alphabets": tuple(alphabets),
            "class_alphabet": [alpha_index[c.split("/")[0]] for c in classes],
            "alphabet": tuple(c.split("/")[0] for c in classes),
        }
    )
    xt, yt = _to_tensors(x, y)
    return TensorData(xt, yt, "omniglot", split, tuple(classes), info)


RUNS_ZIP = "omniglot-py/one-shot-classification/all_runs.zip"


@DATASETS.register(
    "omniglot_runs",
    summary="Omniglot one-shot benchmark: Lake's 20 runs of 20-way 1-shot, 800 images [1, 105, 105], info['runs']",
    paper="Lake, Salakhutdinov, Tenenbaum. Human-level concept learning through probabilistic program induction. Science 2015",
)
def load_omniglot_runs(root: Path, split: str, download: bool) -> TensorData:
    """The 20 one-shot runs: ``x: [800, 1, 105, 105]`` uint8 and ``info["runs"]`` (module docstring)."""
    if split != "test":
        raise _split_error("omniglot_runs", split, ("test",))
    root = Path(root)
    zpath = root / RUNS_ZIP
    folder = zpath.with_suffix("")
    if not zpath.is_file() and not folder.is_dir() and download:
        try:
            from torchvision.datasets.utils import download_url

            download_url(_OMNIGLOT_URL + "one-shot-classification/all_runs.zip", str(zpath.parent), zpath.name, known_md5(RUNS_ZIP))
        except Exception as e:
            raise DataError(f"Downloading {zpath.name} into {zpath.parent} failed ({e}). {_hint('')}") from e
    hint = _hint("Use --download to fetch it from the authors' GitHub (brendenlake/omniglot).")
    if zpath.is_file():
        verify_known(root, RUNS_ZIP, hint=hint)
        blobs = _read_members(zpath, lambda n: n.endswith((".png", ".txt")))
        info: dict[str, Any] = {"files": [RUNS_ZIP], "md5": [cached_md5(zpath)]}
    elif folder.is_dir():
        blobs = {k.split("/", 1)[1]: v for k, v in _read_members(folder, lambda n: n.endswith((".png", ".txt"))).items()}
        info = {"files": [folder.relative_to(root).as_posix()]}
    else:
        raise DataError(f"Omniglot one-shot runs not found: expected {zpath} (MD5 {known_md5(RUNS_ZIP)}) or the folder {folder}. {hint}")
    run_names = sorted({n.split("/")[0] for n in blobs if re.fullmatch(r"run\d+/class_labels\.txt", n)})
    if not run_names:
        raise DataError(f"{zpath}: no runNN/class_labels.txt found. {FIX_HINT}")
    images: list[np.ndarray] = []
    labels: list[int] = []
    runs: list[dict[str, Any]] = []
    for run in run_names:
        pairs = [ln.split() for ln in blobs[f"{run}/class_labels.txt"].decode("ascii").splitlines() if ln.strip()]
        support = sorted(n for n in blobs if n.startswith(f"{run}/training/") and n.endswith(".png"))
        query = sorted(n for n in blobs if n.startswith(f"{run}/test/") and n.endswith(".png"))
        target_of = {}
        for p in pairs:
            if len(p) != 2:
                raise DataError(f"{zpath}:{run}/class_labels.txt has a malformed line {p!r}. {FIX_HINT}")
            target_of[p[0]] = p[1]
        pos = {name: k for k, name in enumerate(support)}
        try:
            targets = [pos[target_of[q]] for q in query]
        except KeyError as e:
            raise DataError(f"{zpath}:{run}/class_labels.txt does not map {e} to a training image. {FIX_HINT}") from e
        start = len(images)
        for name in support + query:
            img = decode_image(blobs[name], "1", f"{zpath}:{name}")
            images.append(_ink(img))
        labels += list(range(len(support))) + targets
        runs.append(
            {
                "name": run,
                "support_idx": list(range(start, start + len(support))),
                "query_idx": list(range(start + len(support), start + len(support) + len(query))),
                "query_target": targets,
            }
        )
    x = np.stack(images)[:, None]
    y = np.array(labels, np.int64)
    info.update({"variant": "ink=255", "runs": runs, "ways": len(runs[0]["support_idx"])})
    xt, yt = _to_tensors(x, y)
    n_way = int(y.max()) + 1
    return TensorData(xt, yt, "omniglot_runs", split, tuple(f"class{k + 1:02d}" for k in range(n_way)), info)


# ----------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "tar": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "meta_key": "label_names",
        "label_key": "labels",
        "num_classes": 10,
        "per_file": {"train": 10000, "test": 10000},
        "tv": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "tar": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "meta_key": "fine_label_names",
        "label_key": "fine_labels",
        "num_classes": 100,
        "per_file": {"train": 50000, "test": 10000},
        "tv": "CIFAR100",
    },
}


def _load_cifar(name: str, root: Path, split: str, download: bool) -> TensorData:
    spec = _CIFAR[name]
    if split not in ("train", "test"):
        raise _split_error(name, split, ("train", "test"))
    root = Path(root)
    folder, tar = root / spec["folder"], root / spec["tar"]
    hint = _hint(f"Use --download to fetch it through torchvision.datasets.{spec['tv']}.")
    needed = [*spec[split], spec["meta"]]
    if not all((folder / f).is_file() for f in needed) and not tar.is_file() and download:
        try:
            import torchvision.datasets as tvd

            getattr(tvd, spec["tv"])(str(root), train=split == "train", download=True)
        except Exception as e:
            raise DataError(f"Downloading {name} into {root} failed ({e}). {hint}") from e

    blobs: dict[str, bytes | Path] = {}
    if all((folder / f).is_file() for f in needed):
        blobs = {f: folder / f for f in needed}
        source = "folder"
    elif tar.is_file():
        verify_known(root, spec["tar"], hint=hint)
        try:
            with tarfile.open(tar, "r|gz") as tf:
                for m in tf:
                    leaf = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and leaf in needed:
                        fh = tf.extractfile(m)
                        if fh is not None:
                            blobs[leaf] = fh.read()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"Archive {tar} is unreadable or truncated ({e}). {FIX_HINT}") from e
        missing = [f for f in needed if f not in blobs]
        if missing:
            raise DataError(f"Archive {tar} lacks {', '.join(missing)}. {hint}")
        source = "tarball"
    else:
        absent = [str(folder / f) for f in needed if not (folder / f).is_file()]
        raise DataError(
            f"{name} {split} not found: missing {', '.join(absent)} (torchvision layout; or the tarball "
            f"{tar}, MD5 {known_md5(spec['tar'])}). {hint}"
        )

    verified = True

    def load(fname: str, canonical_n: int | None) -> Any:
        nonlocal verified
        src = blobs[fname]
        what = str(src) if isinstance(src, Path) else f"{tar}:{fname}"
        if isinstance(src, bytes):  # from a verified tarball
            return safe_unpickle(src, what)
        rel = f"{spec['folder']}/{fname}"
        md5 = known_md5(rel)
        if md5 is not None and cached_md5(src) == md5:
            return safe_unpickle(src, what)
        obj = safe_unpickle(src, what)
        n = len(obj.get("data", [])) if isinstance(obj, dict) else -1
        if canonical_n is not None and n == canonical_n:
            verify_file(src, md5 or "", hint=hint)  # raises: a canonical-size file must match
        verified = False
        log.warning(
            "%s does not match torchvision's MD5 %s; loading it as a non-canonical file in the same format", src, md5
        )
        return obj

    meta = load(spec["meta"], None)
    try:
        class_names = tuple(str(c) for c in meta[spec["meta_key"]])
    except (KeyError, TypeError) as e:
        raise DataError(f"{name} meta file {blobs[spec['meta']]} lacks {spec['meta_key']!r}. {FIX_HINT}") from e
    if len(class_names) != spec["num_classes"]:
        raise DataError(f"{name} meta file names {len(class_names)} classes, expected {spec['num_classes']}. {FIX_HINT}")
    xs, ys = [], []
    for fname in spec[split]:
        batch = load(fname, spec["per_file"][split])
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[spec["label_key"]], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{name} file {fname} lacks 'data' or {spec['label_key']!r} ({e}). {FIX_HINT}") from e
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{name} file {fname}: data {data.shape}, {len(labels)} labels; expected [N, 3072] and N labels. {FIX_HINT}")
        _check_labels(fname, labels, spec["num_classes"])
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    info = {
        "files": [f"{spec['folder']}/{f}" for f in needed] if source == "folder" else [spec["tar"]],
        "variant": source,
        "verified": verified,
    }
    xt, yt = _to_tensors(np.concatenate(xs), np.concatenate(ys))
    return TensorData(xt, yt, name, split, class_names, info)


@DATASETS.register(
    "cifar10",
    summary="CIFAR-10 (torchvision pickle format): 50,000 train / 10,000 test, [3, 32, 32]",
    paper="Krizhevsky. Learning multiple layers of features from tiny images. 2009",
)
def load_cifar10(root: Path, split: str, download: bool) -> TensorData:
    """CIFAR-10 from ``root/cifar-10-batches-py``: ``x: [N, 3, 32, 32]`` uint8."""
    return _load_cifar("cifar10", root, split, download)


@DATASETS.register(
    "cifar100",
    summary="CIFAR-100 (torchvision pickle format, fine labels): 50,000 train / 10,000 test, [3, 32, 32]",
    paper="Krizhevsky. Learning multiple layers of features from tiny images. 2009",
)
def load_cifar100(root: Path, split: str, download: bool) -> TensorData:
    """CIFAR-100 from ``root/cifar-100-python`` (fine labels): ``x: [N, 3, 32, 32]`` uint8."""
    return _load_cifar("cifar100", root, split, download)


# ----------------------------------------------------------------------------- user data


@DATASETS.register("folder", summary="folder:PATH — ImageFolder layout PATH[/<split>]/<class>/*.png|jpg")
def load_folder(root: Path, split: str, download: bool) -> TensorData:
    """Images in class sub-folders: ``x: [N, 1 or 3, H, W]`` uint8 (rules in the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} does not exist. folder:PATH expects PATH/<class>/<image> or "
            "PATH/<split>/<class>/<image>; --download cannot fetch a user folder."
        )
    base = root / split if (root / split).is_dir() else root
    classes, files = [], []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if imgs:
            files += [(f, len(classes)) for f in imgs]
            classes.append(d.name)
    if not files:
        raise DataError(
            f"Image folder {base} has no class sub-folders with images ({', '.join(IMAGE_EXTENSIONS)}); "
            "folder:PATH expects PATH/<class>/<image> or PATH/<split>/<class>/<image>."
        )
    modes, sizes = [], []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                modes.append(im.mode)
                sizes.append(im.size)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f} is not a readable image ({e}).") from e
    gray = all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes)
    mode = "L" if gray else "RGB"
    size = collections.Counter(sizes).most_common(1)[0][0]
    n_resized = sum(s != size for s in sizes)
    if n_resized:
        log.warning("%s: %d of %d images are not %dx%d; resizing them (bilinear)", base, n_resized, len(files), *size)
    x = np.empty((len(files), 1 if gray else 3, size[1], size[0]), np.uint8)
    for i, (f, _) in enumerate(files):
        with Image.open(f) as im:
            im = im.convert(mode) if im.mode != mode else im
            if im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(im)
        x[i] = arr[None] if gray else arr.transpose(2, 0, 1)
    y = np.array([c for _, c in files], np.int64)
    info = {"files": [str(base)], "variant": "folder", "resized": n_resized, "mode": mode}
    xt, yt = _to_tensors(x, y)
    return TensorData(xt, yt, f"folder:{root}", split, tuple(classes), info)


def _npz_images(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: x has shape {x.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W].")
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool:
        return x.astype(np.uint8) * 255
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: integer x must lie in 0..255, found {x.min()}..{x.max()}.")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (not np.isfinite(x).all() or x.min() < -1e-6 or x.max() > 1 + 1e-6):
            raise DataError(f"{path}: float x must lie in [0, 1] (found {np.nanmin(x)}..{np.nanmax(x)}).")
        return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    raise DataError(f"{path}: x has unsupported dtype {x.dtype}.")


@DATASETS.register("npz", summary="npz:PATH — arrays x, y (or x_<split>, y_<split>); [N,H,W], [N,H,W,C] or [N,C,H,W]")
def load_npz(root: Path, split: str, download: bool) -> TensorData:
    """A ``.npz`` of images and labels: ``x: [N, C, H, W]`` uint8 (rules in the module docstring)."""
    path = Path(root)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; npz:PATH expects arrays x and y (or x_<split>, y_<split>). --download cannot fetch a user file.")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if f"x_{split}" in keys and f"y_{split}" in keys:
                x, y, split_ignored = z[f"x_{split}"], z[f"y_{split}"], False
            elif "x" in keys and "y" in keys:
                x, y, split_ignored = z["x"], z["y"], True
            else:
                splits = sorted(k[2:] for k in keys if k.startswith("x_") and f"y_{k[2:]}" in keys)
                raise DataError(
                    f"{path} has neither x_{split}/y_{split} nor x/y (arrays: {', '.join(sorted(keys))}; "
                    f"splits: {', '.join(splits) or 'none'})."
                )
            classes = tuple(str(c) for c in z["classes"].tolist()) if "classes" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"npz file {path} is unreadable or truncated ({e}).") from e
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class indices, got {y.dtype}.")
    y = y.reshape(-1).astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{path}: y has negative labels.")
    x = _npz_images(np.asarray(x), path)
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels.")
    if classes is not None and y.size and y.max() >= len(classes):
        raise DataError(f"{path}: labels go up to {y.max()} but only {len(classes)} classes are named.")
    info = {"files": [str(path)], "md5": [cached_md5(path)], "variant": "npz", "split_ignored": split_ignored}
    xt, yt = _to_tensors(x, y)
    return TensorData(xt, yt, f"npz:{path}", split, classes, info)


__all__ = [
    "MNIST_FILES",
    "load_cifar10",
    "load_cifar100",
    "load_folder",
    "load_mnist",
    "load_mnist_m",
    "load_npz",
    "load_omniglot",
    "load_omniglot_runs",
    "load_usps",
    "read_mnist",
]
