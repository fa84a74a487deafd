"""Sweep overhead per run: a plain loop of ``shiftlab run`` calls vs ``shiftlab sweep
--launcher local`` vs ``--launcher ray``, on the same 2 methods x 3 seeds of the embedded
digits -> digits_m pair, in one process on one machine (ratios are what to read).

Each side runs the same 6 short runs (1 torch thread each) into its own fresh runs folder;
the overhead per run is ``(side wall time - sum of the runs' own training seconds) / 6``.

    python benchmarks/bench_sweep.py --out benchmarks/results/sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "uda" / "digits_to_digits_m.yaml"
SETS = ["train.epochs=2", "train.max_steps_per_epoch=8", "data.eval=[{name: digits_m, split: test}]"]
METHODS, SEEDS = ["source_only", "dann"], [0, 1, 2]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shiftlab.cli", *args]


def _sets() -> list[str]:
    return [a for s in SETS for a in ("--set", s)]


def _train_seconds(runs: Path) -> float:
    return sum(json.loads(p.read_text())["seconds"] for p in runs.rglob("metrics.json"))


def _side(name: str, runs: Path, env: dict[str, str], parallel: int) -> dict:
    t0 = time.perf_counter()
    if name == "plain_loop":
        for m in METHODS:
            for s in SEEDS:
                subprocess.run(_cli("run", str(RECIPE), "--set", f"method={m}", *_sets(), "--seeds", str(s),
                                    "--runs-dir", str(runs), "-q"), check=True, env=env, capture_output=True)
    else:
        subprocess.run(_cli("sweep", str(RECIPE), "--grid", f"method={','.join(METHODS)}", *_sets(),
                            "--seeds", ",".join(map(str, SEEDS)), "--launcher", name.split("_")[0],
                            "--max-parallel", str(parallel), "--threads", "1", "--runs-dir", str(runs), "-q"),
                       check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t0
    n = len(METHODS) * len(SEEDS)
    train = _train_seconds(runs)
    return {"side": name, "wall_s": round(wall, 2), "runs": n, "train_s_sum": round(train, 2),
            "wall_per_run_s": round(wall / n, 3), "overhead_per_run_s": round((wall - train) / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sweep.json")
    ap.add_argument("--parallel", type=int, default=1, help="--max-parallel for the launchers (1: same as the loop)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep"))
    rows = []
    try:
        for side in ("plain_loop", "local", "ray"):
            rows.append(_side(side, tmp / side, env, args.parallel))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["wall_ratio_vs_plain_loop"] = round(r["wall_s"] / base, 3)
    import ray
    import torch

    import shiftlab
    from shiftlab.io import atomic_write_json

    doc = {"name": "sweep_overhead", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
           "versions": {"shiftlab": shiftlab.__version__, "torch": torch.__version__, "ray": ray.__version__,
                        "python": platform.python_version()},
           "setup": f"{len(METHODS)} methods x {len(SEEDS)} seeds on digits->digits_m, {SETS}, 1 torch thread, "
                    f"launchers at --max-parallel {args.parallel}",
           "sides": rows}
    atomic_write_json(args.out, doc)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
