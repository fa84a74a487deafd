"""One writer per run folder: the lock beside ``seed-<k>/`` refuses a second live writer,
names its owner, is taken over when stale, and is released on success and on errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shiftlab.experiment.lock import (
    RunLocked,
    _is_stale,
    _process_start,
    _start_ticks,
    lock_path,
    read_lock,
    run_lock,
)


def _write_lock(out: Path, **owner: object) -> Path:
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "time": time.time(),
                                "command": "shiftlab sweep other", **owner}))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_beside_the_folder_and_released_after_the_body(tmp_path: Path) -> None:
    out = tmp_path / "r" / "default" / "seed-0"
    with run_lock(out) as path:
        assert path == tmp_path / "r" / "default" / "seed-0.lock"
        owner = read_lock(path)
        assert owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert not path.exists()


def test_lock_is_released_when_the_run_fails(tmp_path: Path) -> None:
    out = tmp_path / "seed-0"
    with pytest.raises(ValueError), run_lock(out):
        raise ValueError("boom")
    assert not lock_path(out).exists()
    with run_lock(out):  # and can be taken again
        pass


def test_a_live_owner_on_this_host_refuses_a_second_writer(tmp_path: Path) -> None:
    out = tmp_path / "seed-0"
    path = _write_lock(out)
    with pytest.raises(RunLocked) as err, run_lock(out):
        pytest.fail("the body must not run")
    msg = str(err.value)
    assert f"pid {os.getppid()}" in msg and "shiftlab sweep other" in msg and str(path) in msg
    assert path.exists()  # the owner's lock is left alone


def test_the_same_process_asking_twice_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "seed-0"
    with run_lock(out), pytest.raises(RunLocked, match="asked for twice"), run_lock(out):
        pass


def test_an_owner_on_another_host_is_reported_not_broken(tmp_path: Path) -> None:
    out = tmp_path / "seed-0"
    path = _write_lock(out, host="node-17.cluster", pid=4242)
    with pytest.raises(RunLocked, match="another host") as err, run_lock(out):
        pass
    assert "node-17.cluster" in str(err.value) and f"delete {path}" in str(err.value)
    assert path.exists()


@pytest.mark.parametrize("why", [
    "dead pid",
    pytest.param("reused pid", marks=pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                                       reason="process start times are read from Linux /proc")),
    pytest.param("other start ticks", marks=pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                                              reason="start ticks are read from Linux /proc")),
])
def test_a_stale_lock_is_reported_and_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture, why: str) -> None:
    out = tmp_path / "seed-0"
    # reused pid: a live process (our parent) that started long after the lock was written
    # (an old-style lock without start_ticks), or whose start ticks differ from the owner's
    if why == "dead pid":
        path = _write_lock(out, pid=_dead_pid())
    elif why == "reused pid":
        path = _write_lock(out, time=1.0e9)
    else:
        path = _write_lock(out, start_ticks=_start_ticks(os.getppid()) + 1)
    with caplog.at_level(logging.WARNING, logger="shiftlab.experiment.lock"), run_lock(out):
        assert read_lock(path)["pid"] == os.getpid()  # type: ignore[index]
    assert "stale lock" in caplog.text and str(path) in caplog.text
    assert not path.exists()


def test_a_locked_run_folder_is_not_touched_by_a_second_run(tmp_path: Path) -> None:
    """End to end: ``run_recipe`` on a folder another live process holds raises RunLocked
    before writing anything."""
    from shiftlab.experiment.dispatch import run_recipe
    from shiftlab.experiment.run import RunOptions

    recipe = {"name": "locked", "data": {"source": "digits", "image_size": 16, "channels": 1},
              "backbone": {"name": "lenet"}, "method": {"name": "erm"},
              "train": {"epochs": 1, "batch_size": 64}, "seeds": [0]}
    out = tmp_path / "locked" / "default" / "seed-0"
    _write_lock(out)
    with pytest.raises(RunLocked):
        run_recipe(recipe, {}, RunOptions(runs_dir=tmp_path, progress=False))
    assert not out.exists()


def test_an_unreadable_lock_is_reported_not_broken(tmp_path: Path) -> None:
    out = tmp_path / "seed-0"
    path = lock_path(out)
    path.write_text("{not json")
    old = time.time() - 60  # not an owner caught between creating and writing it
    os.utime(path, (old, old))
    with pytest.raises(RunLocked, match="unreadable"), run_lock(out):
        pass
    assert path.read_text() == "{not json"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start ticks are read from Linux /proc")
def test_a_live_owner_stays_the_owner_when_the_wall_clock_was_stepped(tmp_path: Path) -> None:
    """A lock whose recorded time is later than its (live) owner's btime-based start, as
    after a clock step, is not stale: the owner is recognised by its start ticks; an old-style
    lock (no start ticks) has a wall-clock slack."""
    owner = {"host": socket.gethostname(), "pid": os.getppid()}
    ticks = _start_ticks(os.getppid())
    assert not _is_stale({**owner, "time": 1.0, "start_ticks": ticks}, socket.gethostname())[0]
    started = _process_start(os.getppid())
    assert started is not None
    assert not _is_stale({**owner, "time": started - 10.0}, socket.gethostname())[0]
    with run_lock(tmp_path / "seed-0"):
        assert read_lock(lock_path(tmp_path / "seed-0"))["start_ticks"] == _start_ticks(os.getpid())  # type: ignore[index]
