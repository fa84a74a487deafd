"""Self-supervised pre-training for transfer: the five settings A-E on both digit scenarios.

Runs the ``kind: ssl`` recipes (3 seeds each by default; resumable: finished seeds, cached
pre-trained backbones and finished settings are kept) and aggregates per scenario:

* each setting's target accuracy, mean ± 95% CI (Student t) over seeds, with the label
  budget (labelled target images per class and in all);
* the document's two claims as paired per-seed differences, ``C - B`` (self-supervised vs
  supervised pre-training, full fine-tuning) and ``E - D`` (the same with a frozen backbone):
  ``reproduced`` when the 95% CI of the difference lies above 0, ``reversed`` when below,
  ``inconclusive`` otherwise;
* the k-NN monitor (random initialisation, after BYOL, the supervised backbone), the
  linear-probe accuracy, BYOL's images/second and seconds;
* one PNG per scenario (``<out stem>_<scenario>.png``): bars of A-E with CI whiskers.

Usage::

    python benchmarks/bench_ssl.py                        # both scenarios, the recipes' seeds
    python benchmarks/bench_ssl.py --scenario mnist_to_usps --seeds 0-1 --set ssl.epochs=3
    python benchmarks/bench_ssl.py --collect              # aggregate what is there

Writes ``benchmarks/results/ssl.json`` (via :func:`shiftlab.experiment.report.write_benchmark`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from shiftlab.cli import parse_seeds  # noqa: E402
from shiftlab.config import overrides_id, read_recipe_mapping  # noqa: E402
from shiftlab.experiment.dispatch import run_recipe  # noqa: E402
from shiftlab.experiment.report import write_benchmark  # noqa: E402
from shiftlab.experiment.run import RunOptions  # noqa: E402
from shiftlab.experiment.ssl_run import SETTINGS, load_ssl_recipe  # noqa: E402
from shiftlab.stats import summarize  # noqa: E402

SCENARIOS = {
    "mnist_to_usps": "recipes/ssl/mnist_to_usps.yaml",
    "mnistm_to_mnistm_real": "recipes/ssl/mnistm_to_mnistm_real.yaml",
}
CLAIMS = (("C", "B"), ("E", "D"))
EXTRA = ("ssl/init_knn_acc", "ssl/knn_acc", "ssl/probe_acc", "supervised/knn_acc", "ssl/images_per_s",
         "ssl/seconds", "supervised/seconds")


def _ci(s: Any) -> float | None:
    return None if math.isnan(s.ci95) else s.ci95


def aggregate(scenario: str, path: str, overrides: list[str], root: Path, out_dir: Path, stem: str) -> dict[str, Any]:
    """Rows, the claims' verdicts and the PNG of one scenario (empty when nothing has run)."""
    recipe, ov = load_ssl_recipe(read_recipe_mapping(REPO / path), overrides)
    base = root / recipe.name / overrides_id(ov)
    runs = sorted(p for p in base.glob("seed-*") if (p / "metrics.json").is_file() and ".old-" not in p.name)
    if not runs:
        return {"scenario": scenario, "seeds": 0}
    results = [json.loads((r / "metrics.json").read_text()) for r in runs]
    seeds = [r["seed"] for r in results]
    budget = {"labels_per_class": recipe.target.labels_per_class,
              "labelled": int(results[0]["metrics"]["target/labelled"]),
              "eval_images": results[0]["target_split"]["eval_images"], "eval": results[0]["target_split"]["eval"]}
    rows, table = [], []
    for s in recipe.settings:
        vals = [r["metrics"][f"{s}/acc"] for r in results]
        sm = summarize(vals)
        secs = [r["settings"][s]["seconds"] for r in results]
        table.append({"setting": s, "pretraining": SETTINGS[s][0], "adaptation": SETTINGS[s][1],
                      "mean": sm.mean, "ci95": _ci(sm), "values": vals})
        rows.append({"task": scenario, "method": f"{s}: {SETTINGS[s][0]} / {SETTINGS[s][1]}", "metric": "acc",
                     "mean": sm.mean, "ci95": _ci(sm), "n": sm.n, "seconds": sum(secs) / len(secs),
                     "seeds": seeds, "values": vals, **budget})
    monitors = {}
    for key in EXTRA:
        vals = [r["metrics"][key] for r in results if key in r["metrics"]]
        if vals:
            sm = summarize(vals)
            monitors[key] = {"mean": sm.mean, "ci95": _ci(sm), "values": vals}
            rows.append({"task": scenario, "method": recipe.ssl.method if key.startswith("ssl/") else "supervised",
                         "metric": key.replace("/", "_"), "mean": sm.mean, "ci95": _ci(sm), "n": sm.n,
                         "seconds": None})
    claims = []
    for a, b in CLAIMS:
        if a not in recipe.settings or b not in recipe.settings:
            continue
        diff = [r["metrics"][f"{a}/acc"] - r["metrics"][f"{b}/acc"] for r in results]
        sm = summarize(diff)
        if math.isnan(sm.ci95):
            verdict = "inconclusive (one seed)"
        elif sm.mean - sm.ci95 > 0:
            verdict = "reproduced"
        elif sm.mean + sm.ci95 < 0:
            verdict = "reversed"
        else:
            verdict = "inconclusive"
        claims.append({"claim": f"{a} > {b}", "diff_mean": sm.mean, "diff_ci95": _ci(sm), "diffs": diff,
                       "verdict": verdict})
    png = out_dir / f"{stem}_{scenario}.png"
    try:
        from shiftlab.plots import bar_with_ci

        bar_with_ci([f"{t['setting']}: {t['pretraining']}\n{t['adaptation']}" for t in table],
                    [100 * t["mean"] for t in table],
                    [100 * t["ci95"] if t["ci95"] is not None else math.nan for t in table], png,
                    ylabel="target accuracy (%)",
                    title=f"{scenario}: {budget['labelled']} labelled target images, {len(seeds)} seeds")
    except Exception as exc:  # the numbers matter more than the picture
        print(f"could not draw {png}: {exc}")
    return {"scenario": scenario, "recipe": path, "overrides": ov, "seeds": len(seeds), "seed_list": seeds,
            "method": recipe.ssl.method, "backbone": recipe.backbone.name, "ssl_epochs": recipe.ssl.epochs,
            "budget": budget, "table": table, "claims": claims, "monitors": monitors, "rows": rows,
            "png": str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)}


def _line(r: dict[str, Any]) -> str:
    cells = ", ".join(f"{t['setting']} {100 * t['mean']:.2f}" + (f" ± {100 * t['ci95']:.2f}" if t["ci95"] else "")
                      for t in r["table"])
    claims = "; ".join(f"{c['claim']}: {100 * c['diff_mean']:+.2f}"
                       + (f" ± {100 * c['diff_ci95']:.2f}" if c["diff_ci95"] else "") + f" pts, {c['verdict']}"
                       for c in r["claims"])
    return (f"{r['scenario']} ({r['seeds']} seeds, {r['budget']['labelled']} labelled target images, "
            f"{r['method']} {r['ssl_epochs']} epochs on {r['backbone']}): {cells}. {claims}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="run these (repeatable)")
    ap.add_argument("--collect", action="store_true", help="only aggregate finished runs")
    ap.add_argument("--seeds", default=None, help="e.g. 0-2 (default: the recipe's)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="recipe override")
    ap.add_argument("--runs-dir", default=str(REPO / "benchmarks" / "runs" / "ssl"))
    ap.add_argument("--data-dir", default=os.environ.get("SHIFTLAB_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ssl.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.runs_dir)
    todo = args.scenario or ([] if args.collect else list(SCENARIOS))
    t0 = time.perf_counter()
    for sc in todo:
        run_recipe(REPO / SCENARIOS[sc], args.overrides,
                   RunOptions(runs_dir=root, data_dir=args.data_dir, resume=True, progress=False), parse_seeds(args.seeds or None))
    out = Path(args.out)
    results = [aggregate(sc, p, args.overrides, root, out.parent, out.stem) for sc, p in SCENARIOS.items()]
    results = [r for r in results if r.get("seeds")]
    lines = [_line(r) for r in results]
    write_benchmark(
        out, "ssl", "python benchmarks/bench_ssl.py " + " ".join(sys.argv[1:]),
        [row for r in results for row in r["rows"]],
        notes="Target accuracy of the five settings after the recipes' fixed schedules (no target labels "
              "beyond the budget pick anything), mean ± 95% CI (Student t) over seeds. Claims are paired "
              "per-seed differences: reproduced when the CI of the difference is above 0. "
              + " ".join(lines) + f" Wall time of this invocation: {time.perf_counter() - t0:.0f} s "
              f"({torch.get_num_threads()} torch threads).",
    )
    out.with_name(f"{out.stem}_tables.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in results], indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
