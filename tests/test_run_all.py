"""benchmarks/run_all.py: the plan of each profile, where the quick profile writes, one step's run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_all.py"


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = mod
    spec.loader.exec_module(mod)
    return mod


def _tree(root: Path) -> dict[str, int]:
    skip = {"__pycache__", "runs", ".venvs"}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def test_dry_run_lists_every_script_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    before = _tree(REPO / "benchmarks")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--profile", "quick", "--dry-run", "--out", str(out),
                           "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for script in sorted((REPO / "benchmarks").glob("bench_*.py")):
        assert f"benchmarks/{script.name}" in proc.stdout, script.name
    assert "NOT acceptance numbers" in proc.stdout and "nothing was run or written" in proc.stdout
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert _tree(REPO / "benchmarks") == before


@pytest.mark.parametrize("custom_out", [False, True])
def test_quick_outputs_stay_in_the_quick_folder(run_all: ModuleType, tmp_path: Path, custom_out: bool) -> None:
    out = (tmp_path / "q") if custom_out else run_all.QUICK_OUT
    steps = run_all.build_plan("quick", out, run_all.DEFAULT_DATA, setup_peers=True, runs_root=tmp_path / "runs")
    ran = [s for s in steps if not s.skip]
    assert {s.script for s in ran} >= {e.script for e in run_all.PLAN.values() if e.quick}
    results = (REPO / "benchmarks" / "results").resolve()
    for s in ran:
        outs = [s.args[i + 1] for i, a in enumerate(s.args[:-1]) if a == "--out"]
        assert outs, f"{s.name} has no --out: it would write into benchmarks/results"
        for o in outs:
            p = (REPO / o).resolve()
            assert p.is_relative_to(out.resolve()), (s.name, o)
            assert p.parent != results, (s.name, o)
        runs = [s.args[i + 1] for i, a in enumerate(s.args[:-1]) if a == "--runs-dir"]
        assert all((REPO / r).resolve().is_relative_to((tmp_path / "runs").resolve()) for r in runs), s.name
    assert sum(s.expected_s or 0 for s in ran) <= 30 * 60  # the profile's budget on 2 cores


def test_quick_refuses_the_acceptance_folder(run_all: ModuleType) -> None:
    with pytest.raises(ValueError, match="acceptance"):
        run_all.build_plan("quick", run_all.RESULTS, run_all.DEFAULT_DATA)
    bad = run_all.Step("x", "bench_x.py", ["--out", "benchmarks/results/x.json"], {}, 10, 1, None)
    with pytest.raises(ValueError, match="outside the quick output folder"):
        run_all.check_quick_outputs([bad], run_all.QUICK_OUT)


def test_full_reproduces_the_stored_commands(run_all: ModuleType) -> None:
    steps = {s.name: s for s in run_all.build_plan("full", run_all.RESULTS, run_all.DEFAULT_DATA, setup_peers=True)}
    assert steps["data_pipeline"].command().startswith(
        "python benchmarks/bench_data_pipeline.py --repeats 3 --train-fraction 0.3")
    assert "--out benchmarks/results/pinn.json" in steps["pinn"].command()
    assert steps["ssl_peer"].command().startswith("OMP_NUM_THREADS=2 python benchmarks/bench_ssl_peer.py --threads 2")
    names = list(steps)
    assert names.index("fewshot_easyfsl") < names.index("fewshot")  # the parts before --collect


def test_missing_data_peer_and_unknown_only(run_all: ModuleType, tmp_path: Path) -> None:
    steps = run_all.build_plan("quick", tmp_path / "q", tmp_path / "no-data", only=["ssl", "bench_uda"],
                               setup_peers=False, threads=1, runs_root=tmp_path / "runs")
    by = {s.name: s for s in steps}
    assert set(by) == {"ssl", "uda"}
    assert by["ssl"].skip and "data absent" in by["ssl"].skip
    assert by["uda"].skip is None and by["uda"].args[-2:] == ["--threads", "1"]
    assert by["uda"].env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="unknown"):
        run_all.build_plan("quick", tmp_path / "q", tmp_path, only=["nope"])


def test_run_step_records_failure_timeout_and_data_errors(run_all: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    scripts = {
        "ok": "print('hello'); open(__import__('sys').argv[1], 'w').write('{}')",
        "fail": "print('about to fail'); raise SystemExit(3)",
        "slow": "import time; print('sleeping', flush=True); time.sleep(60)",
        "nodata": "raise __import__('shiftlab.errors', fromlist=['x']).DataError('MNIST is missing')",
    }
    res = {}
    for name, code in scripts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(code)
        args = [str(out / "ok.json")] if name == "ok" else []
        step = run_all.Step(name, str(path), args, {}, 3 if name == "slow" else 60, 1, None)
        res[name] = run_all.run_step(step, out, tmp_path / "runs")
    assert res["ok"].status == "ok" and res["ok"].outputs == [str((out / "ok.json").resolve())]
    assert "hello" in (out / "logs" / "ok.log").read_text()
    assert res["fail"].status == "failed" and res["fail"].exit_code == 3 and "about to fail" in res["fail"].tail
    assert res["slow"].status == "timeout" and res["slow"].seconds < 40 and "sleeping" in res["slow"].tail
    assert res["nodata"].status == "skipped" and "MNIST is missing" in res["nodata"].reason
