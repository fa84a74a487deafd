"""``shiftlab demo``: a few minutes on 2 CPU cores, no data folder needed.

Stage 1 (supervised + shift): train ``erm`` with the ``dann_cnn`` backbone on the embedded
``digits`` (scikit-learn's 8×8 digits upsampled to 28×28), then evaluate in-domain, on
``digits_m`` (the same digits blended onto photo patches, the MNIST-M recipe) and under
a few corruptions.

Stage 2 (domain adaptation): ``source_only``, ``dann`` and ``adamatch`` (LeNet-5) from
``digits`` to the unlabelled ``digits_m`` training images, evaluated on the ``digits_m``
test split.

Stage 3 (few-shot): ProtoNet 5-way 1-shot on digits never seen in meta-training.

Stage 4 (physics-informed network): the source document's SIR problem solved by a PINN and
compared with ``solve_ivp`` (a few seconds).

Stage 5 (test-time adaptation): ``source`` vs ``norm`` vs ``tent`` on the digits test set
under four corruptions at severity 5 (:func:`shiftlab.experiment.tta_run.demo_stage`, about
10 s).

Stage 6 (data selection for transfer): a LeNet trained on ``digits`` fine-tuned on a quarter
of ``digits_m`` chosen at random, by highest entropy and by k-center, against the whole pool
(:func:`shiftlab.experiment.transfer_run.demo_stage`, about 10 s).

Stage 7 (self-supervised pre-training for transfer): BYOL on the unlabelled ``digits``
training images, then the five settings A-E with 10 labelled images per class
(:func:`shiftlab.experiment.ssl_run.demo_stage`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shiftlab.config import load_recipe
from shiftlab.experiment.run import Experiment, RunOptions

log = logging.getLogger(__name__)

DEMO_SHIFTS = (("gaussian_noise", 3), ("gaussian_blur", 3), ("contrast", 4), ("impulse_noise", 3))


def demo_recipe(quick: bool = False) -> dict:
    """The demo's recipe as a dict (also in ``recipes/demo/digits.yaml``)."""
    evals = [{"name": "digits", "split": "test"}, {"name": "digits_m", "split": "test"}]
    evals += [{"name": "digits", "split": "test", "shift": s, "severity": k} for s, k in DEMO_SHIFTS]
    return {
        "name": "demo-digits",
        "description": "ERM on embedded digits; evaluated in-domain, on digits_m and under shifts",
        "data": {"source": "digits", "eval": evals, "image_size": 28, "channels": 3},
        "backbone": {"name": "dann_cnn"},
        "method": {"name": "erm"},
        "train": {"epochs": 2 if quick else 15, "batch_size": 32, "lr": 1e-3},
        "seeds": [0],
    }


@dataclass
class DemoResult:
    markdown: str
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def run_demo(out_dir: str | Path = "demo_out", quick: bool = False, progress: bool = True) -> DemoResult:
    """Run the demo stages, write figures into ``out_dir``, return a Markdown summary."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    recipe, ov = load_recipe(demo_recipe(quick))
    opts = RunOptions(runs_dir=out_dir / "runs", overwrite=True, progress=progress)
    exp = Experiment(recipe, ov, opts)
    metrics = exp.run_seed(0)["metrics"]
    accs = {k.removesuffix("/acc"): v for k, v in metrics.items() if k.endswith("/acc")}

    lines = ["## shiftlab demo", "", "Stage 1: `erm` + `dann_cnn` trained on `digits` (train split)", "",
             "| evaluated on | accuracy (%) |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.2f} |" for k, v in accs.items()]
    figures = _figures(out_dir, accs, seed=0)
    lines += [""]
    uda_lines, uda_accs, uda_figs = _uda_stage(out_dir, quick, progress)
    lines += uda_lines
    figures += uda_figs
    accs.update(uda_accs)
    from shiftlab.experiment.fewshot_run import demo_stage

    fs_lines, fs_figs = demo_stage(out_dir, iterations=30 if quick else 150)
    lines += [""] + fs_lines
    figures += fs_figs
    from shiftlab.pinn.run import demo_stage as pinn_stage

    pinn_lines, pinn_figs = pinn_stage(out_dir)
    lines += [""] + pinn_lines
    figures += pinn_figs
    from shiftlab.experiment.ssl_run import demo_stage as ssl_stage
    from shiftlab.experiment.transfer_run import demo_stage as transfer_stage
    from shiftlab.experiment.tta_run import demo_stage as tta_stage

    for stage in (tta_stage, transfer_stage, ssl_stage):
        stage_lines, stage_metrics, stage_figs = stage(out_dir)
        lines += [""] + stage_lines
        figures += stage_figs
        accs.update(stage_metrics)
    seconds = time.perf_counter() - t0
    lines += ["", f"Total time: {seconds:.1f} s"]
    return DemoResult("\n".join(lines), figures, seconds, accs)


UDA_EPOCHS = 10
UDA_METHODS = ("source_only", "dann", "adamatch")


def uda_recipe(method: str, quick: bool = False) -> dict:
    """The demo's adaptation recipe: ``digits`` -> unlabelled ``digits_m`` (see
    ``recipes/uda/digits_to_digits_m.yaml`` for the full-length version)."""
    return {
        "name": f"demo-uda-{method}",
        "description": "digits -> digits_m: labelled source digits, unlabelled photo-background target",
        "data": {"source": "digits", "target": "digits_m", "image_size": 28, "channels": 3,
                 "eval": [{"name": "digits_m", "split": "test"}]},
        "backbone": {"name": "lenet"},
        "method": {"name": method, "hparams": {"logit_interpolation": False} if method == "adamatch" else {}},
        "train": {"epochs": 2 if quick else UDA_EPOCHS, "batch_size": 32, "lr": 1e-3},
        "seeds": [0],
    }


def _uda_stage(out_dir: Path, quick: bool, progress: bool) -> tuple[list[str], dict[str, float], list[Path]]:
    t0 = time.perf_counter()
    accs: dict[str, float] = {}
    figs: list[Path] = []
    for method in UDA_METHODS:
        recipe, ov = load_recipe(uda_recipe(method, quick))
        exp = Experiment(recipe, ov, RunOptions(runs_dir=out_dir / "runs", overwrite=True, progress=progress))
        accs[f"uda/{method}/digits_m/test"] = exp.run_seed(0)["metrics"]["digits_m/test/acc"]
        for tag in ("before", "after"):
            png = exp.run_dir(0) / f"embedding_{tag}.png"
            if method == "adamatch" and png.is_file():
                figs.append(png)
    lines = [
        "### Domain-adaptation stage: digits -> digits_m (target labels never used)",
        "",
        "| method | digits_m test accuracy (%) |",
        "|---|---|",
        *(f"| {k.split('/')[1]} | {100 * v:.2f} |" for k, v in accs.items()),
        "",
        f"Time: {time.perf_counter() - t0:.1f} s",
    ]
    return lines, accs, figs


def _figures(out_dir: Path, accs: dict[str, float], seed: int) -> list[Path]:
    from shiftlab import plots
    from shiftlab.data.shifts import apply_shift
    from shiftlab.data.sources import load_dataset
    from shiftlab.data.transforms import fit_channels

    figs = [plots.bar_with_ci(
        labels=list(accs), means=[100 * v for v in accs.values()], cis=[0.0] * len(accs),
        path=out_dir / "demo_accuracy.png", ylabel="accuracy (%)", title="ERM on digits: in-domain vs shifted",
    )]
    clean = fit_channels(load_dataset("digits", "test").float_x(slice(0, 6)), 3)
    rows = [clean, load_dataset("digits_m", "test").float_x(slice(0, 6))]
    titles = ["digits", "digits_m"]
    gen = torch.Generator().manual_seed(seed)
    for name, sev in DEMO_SHIFTS:
        rows.append(apply_shift(name, clean, sev, gen))
        titles.append(f"{name}@{sev}")
    grid = torch.cat(rows)
    figs.append(plots.image_grid(grid, [t if i % 6 == 0 else "" for i, t in enumerate(
        [t for t in titles for _ in range(6)])], out_dir / "demo_examples.png", ncols=6))
    return figs
