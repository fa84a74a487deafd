"""Checksums, safe extraction and raw readers (shiftlab.data.files)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shiftlab.data import files as F
from shiftlab.errors import DataError

# ----------------------------------------------------------------------------- checksums


def test_md5sum_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert F.md5sum(p) == hashlib.md5(data).hexdigest()
    assert F.md5sum(p, chunk_size=1000) == hashlib.md5(data).hexdigest()


def test_cached_md5_hashes_unchanged_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = F.md5sum

    def counting(path: str, chunk_size: int = 1 << 20) -> str:
        calls.append(path)
        return real(path, chunk_size)

    monkeypatch.setattr(F, "md5sum", counting)
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    for _ in range(5):
        F.verify_file(p, hashlib.md5(b"abc").hexdigest())
    assert len(calls) == 1
    # rewritten with new content and a new mtime: hashed again, and the new digest is used
    p.write_bytes(b"abcd")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(DataError):
        F.verify_file(p, hashlib.md5(b"abc").hexdigest())
    assert len(calls) == 2


def test_verify_file_wrong_md5_names_file_expected_and_actual(tmp_path: Path) -> None:
    p = tmp_path / "data.bin"
    p.write_bytes(b"hello")
    expected = "0123456789abcdef0123456789abcdef"
    with pytest.raises(DataError) as e:
        F.verify_file(p, expected)
    msg = str(e.value)
    assert str(p) in msg and expected in msg and hashlib.md5(b"hello").hexdigest() in msg
    assert "--download" in msg and "shiftlab data verify" in msg


def test_verify_file_missing_names_path_and_md5(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing") as e:
        F.verify_file(tmp_path / "nope.gz", "f" * 32)
    assert str(tmp_path / "nope.gz") in str(e.value) and "f" * 32 in str(e.value)


def test_known_files_cover_provenance() -> None:
    rel = {k.relpath for k in F.KNOWN_FILES}
    assert len(rel) == len(F.KNOWN_FILES)
    for name in (
        "MNIST/raw/train-images-idx3-ubyte.gz",
        "USPS/usps.bz2",
        "USPS/usps.t.bz2",
        "USPS/usps.h5",
        "omniglot-py/images_background_small1.zip",
        "omniglot-py/one-shot-classification/all_runs.zip",
        "MNIST-M/mnist_m_test.tar.gz",
        "BSDS500/BSDS500_train_images.tar",
        "pretrained/resnet56-4bfd9763.th",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py/test_batch",
        "cifar-100-python/meta",
    ):
        assert name in rel
    assert F.known_md5("USPS/usps.bz2") == "ec16c51db3855ca6c91edd34d0e9b197"
    assert all(len(k.md5) == 32 for k in F.KNOWN_FILES)


def test_verify_all_on_real_data(shared_data: Path) -> None:
    statuses = F.verify_all(shared_data)
    assert len(statuses) == len(F.KNOWN_FILES)
    by_rel = {s.path.relative_to(shared_data).as_posix(): s for s in statuses}
    present = [s for s in statuses if s.present]
    # every file of PROVENANCE.md that has a known MD5 is present and intact
    assert len(present) == 16, [s.path for s in present]  # 4 MNIST, 2 USPS, 3 Omniglot, MNIST-M, BSDS, 4 ResNets, batches.meta
    assert all(s.status == "ok" for s in present), [(s.path, s.status) for s in present]
    assert by_rel["USPS/usps.bz2"].status == "absent"
    assert by_rel["cifar-10-batches-py/test_batch"].status == "absent"


def test_verify_all_reports_mismatch(tmp_path: Path) -> None:
    (tmp_path / "USPS").mkdir()
    (tmp_path / "USPS" / "usps.h5").write_bytes(b"not the file")
    st = {s.path.name: s for s in F.verify_all(tmp_path)}
    assert st["usps.h5"].present and st["usps.h5"].md5_ok is False
    assert st["usps.h5"].status.startswith("md5 mismatch") and "355df6b942eb766252e0340bc019b0b9" in st["usps.h5"].status
    assert st["usps.t.bz2"].status == "absent"


# ----------------------------------------------------------------------------- extraction


def _tar(path: Path, members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            data = payloads.get(m.name)
            if data is not None:
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
            else:
                tf.addfile(m)
    return path


def test_safe_extract_tar_and_zip(tmp_path: Path) -> None:
    t = tarfile.TarInfo("top/a.txt")
    _tar(tmp_path / "ok.tar.gz", [t], {"top/a.txt": b"A"})
    out = F.safe_extract(tmp_path / "ok.tar.gz", tmp_path / "x")
    assert (out / "top" / "a.txt").read_bytes() == b"A"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("dir/b.txt", b"B")
    out = F.safe_extract(tmp_path / "ok.zip", tmp_path / "z")
    assert (out / "dir" / "b.txt").read_bytes() == b"B"
    # an existing destination is a complete earlier extraction: returned unchanged
    assert F.safe_extract(tmp_path / "ok.zip", tmp_path / "z") == out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs/evil"])
def test_zip_with_escaping_member_is_refused(tmp_path: Path, name: str) -> None:
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"pwned")
    dest = tmp_path / "sub" / "out"
    with pytest.raises(DataError, match="refusing"):
        F.safe_extract(z, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sub" / "evil").exists()
    assert not list((tmp_path / "sub").glob("*")) if (tmp_path / "sub").exists() else True


def test_tar_with_dotdot_member_is_refused(tmp_path: Path) -> None:
    t = tarfile.TarInfo("../evil")
    _tar(tmp_path / "bad.tar.gz", [t], {"../evil": b"pwned"})
    with pytest.raises(DataError, match=r"\.\./evil"):
        F.safe_extract(tmp_path / "bad.tar.gz", tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()


def test_tar_with_absolute_member_is_refused(tmp_path: Path) -> None:
    t = tarfile.TarInfo("/tmp/evil_abs")
    _tar(tmp_path / "bad.tar.gz", [t], {"/tmp/evil_abs": b"pwned"})
    with pytest.raises(DataError, match="absolute"):
        F.safe_extract(tmp_path / "bad.tar.gz", tmp_path / "out")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_with_escaping_link_is_refused(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("top/link")
    link.type = kind
    link.linkname = "../../../etc/passwd" if kind == tarfile.SYMTYPE else "../outside"
    _tar(tmp_path / "bad.tar.gz", [link], {})
    with pytest.raises(DataError, match="link"):
        F.safe_extract(tmp_path / "bad.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_with_internal_symlink_is_allowed(tmp_path: Path) -> None:
    a = tarfile.TarInfo("top/a.txt")
    link = tarfile.TarInfo("top/b.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
    _tar(tmp_path / "ok.tar.gz", [a, link], {"top/a.txt": b"A"})
    out = F.safe_extract(tmp_path / "ok.tar.gz", tmp_path / "out")
    assert (out / "top" / "b.txt").read_bytes() == b"A"


def test_truncated_archive_is_a_data_error(tmp_path: Path) -> None:
    _tar(tmp_path / "ok.tar.gz", [tarfile.TarInfo("a.bin")], {"a.bin": os.urandom(200_000)})
    data = (tmp_path / "ok.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        F.safe_extract(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- idx reader


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_roundtrip_plain_and_gz(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(arr))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(F.read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(F.read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)


def test_read_idx_bad_magic_and_short_payload(tmp_path: Path) -> None:
    arr = np.zeros((5, 2, 2), np.uint8)
    (tmp_path / "magic").write_bytes(b"\x01\x02" + _idx_bytes(arr)[2:])
    with pytest.raises(DataError, match="magic"):
        F.read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(_idx_bytes(arr)[:-3])
    with pytest.raises(DataError, match=r"short.*truncated|truncated.*short") as e:
        F.read_idx(tmp_path / "short")
    assert "(5, 2, 2)" in str(e.value)


def test_truncated_real_gz_names_the_file(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    cut = tmp_path / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(src.read_bytes()[:200_000])
    with pytest.raises(DataError) as e:
        F.read_idx(cut)
    assert str(cut) in str(e.value) and "truncated" in str(e.value)
    # a gz whose stream is fine but whose payload is short (header says 10,000 images)
    whole = gzip.decompress(src.read_bytes())
    short = tmp_path / "short-idx3-ubyte.gz"
    short.write_bytes(gzip.compress(whole[: 16 + 784 * 9_999]))
    with pytest.raises(DataError, match="header says") as e:
        F.read_idx(short)
    assert str(short) in str(e.value)


def test_corrupt_gz_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "x-idx1-ubyte.gz"
    data = bytearray(gzip.compress(_idx_bytes(np.arange(100, dtype=np.uint8))))
    data[20:30] = b"\xff" * 10
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="x-idx1-ubyte.gz"):
        F.read_idx(p)
    (tmp_path / "junk.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="junk.gz"):
        F.read_idx(tmp_path / "junk.gz")


# ----------------------------------------------------------------------------- other readers


def test_read_libsvm_bz2(tmp_path: Path) -> None:
    text = "3 1:-1 2:0.5 4:1\n1 3:0.25\n"
    (tmp_path / "t.bz2").write_bytes(bz2.compress(text.encode()))
    x, y = F.read_libsvm_bz2(tmp_path / "t.bz2", 4)
    np.testing.assert_array_equal(y, [3, 1])
    np.testing.assert_allclose(x, [[-1, 0.5, 0, 1], [0, 0, 0.25, 0]])
    (tmp_path / "cut.bz2").write_bytes(bz2.compress(text.encode() * 50)[:30])
    with pytest.raises(DataError, match="cut.bz2"):
        F.read_libsvm_bz2(tmp_path / "cut.bz2", 4)


def test_safe_unpickle_accepts_numpy_and_refuses_code(tmp_path: Path) -> None:
    good = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2]}
    (tmp_path / "good").write_bytes(pickle.dumps(good, protocol=2))
    out = F.safe_unpickle(tmp_path / "good")
    np.testing.assert_array_equal(out["data"], good["data"])

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "evil").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="not allowed"):
        F.safe_unpickle(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


def test_atomic_save_npz(tmp_path: Path) -> None:
    p = F.atomic_save_npz(tmp_path / "a" / "b.npz", {"x": np.ones(3, np.uint8)})
    assert p == tmp_path / "a" / "b.npz"
    with np.load(p) as z:
        np.testing.assert_array_equal(z["x"], np.ones(3))
    assert [q.name for q in p.parent.iterdir()] == ["b.npz"]
