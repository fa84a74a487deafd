"""One writer per run folder: a lock file beside it, naming its owner.

Two processes (two sweeps, a sweep and a manual ``shiftlab run``, two terminals) that run the
same recipe, variant and seed would write the same ``runs/<recipe>/<variant>/seed-<k>/``
folder at once and interleave checkpoints and results. :func:`run_lock` prevents that: the
first one creates ``seed-<k>.lock`` next to the folder (``O_CREAT | O_EXCL``, atomic on
local and NFSv3+ file systems) holding its host, pid, start time and command line; the
second gets :class:`RunLocked`, naming the owner. The lock is removed when the run ends, on
success or error alike.

A lock whose owner died without removing it (``kill -9``, a node lost) is *stale*. On the
owner's host that is detected (the pid is not running, or is running a process that started
after the lock was taken) and reported with a warning; the new run takes the lock over and
``--resume`` continues from the last checkpoint as usual. Two processes that find the same
stale lock at once do not both take it: removing a stale lock needs a second, short-lived
``seed-<k>.lock.break`` file (also ``O_EXCL``), and its holder removes the lock only if it
still names the dead owner, so a fresh lock taken meanwhile by the other process survives.
From another host the owner's
liveness cannot be checked: the error says so and names the file to delete once the owner
is known to be gone.

The lock sits beside the folder, not in it, so ``--overwrite`` (which moves the folder aside)
keeps it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shiftlab.errors import ShiftlabError

log = logging.getLogger(__name__)

__all__ = ["RunLocked", "lock_path", "read_lock", "run_lock"]


class RunLocked(ShiftlabError):
    """Another live process is writing this run folder (or one on another host may be)."""


def lock_path(out: Path) -> Path:
    """``runs/r/v/seed-0`` -> ``runs/r/v/seed-0.lock``."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def read_lock(path: Path) -> dict[str, Any] | None:
    """The owner recorded in a lock file (``None``: absent; ``{}``: unreadable or partly written)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _start_ticks(pid: int) -> int | None:
    """Clock ticks after boot at which process ``pid`` started (Linux ``/proc``; ``None``
    elsewhere). Unlike wall-clock times it never moves when the system clock is stepped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_start(pid: int) -> float | None:
    """Unix time a process started, from ``btime`` + its start ticks (``None`` off Linux).
    Only approximate: ``btime`` drifts when the wall clock is stepped (seconds on VMs)."""
    ticks = _start_ticks(pid)
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


# Locks written before ``start_ticks`` was recorded are compared by wall-clock time; the
# slack covers a stepped clock (a lock taken at 15:40:20 by a process whose btime-based start
# read 15:40:30 was once wrongly declared stale and its run was entered by a second process).
WALL_CLOCK_SLACK_S = 600.0


def _is_stale(owner: dict[str, Any], host: str) -> tuple[bool, str]:
    """``(stale, why)`` for a lock owned on this host; not stale when it cannot be told."""
    if owner.get("host") != host:
        return False, ""
    pid = int(owner.get("pid", -1))
    if not _pid_alive(pid):
        return True, f"process {pid} is not running"
    recorded = owner.get("start_ticks")
    if isinstance(recorded, int):
        now = _start_ticks(pid)
        if now is not None and now != recorded:
            return True, f"pid {pid} now belongs to another process (started at another time than the lock's owner)"
        return False, ""
    started = _process_start(pid)
    if started is not None and started > float(owner.get("time", 0)) + WALL_CLOCK_SLACK_S:
        return True, f"pid {pid} now belongs to a process started after the lock was taken"
    return False, ""


def _describe(owner: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("time", 0))))
    return f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, since {when} ({owner.get('command', '?')})"


def _remove_stale(path: Path, owner: dict[str, Any], break_timeout: float = 30.0) -> bool:
    """Remove the stale lock ``path`` if it still names ``owner``; ``False`` when another
    process is doing that now (it holds ``<path>.break``) or the lock changed meanwhile."""
    breaker = path.with_name(path.name + ".break")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a breaker that died holding it: remove it so the next attempt can go on
            if time.time() - breaker.stat().st_mtime > break_timeout:
                breaker.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    try:
        os.close(fd)
        if read_lock(path) != owner:  # taken over meanwhile by a live process, or gone
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        breaker.unlink(missing_ok=True)


@contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``<out>.lock`` while the body writes the run folder ``out``.

    Raises:
        RunLocked: a live process on this host holds it, or a process on another host does
            (liveness unknown), or the lock file is unreadable; the message names the owner and
            the file.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    me = {"host": host, "pid": os.getpid(), "time": time.time(), "start_ticks": _start_ticks(os.getpid()),
          "command": " ".join(sys.argv)[:500]}
    for _attempt in range(60):  # up to ~12 s while a lock file is being written
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_lock(path)
            if owner is None:  # removed meanwhile: try again
                continue
            if not owner:
                age = time.time() - path.stat().st_mtime
                if age < 10:  # an owner between create and write
                    time.sleep(0.2)
                    continue
                raise RunLocked(f"The lock file {path} is unreadable, so another run may be writing {out}. "
                                "If no run is using that folder, delete the lock file and run again.") from None
            stale, why = _is_stale(owner, host)
            if stale:
                if _remove_stale(path, owner):
                    log.warning("stale lock %s (%s: %s) removed; taking the run over", path, _describe(owner), why)
                else:
                    time.sleep(0.2)  # another process is removing it: look again
                continue
            if owner.get("host") == host and int(owner.get("pid", -1)) == os.getpid():
                raise RunLocked(f"This process already holds {path}: the same run folder {out} was asked for twice "
                                "at once.") from None
            where = ("on this host" if owner.get("host") == host
                     else "on another host, so this one cannot tell whether it is still alive")
            raise RunLocked(
                f"Another run is writing {out}: {_describe(owner)}, {where}. Wait for it, or run another "
                f"seed/variant. If that run is known to be dead, delete {path} and rerun with --resume."
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        raise RunLocked(f"Could not take the lock {path} for {out} (it kept changing hands); run again.")
    try:
        yield path
    finally:
        if read_lock(path) == me:
            path.unlink(missing_ok=True)
