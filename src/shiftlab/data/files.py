"""Data files: checksums, safe archive extraction, and readers for the raw formats.

* :data:`KNOWN_FILES`: every file of the data root whose MD5 is known (the files listed in
  ``shared/data/PROVENANCE.md`` plus the canonical files torchvision knows), with its path
  relative to the data root. :func:`verify_all` checks them all (``shiftlab data verify``).
* :func:`verify_file`: MD5 check that raises :class:`~shiftlab.errors.DataError` naming the
  file, the expected and the actual MD5. Hashes are cached in memory per process, keyed
  on ``(path, size, mtime_ns, inode)`` through :func:`functools.lru_cache`, so an
  unchanged file is hashed once per process however often it is loaded, while a file that
  is replaced or rewritten is hashed again. Nothing is written to disk.
* :func:`safe_extract`: tar and zip extraction that refuses absolute paths, ``..``
  components, links (symbolic or hard) whose target leaves the destination, and special
  files (devices, FIFOs). It extracts into a temporary sibling folder and renames it onto
  the destination, so a destination that exists is always complete.
* Readers: :func:`read_idx` (MNIST idx, gzip or not, magic number and payload length
  checked), :func:`read_libsvm_bz2` (LIBSVM dense-ish text, e.g. USPS),
  :func:`read_h5_split` (``group/data`` + ``group/target`` HDF5, e.g. ``usps.h5``),
  :func:`safe_unpickle` (restricted unpickler for the CIFAR pickle format: only numpy
  arrays, dtypes and plain containers can be built), :func:`decode_image` (PIL, bytes ->
  ``[H, W]`` or ``[H, W, 3]`` uint8).

Written here rather than taken from torchvision because torchvision's helpers neither
name the offending file in their errors nor refuse every unsafe archive member, and its
pickle loading is unrestricted.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shiftlab.errors import DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20

#: What to do when a data file is missing or corrupt; appended to every DataError here.
FIX_HINT = (
    "Point the data root at a folder that has it (--data-dir or $SHIFTLAB_DATA), "
    "fetch it with --download where the dataset supports it (via torchvision), "
    "and check every known file with `shiftlab data verify`."
)


@dataclass(frozen=True)
class KnownFile:
    """A data file with a published (or provenance-recorded) checksum.

    Attributes:
        relpath: path relative to the data root, POSIX separators.
        md5: expected MD5 hex digest.
        source: where the checksum comes from (``"torchvision"``, ``"PROVENANCE.md"``, ...).
    """

    relpath: str
    md5: str
    source: str


#: Every known file of a data root (torchvision layouts). Files that are only derived
#: (the uncompressed MNIST idx files) carry the MD5 of the decompressed canonical .gz.
KNOWN_FILES: tuple[KnownFile, ...] = (
    # MNIST, torchvision layout
    KnownFile("MNIST/raw/train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "torchvision"),
    KnownFile("MNIST/raw/train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "torchvision"),
    KnownFile("MNIST/raw/t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "torchvision"),
    KnownFile("MNIST/raw/t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "torchvision"),
    KnownFile("MNIST/raw/train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", "gunzip of the canonical .gz"),
    KnownFile("MNIST/raw/train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", "gunzip of the canonical .gz"),
    KnownFile("MNIST/raw/t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", "gunzip of the canonical .gz"),
    KnownFile("MNIST/raw/t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", "gunzip of the canonical .gz"),
    # USPS
    KnownFile("USPS/usps.bz2", "ec16c51db3855ca6c91edd34d0e9b197", "torchvision"),
    KnownFile("USPS/usps.t.bz2", "8ea070ee2aca1ac39742fdd1ef5ed118", "torchvision"),
    KnownFile("USPS/usps.h5", "355df6b942eb766252e0340bc019b0b9", "PROVENANCE.md"),
    # Omniglot
    KnownFile("omniglot-py/images_background.zip", "68d2efa1b9178cc56df9314c21c6e718", "torchvision"),
    KnownFile("omniglot-py/images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811", "torchvision"),
    KnownFile("omniglot-py/images_background_small1.zip", "e704a628b5459e08445c13499850abc4", "PROVENANCE.md"),
    KnownFile("omniglot-py/images_background_small2.zip", "b75a71a51d3b13f821f212756fe481fd", "PROVENANCE.md"),
    KnownFile("omniglot-py/one-shot-classification/all_runs.zip", "e8996daecdf12afeeb4a53a179f06b19", "PROVENANCE.md"),
    # MNIST-M (this project's repack of the real test set) and BSDS500 train images
    KnownFile("MNIST-M/mnist_m_test.tar.gz", "26995d15808b480cd6082727f9b87447", "PROVENANCE.md"),
    KnownFile("BSDS500/BSDS500_train_images.tar", "dda2dc1ec5711312e0d301ced0f9071b", "PROVENANCE.md"),
    # CIFAR-10 ResNets (akamaster)
    KnownFile("pretrained/resnet20-12fca82f.th", "1f38c81cdebd6bcce9b03d082161a36c", "PROVENANCE.md"),
    KnownFile("pretrained/resnet32-d509ac18.th", "1b290d0b1aad139b0f2be36cf1fa4846", "PROVENANCE.md"),
    KnownFile("pretrained/resnet44-014dd654.th", "953c35969bce8e16eba14f6de91ef262", "PROVENANCE.md"),
    KnownFile("pretrained/resnet56-4bfd9763.th", "48a2383e717f38f02934658ab8d4d9a2", "PROVENANCE.md"),
    # CIFAR-10 / CIFAR-100, torchvision layout
    KnownFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "torchvision"),
    KnownFile("cifar-10-batches-py/data_batch_1", "c99cafc152244af753f735de768cd75f", "torchvision"),
    KnownFile("cifar-10-batches-py/data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec", "torchvision"),
    KnownFile("cifar-10-batches-py/data_batch_3", "54ebc095f3ab1f0389bbae665268c751", "torchvision"),
    KnownFile("cifar-10-batches-py/data_batch_4", "634d18415352ddfa80567beed471001a", "torchvision"),
    KnownFile("cifar-10-batches-py/data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb", "torchvision"),
    KnownFile("cifar-10-batches-py/test_batch", "40351d587109b95175f43aff81a1287e", "torchvision"),
    KnownFile("cifar-10-batches-py/batches.meta", "5ff9c542aee3614f3951f8cda6e48888", "torchvision"),
    KnownFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "torchvision"),
    KnownFile("cifar-100-python/train", "16019d7e3df5f24257cddd939b257f8d", "torchvision"),
    KnownFile("cifar-100-python/test", "f0ef6b0ae62326f3e7ffdfab6717acfc", "torchvision"),
    KnownFile("cifar-100-python/meta", "7973b15100ade9c7d40fb424638fde48", "torchvision"),
)


def known_md5(relpath: str) -> str | None:
    """The expected MD5 of ``relpath`` (relative to the data root), or ``None`` if unknown."""
    for k in KNOWN_FILES:
        if k.relpath == relpath:
            return k.md5
    return None


# ----------------------------------------------------------------------------- checksums


def md5sum(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """MD5 hex digest of a file, read in chunks (never cached)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1024)
def _md5_of_version(path: str, size: int, mtime_ns: int, inode: int) -> str:
    # Pure in its key: a file rewritten in place changes mtime (and usually size/inode),
    # which makes a new key and a fresh hash.
    del size, mtime_ns, inode
    return md5sum(path)


def cached_md5(path: str | os.PathLike[str]) -> str:
    """MD5 of ``path``, hashed once per process per (size, mtime, inode) of the file."""
    p = os.path.abspath(path)
    st = os.stat(p)
    return _md5_of_version(p, st.st_size, st.st_mtime_ns, st.st_ino)


def verify_file(path: str | os.PathLike[str], md5: str, *, hint: str = FIX_HINT) -> Path:
    """Check that ``path`` exists and has MD5 ``md5``.

    Args:
        path: the file.
        md5: expected MD5 hex digest.
        hint: what the user should do, appended to the error message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: the file is missing, unreadable, or its MD5 differs (the message names
            the file, the expected and the actual MD5).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Data file {p} is missing (expected MD5 {md5}). {hint}")
    try:
        actual = cached_md5(p)
    except OSError as e:
        raise DataError(f"Data file {p} cannot be read ({e}); expected MD5 {md5}. {hint}") from e
    if actual != md5.lower():
        raise DataError(
            f"Data file {p} is corrupt or a different version: its MD5 is {actual}, expected "
            f"{md5}. Delete it and fetch it again. {hint}"
        )
    return p


def verify_known(root: Path, relpath: str, *, hint: str = FIX_HINT) -> Path:
    """:func:`verify_file` for ``root / relpath`` when its MD5 is in :data:`KNOWN_FILES`.

    Files with no known MD5 must only exist.
    """
    md5 = known_md5(relpath)
    p = root / relpath
    if md5 is None:
        if not p.is_file():
            raise DataError(f"Data file {p} is missing. {hint}")
        return p
    return verify_file(p, md5, hint=hint)


@dataclass(frozen=True)
class FileStatus:
    """Result of checking one known file (``shiftlab data verify``).

    Attributes:
        path: absolute path checked.
        present: the file exists.
        md5_ok: the MD5 matches (``None`` when absent or unreadable).
        expected_md5: the known MD5.
        actual_md5: the MD5 found (``None`` when absent or unreadable).
        error: an OS error message when the file could not be read.
    """

    path: Path
    present: bool
    md5_ok: bool | None
    expected_md5: str
    actual_md5: str | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        """``"ok"``, ``"absent"``, ``"unreadable: ..."`` or ``"md5 mismatch: ..."``."""
        if not self.present:
            return "absent"
        if self.error is not None:
            return f"unreadable: {self.error}"
        if self.md5_ok:
            return "ok"
        return f"md5 mismatch: expected {self.expected_md5}, got {self.actual_md5}"


def verify_all(root: str | os.PathLike[str], known: Iterable[KnownFile] = KNOWN_FILES) -> list[FileStatus]:
    """Check every known file under ``root``; absent files are reported, not errors.

    Args:
        root: the data root.
        known: the files to check (default: :data:`KNOWN_FILES`).

    Returns:
        One :class:`FileStatus` per known file, in table order.
    """
    root = Path(root)
    out: list[FileStatus] = []
    for k in known:
        p = root / k.relpath
        if not p.is_file():
            out.append(FileStatus(p, False, None, k.md5))
            continue
        try:
            actual = cached_md5(p)
        except OSError as e:
            out.append(FileStatus(p, True, None, k.md5, None, str(e)))
            continue
        out.append(FileStatus(p, True, actual == k.md5, k.md5, actual))
    return out


# ----------------------------------------------------------------------------- writing


def is_writable_dir(path: Path) -> bool:
    """Whether files can be created in ``path`` (or in its nearest existing parent)."""
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------- extraction


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"Archive {archive} has a member with an absolute path ({name!r}); refusing to extract it.")
    if any(part == ".." for part in p.parts):
        raise DataError(f"Archive {archive} has a member escaping the target folder ({name!r}); refusing to extract it.")
    return p


def _link_escapes(member_dir: PurePosixPath, target: str) -> bool:
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        return True
    depth = 0
    for part in (member_dir / target).parts:
        if part == "..":
            depth -= 1
        elif part not in (".", ""):
            depth += 1
        if depth < 0:
            return True
    return False


def check_archive(archive: str | os.PathLike[str]) -> list[str]:
    """Validate every member of a tar or zip archive without extracting.

    Returns:
        The member names.

    Raises:
        DataError: an unsafe member (absolute path, ``..``, link escaping the target,
            device/FIFO, zip entry marked as a symlink), or an unreadable archive.
    """
    archive = Path(archive)
    names: list[str] = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member_name(info.filename, archive)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise DataError(f"Archive {archive} has a symbolic link ({info.filename!r}); refusing to extract it.")
                    names.append(info.filename)
            return names
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                p = _check_member_name(m.name, archive)
                if m.issym() or m.islnk():
                    base = p.parent if m.issym() else PurePosixPath()
                    if _link_escapes(base, m.linkname):
                        raise DataError(
                            f"Archive {archive} has a link {m.name!r} -> {m.linkname!r} that leaves the "
                            "target folder; refusing to extract it."
                        )
                elif not (m.isfile() or m.isdir()):
                    raise DataError(f"Archive {archive} has a special file ({m.name!r}); refusing to extract it.")
                names.append(m.name)
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"Archive {archive} is unreadable or truncated ({e}). {FIX_HINT}") from e
    return names


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a tar (any compression) or zip archive safely and atomically.

    Every member is validated first (:func:`check_archive`); extraction goes to a temporary
    folder next to ``dest`` which is then renamed to ``dest``. If ``dest`` already exists
    it is returned unchanged: the rename makes a present ``dest`` a complete extraction.

    Args:
        archive: the ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` file.
        dest: folder to create with the archive's members inside.

    Returns:
        ``dest``.

    Raises:
        DataError: an unsafe member, an unreadable/truncated archive, or ``dest``'s parent
            is not writable.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        return dest
    check_archive(archive)
    if not is_writable_dir(dest.parent):
        raise DataError(
            f"Cannot extract {archive}: {dest.parent} is not writable. Extract it yourself or "
            "use a writable data root (--data-dir or $SHIFTLAB_DATA)."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    tf.extractall(tmp, filter="data")
                else:  # members were validated by check_archive above
                    tf.extractall(tmp)  # noqa: S202
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"Archive {archive} is unreadable or truncated ({e}). {FIX_HINT}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %s to %s", archive, dest)
    return dest


# ----------------------------------------------------------------------------- readers

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """All bytes of ``path``, gunzipped when it ends in ``.gz``.

    Raises:
        DataError: missing, truncated or corrupt file (names the file).
    """
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                return fh.read()
        return p.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"Data file {p} is missing. {FIX_HINT}") from e
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise DataError(f"Data file {p} is truncated or corrupt ({type(e).__name__}: {e}). Delete it and fetch it again. {FIX_HINT}") from e


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (MNIST format), gzip-compressed or not.

    Args:
        path: ``*-idx3-ubyte[.gz]`` (images) or ``*-idx1-ubyte[.gz]`` (labels).

    Returns:
        The array with the header's shape, e.g. ``[N, 28, 28]`` uint8 or ``[N]`` uint8.

    Raises:
        DataError: truncated/corrupt gzip, bad magic number, or a payload whose length is
            not what the header's dimensions say (names the file).
    """
    p = Path(path)
    data = read_bytes(p)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"Data file {p} is not an idx file (bad magic number {data[:4]!r}). {FIX_HINT}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"Data file {p} is truncated (incomplete idx header). {FIX_HINT}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"Data file {p} is truncated or corrupt: its header says {dims} ({expected} bytes of "
            f"data) but it holds {len(data) - header}. Delete it and fetch it again. {FIX_HINT}"
        )
    arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True) if dtype.itemsize > 1 else arr.copy()


def read_libsvm_bz2(path: str | os.PathLike[str], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a LIBSVM text file (``label idx:value ...``), bzip2-compressed or plain.

    Args:
        path: e.g. ``usps.t.bz2``.
        n_features: number of features (missing indices are 0).

    Returns:
        ``x: [N, n_features]`` float32 and ``y: [N]`` int64 (the labels as written).

    Raises:
        DataError: truncated/corrupt bzip2 or malformed lines (names the file).
    """
    p = Path(path)
    try:
        raw = bz2.decompress(p.read_bytes()) if p.suffix == ".bz2" else p.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"Data file {p} is missing. {FIX_HINT}") from e
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"Data file {p} is truncated or corrupt ({e}). Delete it and fetch it again. {FIX_HINT}") from e
    lines = [ln for ln in raw.decode("ascii", errors="strict").splitlines() if ln.strip()]
    x = np.zeros((len(lines), n_features), np.float32)
    y = np.empty(len(lines), np.int64)
    i = 0
    try:
        for i, ln in enumerate(lines):
            label, _, rest = ln.strip().partition(" ")
            y[i] = int(float(label))
            pairs = np.array(rest.replace(":", " ").split(), dtype=np.float64).reshape(-1, 2)
            x[i, pairs[:, 0].astype(np.int64) - 1] = pairs[:, 1]
    except (ValueError, IndexError) as e:
        raise DataError(f"Data file {p} has a malformed line {i + 1} ({e}). {FIX_HINT}") from e
    return x, y


def read_h5_split(path: str | os.PathLike[str], group: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``group/data`` and ``group/target`` from an HDF5 file (the ``usps.h5`` layout).

    Returns:
        ``x: [N, D]`` as stored and ``y: [N]`` int64.

    Raises:
        DataError: missing/corrupt file or missing datasets (names the file).
    """
    import h5py

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            x = np.asarray(f[group]["data"][()])
            y = np.asarray(f[group]["target"][()], dtype=np.int64)
    except (OSError, KeyError) as e:
        raise DataError(f"Data file {p} is missing, corrupt, or lacks {group}/data, {group}/target ({e}). {FIX_HINT}") from e
    return x, y


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")


def safe_unpickle(source: str | os.PathLike[str] | bytes, what: str | None = None) -> Any:
    """Load a data pickle (CIFAR batches) that may only build numpy arrays and containers.

    Uses ``encoding="latin1"`` like torchvision (the CIFAR files are Python 2 pickles).

    Args:
        source: a file path, or the pickle's bytes (e.g. read from a tar member).
        what: name used in error messages (default: the path).

    Raises:
        DataError: missing, truncated or corrupt file, or one that references any other
            Python global (it is never executed).
    """
    name = what or (str(source) if not isinstance(source, bytes) else "data pickle")
    try:
        if isinstance(source, bytes):
            return _RestrictedUnpickler(io.BytesIO(source), encoding="latin1").load()
        with open(source, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError as e:
        raise DataError(f"Data file {name} is missing. {FIX_HINT}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as e:
        raise DataError(f"Data file {name} is truncated, corrupt or not a data pickle ({type(e).__name__}: {e}). {FIX_HINT}") from e


def decode_image(data: bytes, mode: str, what: str = "image") -> np.ndarray:
    """Decode encoded image bytes with PIL.

    Args:
        data: PNG/JPEG/... bytes.
        mode: PIL mode to convert to (``"L"``, ``"RGB"`` or ``"1"``).
        what: name used in the error message (file or archive member).

    Returns:
        ``[H, W]`` (``"L"``; ``"1"`` as bool) or ``[H, W, 3]`` (``"RGB"``) array.

    Raises:
        DataError: undecodable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im if im.mode == mode else im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{what} is not a readable image ({e}). {FIX_HINT}") from e
