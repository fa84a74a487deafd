"""Every kind of real data file, corrupted two ways (cut in half; same size with a block of
bytes overwritten, so only its MD5 betrays it), read through the public loaders: each is a
:class:`~shiftlab.errors.DataError` naming the file, and nothing is written anywhere in the
data root (the tree is compared file by file before and after). Files that carry no known
MD5 (an extracted Omniglot folder, a ``folder:`` dataset) reach the decoders, whose errors
are checked the same way.

The data root is a temporary copy made of symbolic links to ``../shared/data`` with one file
replaced by its corrupted copy; the shared folder itself is never written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shiftlab.data.mnist_m import prepare_mnist_m
from shiftlab.data.sources import load_dataset
from shiftlab.errors import DataError

# (file, how it is read): every file format our loaders read from the shared data. (USPS's
# bzip2 LIBSVM files are read only when both splits exist; the shared data has the test file
# alone, so the loader reads usps.h5. A truncated bzip2 is tested in tests/data/test_files.py.)
CASES = {
    "MNIST/raw/train-labels-idx1-ubyte.gz": ("mnist", "train"),  # gzip idx
    "USPS/usps.h5": ("usps", "train"),  # HDF5
    "MNIST-M/mnist_m_test.tar.gz": ("mnist_m", "test"),  # tar.gz of PNGs + labels
    "omniglot-py/images_background_small1.zip": ("omniglot", "background_small1"),  # zip of PNGs
    "omniglot-py/one-shot-classification/all_runs.zip": ("omniglot_runs", "test"),  # zip of runs
    "BSDS500/BSDS500_train_images.tar": ("prepare mnist_m", "train"),  # tar of JPEGs
}


def _mirror(shared: Path, root: Path) -> None:
    """``root``: the tree of ``shared`` with every file a symbolic link to the original."""
    for dirpath, _, files in os.walk(shared):
        rel = Path(dirpath).relative_to(shared)
        (root / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            (root / rel / f).symlink_to(Path(dirpath) / f)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _corrupt(shared: Path, root: Path, rel: str, how: str) -> Path:
    target = root / rel
    target.unlink()
    data = bytearray((shared / rel).read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # same size, 4 KiB in the middle overwritten: only the MD5 notices
        mid = len(data) // 2
        data[mid : mid + 4096] = bytes((b + 1) % 256 for b in data[mid : mid + 4096])
    target.write_bytes(bytes(data))
    return target


def _read(name: str, split: str, root: Path, cache: Path) -> None:
    if name == "prepare mnist_m":
        prepare_mnist_m(root, split=split, cache_dir=cache)
    else:
        load_dataset(name, split, data_dir=root)


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
@pytest.mark.parametrize("rel", list(CASES))
def test_corrupt_real_file_is_a_data_error_naming_it_and_nothing_is_written(
    shared_data: Path, tmp_path: Path, rel: str, how: str
) -> None:
    if not (shared_data / rel).is_file():
        pytest.skip(f"{rel} is not in {shared_data}")
    root, cache = tmp_path / "data", tmp_path / "cache"
    _mirror(shared_data, root)
    cache.mkdir()
    bad = _corrupt(shared_data, root, rel, how)
    before = _tree(root)
    name, split = CASES[rel]
    with pytest.raises(DataError) as err:
        _read(name, split, root, cache)
    text = " ".join(str(err.value).split())
    assert str(bad) in text, text
    assert "md5" in text.lower() or "truncated" in text.lower(), text
    assert _tree(root) == before  # nothing created, replaced or touched in the data root
    assert list(cache.iterdir()) == []


def test_the_unchanged_mirror_loads(shared_data: Path, tmp_path: Path) -> None:
    """The control: the same mirror without corruption loads (so the errors above are the
    corruption's, not the mirror's)."""
    root = tmp_path / "data"
    _mirror(shared_data, root)
    before = _tree(root)
    assert len(load_dataset("usps", "test", data_dir=root)) == 2007
    assert len(load_dataset("omniglot", "background_small1", data_dir=root)) == 2720
    assert _tree(root) == before


def _png(tmp: Path) -> bytes:
    from PIL import Image

    Image.new("1", (105, 105), 1).save(tmp / "ok.png")
    return (tmp / "ok.png").read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_undecodable_image_in_an_extracted_omniglot_folder(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "data"
    chars = root / "omniglot-py/images_background_small1/Alpha/character01"
    chars.mkdir(parents=True)
    good = _png(tmp_path)
    (chars / "0001_01.png").write_bytes(good)
    bad = chars / "0001_02.png"
    bad.write_bytes(b"\x00not a png" * 20 if damage == "garbage" else good[: len(good) // 3])
    before = _tree(root)
    with pytest.raises(DataError, match="not a readable image") as err:
        load_dataset("omniglot", "background_small1", data_dir=root)
    assert "0001_02.png" in str(err.value)
    assert _tree(root) == before


def test_undecodable_image_in_a_folder_dataset(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    shutil.copyfile(_png_rgb(tmp_path), root / "cat" / "a.png")
    (root / "dog" / "b.jpg").write_bytes(b"JFIF? no")
    before = _tree(root)
    with pytest.raises(DataError, match="not a readable image") as err:
        load_dataset(f"folder:{root}", "train")
    assert "b.jpg" in str(err.value)
    assert _tree(root) == before


def _png_rgb(tmp: Path) -> Path:
    from PIL import Image

    p = tmp / "rgb.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(p)
    return p
