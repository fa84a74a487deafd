"""``kill -9`` one worker of a running ``shiftlab sweep``: the sweep reports the runs it could
not finish and exits non-zero; launching the same sweep again runs exactly the missing runs
(the finished ones are skipped untouched, the killed one takes over its stale lock and
resumes) and every run ends with a ``metrics.json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import write_digits_mlp_recipe

SEEDS = 4


def _recipe(tmp_path: Path) -> Path:
    return write_digits_mlp_recipe(tmp_path, "killsweep", 6, [256, 256], 16)


def _sweep(rec: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "shiftlab.cli", "sweep", str(rec), "--seeds", f"0-{SEEDS - 1}",
            "--max-parallel", "2", "--threads", "1", "--runs-dir", str(runs), "-q"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}


def _finished(runs: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}


def test_killing_a_sweep_worker_then_relaunching_completes_exactly_the_missing_runs(tmp_path: Path) -> None:
    rec, runs = _recipe(tmp_path), tmp_path / "runs"
    proc = subprocess.Popen(_sweep(rec, runs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        if _finished(runs):  # at least one run done: kill a worker that is inside another one
            for lock in runs.rglob("seed-*.lock"):
                try:
                    owner = json.loads(lock.read_text())
                except (OSError, ValueError):
                    continue
                folder = lock.with_name(lock.name.removesuffix(".lock"))
                if owner.get("pid") not in (None, proc.pid) and not (folder / "metrics.json").exists():
                    victim = int(owner["pid"])
                    os.kill(victim, signal.SIGKILL)
                    break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=300)
    assert victim is not None, f"no worker was caught mid-run (the sweep ended first):\n{output}"
    assert proc.returncode == 1, output
    text = " ".join(output.split())
    assert "sweep worker process died" in text and "launch the same sweep again" in text

    before = _finished(runs)
    missing = SEEDS - len(before)
    assert 1 <= missing < SEEDS, before

    again = subprocess.run(_sweep(rec, runs), capture_output=True, text=True, env=_env(), timeout=600)
    text = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 0, text
    assert f"{missing} ran, {SEEDS - missing} already finished, 0 failed" in text
    after = _finished(runs)
    assert sorted(after) == [f"seed-{s}" for s in range(SEEDS)]
    assert all(after[k] == v for k, v in before.items()), "a finished run was run again"
    assert not list(runs.rglob("seed-*.lock")), "a lock was left behind"


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in ("time", "seconds", "elapsed"))} for r in rows]


def test_killing_a_ray_worker_mid_run_is_retried_and_resumes_to_the_same_result(
    tmp_path: Path, local_ray: None
) -> None:
    """Ray reruns a task whose worker died (``max_retries=1``); the rerun takes over the dead
    worker's stale lock and resumes from its checkpoint, so the one sweep ends complete."""
    import threading

    from shiftlab.experiment import launch as la

    rec = write_digits_mlp_recipe(tmp_path, "killray", 6, [256, 256], 16)
    jobs = la.expand_grid(rec, [], [], [0, 1])
    ref = la.sweep(jobs, la.LocalLauncher(max_parallel=1), la.RunSpec(runs_dir=str(tmp_path / "ref"), threads=1))
    assert not ref.failed

    runs = tmp_path / "runs"
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the Ray worker inside the first run, after its first checkpoint
        while not stop.is_set() and not killed:
            for lock in runs.rglob("seed-*.lock"):
                folder = lock.with_name(lock.name.removesuffix(".lock"))
                try:
                    owner = json.loads(lock.read_text())
                except (OSError, ValueError):
                    continue
                if (folder / "checkpoint.json").exists() and not (folder / "metrics.json").exists():
                    os.kill(int(owner["pid"]), signal.SIGKILL)
                    killed.append(int(owner["pid"]))
                    break
            time.sleep(0.02)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        got = la.sweep(jobs, la.RayLauncher(num_cpus=1, max_parallel=1, max_retries=1),
                       la.RunSpec(runs_dir=str(runs), threads=1))
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert killed, "no Ray worker was caught mid-run"
    assert not got.failed, [r.error for r in got.failed]
    assert [r.metrics["metrics"] for r in got.results] == [r.metrics["metrics"] for r in ref.results]
    for job in jobs:
        assert _rows(la.job_dir(job, runs)) == _rows(la.job_dir(job, tmp_path / "ref"))
    assert not list(runs.rglob("*.lock"))
