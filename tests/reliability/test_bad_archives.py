"""Broken zip archives (not a zip, truncated, a member that is a symbolic link) given to
:func:`shiftlab.data.files.safe_extract`: each is a :class:`~shiftlab.errors.DataError`
naming the archive, and nothing is written next to the destination."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from shiftlab.data.files import safe_extract
from shiftlab.errors import DataError


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("images/escape")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["not a zip", "truncated", "symlink member"])
def test_broken_zip_is_a_data_error_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "images_background.zip"
    good = _zip_bytes({f"images/{i}.png": bytes(range(256)) * 40 for i in range(5)})
    data = {"not a zip": b"<html>proxy error</html>", "truncated": good[: len(good) // 2],
            "symlink member": _symlink_zip()}[kind]
    archive.write_bytes(data)
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(DataError) as err:
        safe_extract(archive, root / "images_background")
    assert str(archive) in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == before  # no partial or temporary folder left
