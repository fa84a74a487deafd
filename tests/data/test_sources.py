"""Dataset loaders on the real files of ../shared/data and on fixtures written in tmp_path."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab.data import loaders as L
from shiftlab.data.files import atomic_save_npz
from shiftlab.data.mnist_m import generated_path
from shiftlab.data.sources import DATASETS, load_dataset
from shiftlab.data.tensors import TensorData
from shiftlab.errors import DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def check_images(d: TensorData, n: int, shape: tuple[int, ...], num_classes: int) -> None:
    assert len(d) == n
    assert d.x.dtype == torch.uint8 and d.y.dtype == torch.int64
    assert d.image_shape == shape
    assert 0 <= int(d.y.min()) and int(d.y.max()) < num_classes
    assert int(d.x.max()) > 200 and int(d.x.min()) < 30  # real images span the range


def test_registry_has_every_loader() -> None:
    for name in ("mnist", "usps", "mnist_m", "omniglot", "omniglot_runs", "cifar10", "cifar100", "folder", "npz", "digits", "digits_m"):
        assert name in DATASETS
        assert DATASETS.entry(name).summary


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize(("split", "counts"), [("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)])
def test_mnist_real(shared_data: Path, split: str, counts: list[int]) -> None:
    d = load_dataset("mnist", split, data_dir=shared_data)
    check_images(d, sum(counts), (1, 28, 28), 10)
    assert torch.bincount(d.y, minlength=10).tolist() == counts
    assert d.classes == tuple("0123456789")
    assert d.info["md5"][0] in ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "9fb629c4189551a2d022fa330f9573f3")
    # MNIST digits are white on black with a mostly empty border
    assert d.x[:, :, :2, :].float().mean() < 1.0 and 30 < d.x.float().mean() < 40


def test_mnist_uncompressed_equals_gz(shared_data: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in L.MNIST_FILES["test"]:
        (raw / stem).write_bytes(gzip.decompress((shared_data / "MNIST" / "raw" / f"{stem}.gz").read_bytes()))
    a = load_dataset("mnist", "test", data_dir=tmp_path)
    b = load_dataset("mnist", "test", data_dir=shared_data)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.info["files"] == ["MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"]


def test_missing_mnist_names_path_and_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in msg
    assert "--download" in msg and "9fb629c4189551a2d022fa330f9573f3" in msg and "$SHIFTLAB_DATA" in msg


def test_truncated_mnist_gz_is_an_error_naming_the_file(shared_data: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(shared_data / "MNIST/raw/t10k-labels-idx1-ubyte.gz", raw)
    src = (shared_data / "MNIST/raw/t10k-images-idx3-ubyte.gz").read_bytes()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(src[: len(src) // 2])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert str(raw / "t10k-images-idx3-ubyte.gz") in str(e.value)
    assert "9fb629c4189551a2d022fa330f9573f3" in str(e.value)  # the expected MD5


def test_data_dir_from_environment(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFTLAB_DATA", str(shared_data))
    assert len(load_dataset("mnist", "test")) == 10_000


def test_unknown_split_lists_splits(shared_data: Path) -> None:
    with pytest.raises(DataError, match="train, test"):
        load_dataset("mnist", "val", data_dir=shared_data)


# ----------------------------------------------------------------------------- USPS


def test_usps_real_h5_for_both_splits(shared_data: Path) -> None:
    tr = load_dataset("usps", "train", data_dir=shared_data)
    te = load_dataset("usps", "test", data_dir=shared_data)
    check_images(tr, 7291, (1, 16, 16), 10)
    check_images(te, 2007, (1, 16, 16), 10)
    # usps.bz2 is absent, so both splits come from usps.h5 (never mixed), and it is said
    assert tr.info["variant"] == te.info["variant"] == "h5"
    assert "usps.t.bz2" in te.info["note"]
    assert sorted(torch.bincount(tr.y).tolist())[-1] == 1194  # most frequent digit (0) in USPS train


def test_usps_libsvm_test_matches_h5_labels(shared_data: Path) -> None:
    lib = load_dataset("usps", "test_libsvm", data_dir=shared_data)
    h5 = load_dataset("usps", "test", data_dir=shared_data)
    check_images(lib, 2007, (1, 16, 16), 10)
    assert lib.info["variant"] == "libsvm" and lib.info["md5"] == ["8ea070ee2aca1ac39742fdd1ef5ed118"]
    assert torch.equal(lib.y, h5.y)  # same samples in the same order ...
    diff = (lib.x.float() - h5.x.float()).abs().mean().item()
    assert 15 < diff < 30  # ... but a different normalisation (PROVENANCE.md: about 22)


def test_usps_variant_rule(tmp_path: Path) -> None:
    folder = tmp_path / "USPS"
    folder.mkdir()
    assert L.usps_variant(folder, "train") is None
    (folder / "usps.t.bz2").touch()
    assert L.usps_variant(folder, "test") == "libsvm" and L.usps_variant(folder, "train") is None
    (folder / "usps.h5").touch()
    assert L.usps_variant(folder, "test") == "h5" and L.usps_variant(folder, "train") == "h5"
    (folder / "usps.bz2").touch()
    assert L.usps_variant(folder, "test") == "libsvm" and L.usps_variant(folder, "train") == "libsvm"


def test_usps_missing_mentions_files_and_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("usps", "train", data_dir=tmp_path)
    assert "usps.bz2" in str(e.value) and "usps.h5" in str(e.value) and "--download" in str(e.value)


# ----------------------------------------------------------------------------- MNIST-M


def test_mnist_m_real_test(shared_data: Path) -> None:
    d = load_dataset("mnist_m", "test", data_dir=shared_data)
    check_images(d, 9001, (3, 32, 32), 10)
    assert d.info["variant"] == "real"
    mnist = load_dataset("mnist", "test", data_dir=shared_data)
    assert torch.equal(d.y, mnist.y[:9001])  # the first 9,001 MNIST test digits
    assert 100 < d.x.float().mean() < 125  # photo backgrounds, not black


def test_mnist_m_train_is_generated_in_memory_when_not_cached(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIFTLAB_CACHE", raising=False)
    d = load_dataset("mnist_m", "train", data_dir=shared_data)
    check_images(d, 60000, (3, 32, 32), 10)
    assert d.info["variant"] == "generated" and d.info["seed"] == 0
    mnist = load_dataset("mnist", "train", data_dir=shared_data)
    assert torch.equal(d.y, mnist.y)
    gt = load_dataset("mnist_m", "generated_test", data_dir=shared_data)
    assert torch.equal(gt.y, load_dataset("mnist_m", "test", data_dir=shared_data).y)


def test_mnist_m_train_missing_says_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIFTLAB_CACHE", raising=False)
    with pytest.raises(DataError, match="shiftlab data prepare mnist_m") as e:
        load_dataset("mnist_m", "train", data_dir=tmp_path)
    assert "--download" in str(e.value)


def test_mnist_m_train_from_generated_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    path = generated_path(tmp_path / "cache", "train", 0)
    atomic_save_npz(path, {"x": x, "y": np.arange(10), "seed": np.array(0)})
    monkeypatch.setenv("SHIFTLAB_CACHE", str(tmp_path / "cache"))
    d = load_dataset("mnist_m", "train", data_dir=tmp_path / "root")
    assert torch.equal(d.x, torch.from_numpy(x)) and d.info["variant"] == "generated" and d.info["seed"] == 0
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist_m", "train", data_dir=tmp_path / "root")


def test_mnist_m_canonical_folder(tmp_path: Path) -> None:
    base = tmp_path / "MNIST-M" / "mnist_m"
    (base / "mnist_m_train").mkdir(parents=True)
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(base / "mnist_m_train" / f"{i:08d}.png")
    (base / "mnist_m_train_labels.txt").write_text("".join(f"{i:08d}.png {7 - i}\n" for i in range(4)))
    d = load_dataset("mnist_m", "train", data_dir=tmp_path)
    assert torch.equal(d.x, torch.from_numpy(imgs.transpose(0, 3, 1, 2)))
    assert d.y.tolist() == [7, 6, 5, 4] and d.info["variant"] == "folder"


# ----------------------------------------------------------------------------- Omniglot


@pytest.mark.parametrize(("split", "n", "n_classes"), [("background_small1", 2720, 136), ("background_small2", 3120, 156)])
def test_omniglot_small_splits(shared_data: Path, split: str, n: int, n_classes: int) -> None:
    d = load_dataset("omniglot", split, data_dir=shared_data)
    check_images(d, n, (1, 105, 105), n_classes)
    assert d.num_classes == n_classes and torch.bincount(d.y).tolist() == [20] * n_classes  # 20 drawers
    assert set(torch.unique(d.x).tolist()) == {0, 255}
    assert d.x.float().mean() < 40  # strokes are bright on a dark background
    alphabets = d.info["alphabets"]
    assert len(alphabets) == 5 and len(d.info["alphabet"]) == len(d.info["class_alphabet"]) == n_classes
    for c, (name, a) in enumerate(zip(d.info["alphabet"], d.info["class_alphabet"], strict=True)):
        assert d.classes[c].split("/")[0] == name == alphabets[a]
    per_image = torch.tensor(d.info["class_alphabet"])[d.y]
    assert torch.bincount(per_image).min() >= 20 * 14  # every alphabet has at least 14 characters


def test_omniglot_full_split_missing_mentions_download(shared_data: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("omniglot", "background", data_dir=shared_data)
    assert "images_background.zip" in str(e.value) and "68d2efa1b9178cc56df9314c21c6e718" in str(e.value)
    assert "--download" in str(e.value)


def test_omniglot_runs(shared_data: Path) -> None:
    d = load_dataset("omniglot_runs", "test", data_dir=shared_data)
    check_images(d, 800, (1, 105, 105), 20)
    runs = d.info["runs"]
    assert len(runs) == 20
    seen: set[int] = set()
    correct = 0
    for r in runs:
        s, q, t = r["support_idx"], r["query_idx"], r["query_target"]
        assert len(s) == len(q) == len(t) == 20
        assert sorted(t) == list(range(20))  # one query per class in each run
        assert d.y[s].tolist() == list(range(20)) and d.y[q].tolist() == t
        seen |= set(s) | set(q)
        # 1-nearest-neighbour on blurred pixels: far above the 5% chance level
        feats = torch.nn.functional.avg_pool2d(d.float_x(torch.tensor(s + q)), 5)
        dist = torch.cdist(feats[20:].flatten(1), feats[:20].flatten(1))
        correct += int((dist.argmin(1) == torch.tensor(t)).sum())
    assert seen == set(range(800))
    assert correct / 400 > 0.15


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_fixture_loads(tmp_path: Path, hundred: bool, write_cifar) -> None:
    ref = write_cifar(tmp_path, hundred=hundred)
    name = "cifar100" if hundred else "cifar10"
    tr = load_dataset(name, "train", data_dir=tmp_path)
    te = load_dataset(name, "test", data_dir=tmp_path)
    assert len(tr) == (5 if hundred else 25) and len(te) == 5
    assert tr.image_shape == (3, 32, 32) and tr.x.dtype == torch.uint8
    assert torch.equal(tr.x, torch.from_numpy(ref["train"].reshape(-1, 3, 32, 32)))
    assert tr.y.tolist() == ref["train_y"].tolist() and te.y.tolist() == ref["test_y"].tolist()
    assert tr.num_classes == (100 if hundred else 10) and tr.classes[3] == "c3"
    assert tr.info["verified"] is False  # a fixture cannot match torchvision's MD5s


def test_cifar_canonical_size_with_wrong_md5_is_an_error(tmp_path: Path, write_cifar) -> None:
    write_cifar(tmp_path, per_batch=2)
    big = {"data": np.zeros((10_000, 3072), np.uint8), "labels": [0] * 10_000}
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(big, protocol=2))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert "data_batch_1" in str(e.value) and "c99cafc152244af753f735de768cd75f" in str(e.value)


def test_cifar_missing_mentions_path_and_download(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(e.value) and "--download" in str(e.value)


def test_cifar_real_meta_but_no_batches(shared_data: Path) -> None:
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", "train", data_dir=shared_data)


def test_cifar_malicious_pickle_is_refused(tmp_path: Path, write_cifar) -> None:
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- folder / npz


def test_folder_grayscale_with_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("b_cat", "a_dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}", "test")
    assert d.classes == ("a_dog", "b_cat") and d.image_shape == (1, 12, 10) and len(d) == 6
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.array(Image.open(tmp_path / "test" / "a_dog" / "0.png"))
    assert torch.equal(d.x[0, 0], torch.from_numpy(first))


def test_folder_rgb_mixed_sizes_are_resized(tmp_path: Path) -> None:
    for cls, size in (("x", (16, 16)), ("y", (16, 16)), ("z", (20, 8))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", size, (255, 0, 0)).save(tmp_path / cls / "a.jpg")
    Image.new("L", (16, 16), 128).save(tmp_path / "x" / "b.png")
    d = load_dataset(f"folder:{tmp_path}", "train")  # no train/ sub-folder: the whole folder
    assert d.image_shape == (3, 16, 16) and len(d) == 4 and d.info["resized"] == 1
    assert d.num_classes == 3


def test_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_dataset(f"folder:{tmp_path / 'nope'}", "train")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}", "train")


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((6, 9, 7), np.uint8), ((6, 9, 7, 3), np.float32), ((6, 3, 9, 7), np.uint8), ((6, 1, 9, 7), np.float64)],
)
def test_npz_layouts(tmp_path: Path, shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        x /= 255.0
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 2)
    d = load_dataset(f"npz:{tmp_path / 'd.npz'}", "test")
    c = 3 if 3 in shape[1:2] + shape[3:] else 1
    assert d.image_shape == (c, 9, 7) and d.x.dtype == torch.uint8 and d.info["split_ignored"]
    ref = x if len(shape) == 4 and shape[1] in (1, 3) else (x.transpose(0, 3, 1, 2) if len(shape) == 4 else x[:, None])
    ref = np.rint(ref * 255) if np.issubdtype(dtype, np.floating) else ref
    assert torch.equal(d.x, torch.from_numpy(ref.astype(np.uint8)))


def test_npz_splits_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.npz"
    np.savez(p, x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.arange(4), x_test=np.ones((2, 5, 5), np.uint8), y_test=np.array([1, 0]))
    assert len(load_dataset(f"npz:{p}", "train")) == 4
    te = load_dataset(f"npz:{p}", "test")
    assert len(te) == 2 and te.y.tolist() == [1, 0] and not te.info["split_ignored"]
    with pytest.raises(DataError, match="splits: test, train"):
        load_dataset(f"npz:{p}", "val")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((2, 4, 4), 2.0), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset(f"npz:{bad}", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}", "train")
