"""Real processes racing for one run folder: exactly one gets in, whether the lock is free or
stale (left by a killed run); and two ``shiftlab sweep`` commands started together on the
same runs leave every run folder complete and equal to a single sweep's result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import write_digits_mlp_recipe

RACERS = 4

WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from shiftlab.experiment.lock import RunLocked, run_lock

    out, log, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    while time.time() < start:  # every racer leaves this loop at the same moment
        pass
    try:
        with run_lock(out):
            with open(log, "a") as f:
                f.write(f"in {os.getpid()}\\n")
            time.sleep(2.0)  # hold it while the others try
    except RunLocked as exc:
        with open(log, "a") as f:
            f.write("locked " + " ".join(str(exc).split()) + "\\n")
""")


def _race(tmp_path: Path) -> list[str]:
    script, log, out = tmp_path / "racer.py", tmp_path / "race.log", tmp_path / "runs" / "r" / "default" / "seed-0"
    script.write_text(WORKER)
    start = time.time() + 4.0  # time for every interpreter to start and import
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(log), str(start)],
                              stderr=subprocess.PIPE, text=True) for _ in range(RACERS)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert time.time() > start, "racers did not wait for the start signal"
    return log.read_text().splitlines()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_racing_processes_for_a_free_lock_let_exactly_one_in(tmp_path: Path) -> None:
    lines = _race(tmp_path)
    assert len(lines) == RACERS
    assert sum(line.startswith("in ") for line in lines) == 1, lines
    assert all("Another run is writing" in line for line in lines if line.startswith("locked")), lines
    assert not list(tmp_path.rglob("*.lock")) and not list(tmp_path.rglob("*.break"))


def test_racing_processes_for_a_stale_lock_let_exactly_one_in(tmp_path: Path) -> None:
    lock = tmp_path / "runs" / "r" / "default" / "seed-0.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "time": time.time() - 60,
                                "command": "shiftlab run killed"}))
    lines = _race(tmp_path)
    assert len(lines) == RACERS
    winners = [line for line in lines if line.startswith("in ")]
    assert len(winners) == 1, lines  # each racer sees the stale lock; only one may take it over
    assert not lock.exists() and not list(tmp_path.rglob("*.break"))


def _sweep(rec: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "shiftlab.cli", "sweep", str(rec), "--seeds", "0-1", "--max-parallel", "1",
            "--threads", "1", "--runs-dir", str(runs), "-q"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250", "SHIFTLAB_NO_PROGRESS": "1"}


def _state(runs: Path) -> dict[str, tuple]:
    out = {}
    for m in sorted(runs.rglob("metrics.json")):
        rows = [json.loads(x) for x in (m.parent / "results.jsonl").read_text().splitlines()]
        epochs = [r["epoch"] for r in rows]
        out[m.parent.name] = (json.loads(m.read_text())["metrics"], epochs)
    return out


def test_two_sweeps_on_the_same_runs_leave_every_folder_complete(tmp_path: Path) -> None:
    rec = write_digits_mlp_recipe(tmp_path, "twosweeps", 5, [128], 16)
    ref_runs, runs = tmp_path / "ref", tmp_path / "runs"
    ref = subprocess.run(_sweep(rec, ref_runs), capture_output=True, text=True, env=_env(), timeout=600)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    a, b = (subprocess.Popen(_sweep(rec, runs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=_env()) for _ in range(2))
    outs = [p.communicate(timeout=600)[0] for p in (a, b)]
    codes = [a.returncode, b.returncode]
    # Each sweep either ran a run, found it finished, or was refused because the other held
    # it (exit 1 naming the lock); nothing else is allowed.
    for code, out in zip(codes, outs, strict=True):
        text = " ".join(out.split())
        assert code in (0, 1), out
        if code == 1:
            assert "Another run is writing" in text, out
    want = _state(ref_runs)
    assert set(want) == {"seed-0", "seed-1"}
    # A refused run is finished by relaunching (as the message says); the folders then match.
    again = subprocess.run(_sweep(rec, runs), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stdout
    assert _state(runs) == want
    assert all(epochs == list(range(5)) for _, epochs in want.values())
    assert not list(runs.rglob("*.lock"))
