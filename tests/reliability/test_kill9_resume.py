"""``kill -9`` a real ``shiftlab run`` process mid-training, then ``--resume``: the resumed run
takes over the stale run-folder lock the killed process left behind and ends with the same
``metrics`` and the same per-epoch results as an uninterrupted run (CPU determinism)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import write_digits_mlp_recipe

EPOCHS = 8


def _recipe(tmp_path: Path) -> Path:
    return write_digits_mlp_recipe(tmp_path, "kill9", EPOCHS, [256, 256], 16)


def _cmd(rec: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shiftlab.cli", "run", str(rec), "--runs-dir", str(runs), "-q", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "SHIFTLAB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in ("time", "seconds", "elapsed"))} for r in rows]


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    rec = _recipe(tmp_path)
    ref_dir = tmp_path / "ref"
    done = subprocess.run(_cmd(rec, ref_dir), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    ref = ref_dir / "kill9/default/seed-0"

    runs = tmp_path / "runs"
    proc = subprocess.Popen(_cmd(rec, runs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    run = runs / "kill9/default/seed-0"
    deadline = time.time() + 300
    while not (run / "checkpoint.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert (run / "checkpoint.json").exists(), "the run finished or failed before its first checkpoint"
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists(), "the run finished before the kill; raise EPOCHS"
    assert (runs / "kill9/default/seed-0.lock").exists()  # left behind by the killed process

    resumed = subprocess.run(_cmd(rec, runs, "--resume"), capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert not (runs / "kill9/default/seed-0.lock").exists()
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert got["metrics"] == want["metrics"]
    assert got["selected_epoch"] == want["selected_epoch"]
    assert _rows(run) == _rows(ref)
    assert [r["epoch"] for r in _rows(run)] == list(range(EPOCHS))
