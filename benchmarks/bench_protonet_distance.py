"""ProtoNet's distance at the easyfsl side-by-side setting: squared Euclidean vs plain Euclidean.

``bench_fewshot.py --part easyfsl`` found easyfsl's ``PrototypicalNetworks`` 5 points more
accurate than ours with the same Conv-4, data and episodes. easyfsl scores queries by minus
the Euclidean distance (``-torch.cdist``); Snell et al. (and our ``distance: euclidean``) use
minus its square. This script trains our ``protonet`` both ways at exactly that setting
(Omniglot ``images_background_small1`` with rotations as in ``recipes/fewshot/omniglot_heldout.yaml``,
300 20-way 5-shot 5-query episodes, Adam lr 1e-3, seed 0) and tests both on the same 1,000
5-way 1-shot 15-query episodes over ``small2``'s held-out alphabets.

Usage::

    python benchmarks/bench_protonet_distance.py [--iterations 300] [--threads 2]

Writes ``benchmarks/results/fewshot_distance.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_fewshot  # noqa: E402

from shiftlab.experiment.fewshot_run import evaluate_episodes, load_fewshot_recipe, prepare  # noqa: E402
from shiftlab.experiment.report import write_benchmark  # noqa: E402
from shiftlab.stats import summarize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--test-episodes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fewshot_distance.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe, _ = load_fewshot_recipe(bench_fewshot._load("omniglot_heldout.yaml"))
    data = prepare(recipe, bench_fewshot.DATA)
    test = data.evals["small2-heldout"]
    rows = []
    for distance in ("euclidean", "l2"):
        m, train_s = bench_fewshot.train_protonet(data.train, args.iterations, 20, 5, 5, 1e-3, 0,
                                                  {"distance": distance})
        accs = evaluate_episodes(m, test, 5, 1, 15, args.test_episodes, seed=12345)
        s = summarize(accs)
        print(f"{distance}: 5-way 1-shot {s.mean * 100:.2f} ± {s.ci95 * 100:.2f} (train {train_s:.1f} s)")
        rows.append({"task": "small2-heldout/5w1s/acc", "method": f"protonet distance={distance}", "metric": "acc",
                     "mean": s.mean, "ci95": s.ci95, "n": len(accs), "seconds": train_s})
    write_benchmark(
        args.out, "fewshot_distance",
        f"python benchmarks/bench_protonet_distance.py --iterations {args.iterations} --threads {args.threads}",
        rows,
        notes=(f"{args.iterations} 20-way 5-shot 5-query training episodes (Adam 1e-3, seed 0, Conv-4 64), "
               f"{args.test_episodes} shared 5-way 1-shot 15-query test episodes (seed 12345); the only "
               "difference between rows is the distance: euclidean = -||q-c||^2 (Snell et al.), "
               "l2 = -||q-c|| (easyfsl's PrototypicalNetworks)."),
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
