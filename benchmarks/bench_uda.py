"""Unsupervised domain adaptation: every method on every task, seeds, mean ± 95% CI.

Runs the recipes of ``recipes/uda/`` through the engine (run folders under
``benchmarks/runs/``, so an interrupted benchmark continues with ``--resume`` semantics:
finished seeds are kept) and writes ``benchmarks/results/uda.json`` with one row per
(task, method, evaluation set): accuracy (the recipe's first evaluation set is the target
metric, never used for selection), mean and 95% Student-t CI over seeds, and training seconds
per seed. Rows of (task, method) pairs this invocation did not run are kept from the file,
so tables grow over several invocations; each row names the command that produced it.

Usage::

    python benchmarks/bench_uda.py --tasks digits --methods source_only,dann,cdan,mcc,mi_align,adamatch
    python benchmarks/bench_uda.py --tasks mnist_to_mnistm,mnist_to_usps,usps_to_mnist --seeds 0 1 2

``--set KEY=VALUE`` overrides every recipe (e.g. ``--set train.epochs=10`` for a quick
look; then the JSON says so in its command and notes). ``--label NAME`` keeps the rows of such
a variant beside the recipe's own rows (rows are matched on task, method and label) and adds
NAME to their method column in tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from shiftlab.config import load_recipe, parse_override
from shiftlab.experiment.report import merge_rows, write_benchmark
from shiftlab.experiment.run import Experiment, RunOptions
from shiftlab.stats import summarize

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "digits": "digits_to_digits_m.yaml",
    "mnist_to_mnistm": "mnist_to_mnistm.yaml",
    "mnist_to_usps": "mnist_to_usps.yaml",
    "usps_to_mnist": "usps_to_mnist.yaml",
}
# methods whose recipe differs beyond method.name (schedule or backbone)
SPECIAL = {
    ("mnist_to_mnistm", "mi_align"): "mnist_to_mnistm_mi_align.yaml",
}
BATCHNORM_METHODS = {"adamatch"}  # random logit interpolation needs BatchNorm statistics


def method_overrides(task: str, method: str, recipe_epochs: int,
                     recipe_hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """Overrides that turn a task's recipe into ``method``'s run; ``recipe_hparams`` are the
    recipe's ``method_hparams[method]`` (a stage split given there is kept)."""
    ov: dict[str, Any] = {"method.name": method}
    hp = recipe_hparams or {}
    if method in BATCHNORM_METHODS:
        ov["backbone.args.norm"] = True
    given = hp.get("dann_epochs", 0) + hp.get("mi_epochs", 0) == recipe_epochs
    if method == "mi_align" and (task, method) not in SPECIAL and not given:
        half = recipe_epochs // 2
        ov["method.hparams.dann_epochs"] = half
        ov["method.hparams.mi_epochs"] = recipe_epochs - half
    return ov


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="digits", help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--methods", default="source_only,dann,cdan,mcc,mi_align,adamatch")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for every recipe")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--runs-dir", default=str(REPO / "benchmarks" / "runs"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "uda.json"))
    ap.add_argument("--label", default=None,
                    help="name of this variant (with --set): its rows are kept beside the recipe's own")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(parse_override(s) for s in args.sets)
    rows = []
    t_all = time.perf_counter()
    for task in args.tasks.split(","):
        for method in args.methods.split(","):
            path = REPO / "recipes" / "uda" / SPECIAL.get((task, method), TASKS[task])
            base, _ = load_recipe(path, common)
            ov = {**common, **method_overrides(task, method, base.train.epochs,
                                               base.method_hparams.get(method))}
            if (task, method) in SPECIAL:
                ov.pop("method.name")
            recipe, ov = load_recipe(path, ov)
            exp = Experiment(recipe, ov, RunOptions(runs_dir=Path(args.runs_dir), data_dir=args.data_dir,
                                                    resume=True, progress=False))
            results = [exp.run_seed(s) for s in args.seeds]
            target_key = f"{recipe.data.eval[0].key}/acc"
            for key in dict.fromkeys([target_key, *(f"{e.key}/acc" for e in recipe.data.eval)]):
                s = summarize([r["metrics"][key] for r in results])
                rows.append({
                    "task": f"{task}: {key.removesuffix('/acc')}" + (" (target)" if key == target_key else ""),
                    "task_key": task,
                    "method": method if args.label is None else f"{method} [{args.label}]",
                    "variant": args.label, "overrides": ov, "metric": "accuracy", "mean": s.mean,
                    "ci95": None if s.n < 2 else s.ci95, "n": s.n,
                    "seconds": sum(r["seconds"] for r in results) / len(results),
                    "epochs": recipe.train.epochs, "backbone": recipe.backbone.name,
                    "backbone_args": dict(recipe.backbone.args), "selection": recipe.selection_rule,
                    "per_seed": [r["metrics"][key] for r in results],
                })
                print(f"{task:16s} {method:12s} {key:28s} {100 * s.mean:6.2f} ± "
                      f"{100 * s.ci95 if s.n > 1 else float('nan'):5.2f} (n={s.n})", flush=True)
    cmd = " ".join(["python", *sys.argv])
    for r in rows:
        r["command"] = cmd
    # rows of other (task, method, variant) triples from earlier invocations are kept
    rows = merge_rows(args.out, rows, key=lambda r: (r.get("task_key"), r.get("method"), r.get("variant")))
    write_benchmark(
        args.out, "uda", cmd, rows,
        notes=("Target accuracy = the recipe's first evaluation set; target labels are never used for "
               "training or selection (fixed schedule: the last epoch). 'seconds' = mean training seconds "
               f"per seed (evaluation excluded). Total wall {time.perf_counter() - t_all:.0f} s. "
               f"Overrides for every recipe: {common or 'none'}; adamatch runs dann_cnn with BatchNorm "
               "(norm=true); mi_align splits the recipe's epochs in two equal stages unless its own "
               "recipe or the recipe's method_hparams give the split."),
    )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
