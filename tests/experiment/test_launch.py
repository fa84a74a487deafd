"""Sweeps: the grid expands and validates up front, finished runs are skipped, a failing run
does not stop the others, and the same 2 x 3 sweep gives identical tables under the local,
Ray and SLURM (submitit local executor) launchers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shiftlab.cli import app
from shiftlab.errors import RecipeError
from shiftlab.experiment import launch as la
from shiftlab.experiment.report import aggregate, collect, to_markdown

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "uda" / "digits_to_digits_m.yaml"
# Short enough for CI: each run trains 2 epochs of 8 steps (CPU determinism is what is tested).
FAST = ["train.epochs=2", "train.max_steps_per_epoch=8", "data.eval=[{name: digits_m, split: test}]"]


def test_the_grid_is_the_product_times_seeds_with_one_folder_each(tmp_path: Path) -> None:
    jobs = la.expand_grid(DIGITS, ["method=source_only,dann", "train.lr=0.001,0.01"], FAST, [0, 1, 2])
    assert len(jobs) == 2 * 2 * 3
    assert {dict(j.overrides)["method.name"] for j in jobs} == {"source_only", "dann"}
    assert all(dict(j.overrides)["train.epochs"] == 2 for j in jobs)
    dirs = {la.job_dir(j, tmp_path) for j in jobs}
    assert len(dirs) == len(jobs) and all(d.name.startswith("seed-") for d in dirs)
    # the recipe's own seeds when --seeds is not given
    assert [j.seed for j in la.expand_grid(DIGITS, [], FAST, None)] == [0, 1, 2]


def test_a_bad_grid_value_fails_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no_such_method"):
        la.expand_grid(DIGITS, ["method=dann,no_such_method"], FAST, [0])
    with pytest.raises(RecipeError, match="KEY=V1,V2"):
        la.expand_grid(DIGITS, ["method"], FAST, [0])
    assert not any(tmp_path.iterdir())


def _table(runs: Path) -> str:
    return to_markdown(aggregate(collect(runs)))


def _metrics(runs: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(runs)): json.loads(p.read_text())["metrics"] for p in runs.rglob("metrics.json")}


def test_finished_runs_are_skipped_and_a_failing_run_does_not_stop_the_others(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # batch_size 5000 > the 1,347 training images: that run fails with a clear message
    jobs = la.expand_grid(DIGITS, ["train.batch_size=32,5000"], FAST + ["method=source_only"], [0])
    spec = la.RunSpec(runs_dir=str(runs), threads=1)
    first = la.sweep(jobs, la.LocalLauncher(max_parallel=1), spec)
    assert [r.error is None for r in first.results] == [True, False]
    assert "fewer than one batch" in (first.results[1].error or "")
    before = (la.job_dir(jobs[0], runs) / "metrics.json").stat().st_mtime_ns
    todo, done = la.split_finished(jobs, runs)
    assert todo == [jobs[1]] and [d.job for d in done] == [jobs[0]]

    again = la.sweep(jobs, la.LocalLauncher(max_parallel=1), spec)
    assert again.results[0].skipped and again.results[0].metrics == first.results[0].metrics
    assert (la.job_dir(jobs[0], runs) / "metrics.json").stat().st_mtime_ns == before
    assert again.results[1].error is not None  # still failing, still reported

    res = CliRunner().invoke(app, ["sweep", str(DIGITS), "--grid", "train.batch_size=32,5000", "--seeds", "0",
                                   "--runs-dir", str(runs), "-q", "--max-parallel", "1",
                                   *[a for s in FAST + ["method=source_only"] for a in ("--set", s)]])
    assert res.exit_code == 1, res.output
    assert "1 ran" not in res.output and "1 already finished, 1 failed" in res.output.replace("\n", " ")


@pytest.mark.slow
def test_local_ray_and_slurm_launchers_give_identical_tables(tmp_path: Path, local_ray: None) -> None:
    pytest.importorskip("submitit")
    jobs = la.expand_grid(DIGITS, ["method=source_only,dann"], FAST, [0, 1, 2])
    launchers = {
        "local": la.LocalLauncher(max_parallel=2),
        "ray": la.RayLauncher(num_cpus=1),
        "slurm": la.SlurmLauncher(folder=tmp_path / "submitit", cluster="local", max_parallel=2),
    }
    tables, metrics = {}, {}
    for name, launcher in launchers.items():
        runs = tmp_path / name
        result = la.sweep(jobs, launcher, la.RunSpec(runs_dir=str(runs), threads=1))
        assert not result.failed, [r.error for r in result.failed]
        assert len(result.ran) == 6
        tables[name], metrics[name] = _table(runs), _metrics(runs)
    assert len(metrics["local"]) == 6
    assert metrics["ray"] == metrics["local"] and metrics["slurm"] == metrics["local"]
    assert tables["ray"] == tables["local"] and tables["slurm"] == tables["local"]
    assert "digits_m/test/acc" in tables["local"] and "source_only" in tables["local"]
