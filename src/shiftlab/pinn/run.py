"""Run PINN recipes into the standard run folders; the ``shiftlab demo`` SIR stage.

``run_pinn(recipe, overrides, runs_dir, seeds, resume)`` writes, per seed,
``runs/<recipe name>/<variant>/seed-<k>/`` with the files every shiftlab run has:

* ``config.yaml``: the resolved recipe, seed, overrides, variant, versions;
* ``results.jsonl``: one line per log point, ``{"epoch", "step", "elapsed_s", "phase",
  "stage", "metrics": {"ln_loss", "ln_loss_val"}}`` (``stage`` is ``train``, then
  ``finetune``/``scratch`` for a transfer);
* ``metrics.json``: ``{"recipe", "variant", "overrides", "seed", "method", "selection",
  "metrics", "seconds"}`` with ``metrics`` holding ``ln_loss``, ``max_abs_error`` (max over
  the evaluation grid of problems), ``mean_max_abs_error``, ``max_rel_l2`` and, with a
  ``transfer`` section, ``transfer/...`` numbers (error without retraining, after
  fine-tuning, from scratch; epochs and seconds for fine-tuning to reach the from-scratch
  final loss, and their ratios to the from-scratch epochs and seconds);
* ``solver.safetensors`` + ``solver.json`` (the trained network and its spec), and for a
  transfer ``solver_finetuned.*``;
* PNGs: ``trajectories.png``, ``loss.png``, ``heatmaps.png`` (bundles),
  ``transfer_loss.png`` and ``transfer_trajectories.png``.

PINN runs take seconds to minutes, so ``resume=True`` keeps finished seeds and reruns an
unfinished seed from the start (training is deterministic on CPU for a given seed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftlab.config import overrides_id, variant_label
from shiftlab.errors import ShiftlabError
from shiftlab.experiment.lock import run_lock
from shiftlab.io import append_jsonl, atomic_write_json, atomic_write_yaml, read_jsonl
from shiftlab.pinn.box import Box
from shiftlab.pinn.nets import NetConfig
from shiftlab.pinn.plots import loss_heatmaps, plot_loss_curves, plot_trajectories
from shiftlab.pinn.recipe import PinnRecipe, load_pinn_recipe
from shiftlab.pinn.reference import reference_solution, trajectory_errors
from shiftlab.pinn.solver import BundleSolver, History, Solver, TrainConfig

log = logging.getLogger(__name__)

__all__ = ["PinnRunExists", "demo_stage", "evaluate_checkpoint", "evaluate_solver", "run_pinn"]

METHOD = "pinn"
SELECTION = "fixed schedule: the network after the last training step"


class PinnRunExists(ShiftlabError):
    """The run folder already holds a finished run."""


def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ----------------------------------------------------------------------------- evaluation


def evaluate_solver(
    solver: Solver,
    box: Box | None = None,
    grid: int = 10,
    times: int = 201,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> dict[str, Any]:
    """Errors of a solver against ``solve_ivp`` on a grid of problems of ``box``.

    Args:
        solver: a trained solver.
        box: problems to evaluate (default: the solver's box); it may differ from the
            training box (perturbed problem, shifted bundle) as long as it has the same
            bundle dimensions.
        grid: problems per bundle dimension (edges included).
        times: even time grid over the box's time span.
        rtol: reference relative tolerance.
        atol: reference absolute tolerance.
        method: ``solve_ivp`` method.

    Returns:
        ``max_abs_error`` (max over problems), ``mean_max_abs_error``, ``max_rel_l2``,
        ``ln_loss`` (mean over problems of ln residual MSE), ``n_problems``, and the arrays
        ``t [T]``, ``u [P, k]``, ``pred``/``ref [P, T, n]``, ``per_problem_max_abs [P]``.
    """
    box = box or solver.box
    t = np.linspace(box.t_span[0], box.t_span[1], times)
    u = box.grid(grid, dtype=solver.dtype)
    z0, theta = box.expand(u)
    ref = reference_solution(box.system, t, z0.cpu().numpy(), theta.cpu().numpy(), rtol=rtol, atol=atol, method=method)
    pred = solver.predict(t, z0, theta).cpu().numpy()
    err = trajectory_errors(pred, ref)
    saved = solver.box
    try:
        solver.box = box
        ln = solver.ln_loss_per_problem(u.to(solver.device), n_t=times).cpu().numpy()
    finally:
        solver.box = saved
    return {
        "max_abs_error": float(err["max_abs"].max()),
        "mean_max_abs_error": float(err["max_abs"].mean()),
        "max_rel_l2": float(err["rel_l2"].max()),
        "ln_loss": float(np.mean(ln)),
        "n_problems": int(u.shape[0]),
        "t": t,
        "u": u.cpu().numpy(),
        "pred": pred,
        "ref": ref,
        "per_problem_max_abs": err["max_abs"],
    }


def _scalar_metrics(ev: dict[str, Any], prefix: str = "") -> dict[str, float]:
    keys = ("max_abs_error", "mean_max_abs_error", "max_rel_l2", "ln_loss")
    return {f"{prefix}{k}": float(ev[k]) for k in keys}


def _show_problems(ev: dict[str, Any], box: Box, limit: int = 6) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pick up to ``limit`` problems to draw: the worst, the box corners, the centre."""
    p = ev["pred"].shape[0]
    if p <= limit:
        idx = list(range(p))
    else:
        worst = int(np.argmax(ev["per_problem_max_abs"]))
        picks = [0, p - 1, p // 2, worst]
        idx = list(dict.fromkeys(picks))[:limit]
    titles = []
    for i in idx:
        coords = ", ".join(f"{d}={v:.3g}" for d, v in zip(box.dims, ev["u"][i], strict=True))
        titles.append(f"{coords}  max err {ev['per_problem_max_abs'][i]:.1e}" if coords else
                      f"max err {ev['per_problem_max_abs'][i]:.1e}")
    return ev["pred"][idx], ev["ref"][idx], titles


# ----------------------------------------------------------------------------- runs


def _make_solver(recipe: PinnRecipe, box: Box, seed: int) -> Solver:
    cls = BundleSolver if box.is_bundle else Solver
    return cls(
        box.system, box=box, net=recipe.net.config(), dtype=getattr(torch, recipe.dtype), seed=seed,
        device=recipe.device,
    )


def _versions() -> dict[str, str]:
    import scipy

    from shiftlab.experiment.run import versions

    return {**versions(), "scipy": str(scipy.__version__)}


class _ResultsWriter:
    """Appends history records to ``results.jsonl`` in the shared run-folder format."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step = 0

    def __call__(self, stage: str) -> Any:
        def cb(solver: Solver, rec: dict[str, Any]) -> None:
            append_jsonl(
                self.path,
                {
                    "epoch": rec["epoch"],
                    "step": self.step,
                    "elapsed_s": round(rec["elapsed_s"], 4),
                    "phase": rec["phase"],
                    "stage": stage,
                    "metrics": {"ln_loss": rec["ln_loss"], "ln_loss_val": rec["ln_loss_val"]},
                },
            )
            self.step += 1

        return cb


def run_pinn(
    recipe: str | os.PathLike[str] | dict[str, Any] | PinnRecipe,
    overrides: dict[str, Any] | list[str] | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
    seeds: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run a ``kind: pinn`` recipe for each seed; returns each run's ``metrics.json`` dict.

    Args:
        recipe: a YAML path, a parsed mapping, or a validated :class:`PinnRecipe`.
        overrides: ``--set`` overrides (``{"train.epochs": 100}`` or ``["train.epochs=100"]``);
            they name the variant folder.
        runs_dir: root of the run folders.
        seeds: seeds to run (default: the recipe's).
        resume: keep finished seeds (return their metrics) and rerun unfinished ones.
        overwrite: move an existing run folder aside (``<folder>.old-<time>``) and rerun.

    Raises:
        RecipeError: invalid recipe.
        PinnRunExists: a seed already finished and neither ``resume`` nor ``overwrite``.
        TrainingError: the loss diverged.
    """
    if isinstance(recipe, PinnRecipe):
        rec, ov = recipe, dict(overrides or {}) if isinstance(overrides, dict) else {}
    else:
        rec, ov = load_pinn_recipe(recipe, overrides)
    out_all = []
    for seed in seeds if seeds is not None else rec.seeds:
        out = Path(runs_dir) / rec.name / overrides_id(ov) / f"seed-{seed}"
        with run_lock(out):  # one writer per run folder
            metrics_path = out / "metrics.json"
            if out.exists() and any(out.iterdir()):
                if overwrite:
                    backup = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                    shutil.move(str(out), str(backup))
                    log.info("moved the earlier run %s aside to %s", out, backup)
                elif metrics_path.exists():
                    if resume:
                        log.info("%s is finished; keeping it (resume)", out)
                        out_all.append(json.loads(metrics_path.read_text(encoding="utf-8")))
                        continue
                    raise PinnRunExists(
                        f"The run {out} already finished (metrics.json exists). Pass --resume to keep it "
                        "and skip it, or --overwrite to run it again (the old folder is kept as a backup)."
                    )
                else:
                    log.info("%s is unfinished; PINN runs restart from the beginning", out)
            out.mkdir(parents=True, exist_ok=True)
            out_all.append(_run_seed(rec, ov, seed, out))
    return out_all


def _run_seed(rec: PinnRecipe, ov: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    system = rec.resolved_system()
    box = rec.box(system)
    target = rec.target_box(box)
    train = rec.train.config()
    solver = _make_solver(rec, box, seed)
    config = rec.model_dump(mode="json")
    config.update(
        seed=seed, overrides=ov, variant=variant_label(ov), selection_rule=SELECTION,
        resolved={
            "box": box.to_dict(), "target_box": target.to_dict() if target else None,
            "n_weights": solver.n_weights, "torch_threads": torch.get_num_threads(), "versions": _versions(),
        },
    )
    atomic_write_yaml(out / "config.yaml", config)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    writer = _ResultsWriter(results)

    hist = solver.fit(train, callback=writer("train"))
    solver.save(out / "solver")
    ev = _evaluate(rec, solver, box)
    metrics: dict[str, Any] = {
        "ln_loss": _json_float(hist.final_ln_loss),
        **_scalar_metrics(ev, "eval_"),
        "max_abs_error": ev["max_abs_error"],
        "train_seconds": round(hist.seconds, 3),
        "train_steps": hist.epochs,
        "n_problems": ev["n_problems"],
        "n_weights": solver.n_weights,
    }
    metrics.pop("eval_max_abs_error")
    pred, ref, titles = _show_problems(ev, box)
    plot_trajectories(ev["t"], pred, ref, system.state, out / "trajectories.png", titles, f"{rec.name}: PINN vs solve_ivp")
    curves = {"train": hist.records}
    if box.is_bundle and rec.eval.heatmaps and box.k >= 2:
        _, hm = loss_heatmaps(solver, out / "heatmaps.png", resolution=rec.eval.heatmap_resolution)
        for key, d in hm.items():
            metrics[f"heatmap/{key}/inside_ln_loss"] = _json_float(d["inside_mean"])
            metrics[f"heatmap/{key}/outside_ln_loss"] = _json_float(d["outside_mean"])

    if target is not None and rec.transfer is not None:
        tmetrics, tcurves = _transfer(rec, solver, target, seed, out, writer)
        metrics.update(tmetrics)
        plot_loss_curves(tcurves, out / "transfer_loss.png", title=f"{rec.name}: fine-tuning vs from scratch")
    plot_loss_curves(curves, out / "loss.png", title=f"{rec.name}: ln(residual MSE)")

    result = {
        "recipe": rec.name,
        "variant": variant_label(ov),
        "overrides": ov,
        "seed": seed,
        "method": METHOD,
        "selection": SELECTION,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    atomic_write_json(out / "metrics.json", result)
    log.info("PINN run %s seed %d: max abs error %.2e, ln loss %.2f", rec.name, seed, ev["max_abs_error"], hist.final_ln_loss)
    return result


def _evaluate(rec: PinnRecipe, solver: Solver, box: Box) -> dict[str, Any]:
    e = rec.eval
    return evaluate_solver(solver, box, e.grid, e.times, e.rtol, e.atol, e.method)


def _transfer(
    rec: PinnRecipe, source: Solver, target: Box, seed: int, out: Path, writer: _ResultsWriter
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    assert rec.transfer is not None
    tcfg = (rec.transfer.train or rec.train).config()
    zero = _evaluate(rec, source, target)
    m: dict[str, Any] = {f"transfer/zero_shot_{k}": v for k, v in _scalar_metrics(zero).items()}
    tuned = source.copy()
    ft = tuned.fine_tune(target, train=tcfg, callback=writer("finetune"))
    tuned.save(out / "solver_finetuned")
    ev_ft = _evaluate(rec, tuned, target)
    m.update({f"transfer/finetuned_{k}": v for k, v in _scalar_metrics(ev_ft).items()})
    m["transfer/finetune_epochs"] = ft.epochs
    m["transfer/finetune_seconds"] = round(ft.seconds, 3)
    curves = {"fine-tuned": ft.records}
    if rec.transfer.compare_scratch:
        scfg = rec.transfer.scratch_train.config() if rec.transfer.scratch_train is not None else tcfg
        scratch = _make_solver(rec, target, seed)
        sc = scratch.fit(scfg, callback=writer("scratch"))
        ev_sc = _evaluate(rec, scratch, target)
        m.update({f"transfer/scratch_{k}": v for k, v in _scalar_metrics(ev_sc).items()})
        m.update(_compare_histories(ft, sc))
        curves["from scratch"] = sc.records
    pred, ref, titles = _show_problems(ev_ft, target)
    plot_trajectories(ev_ft["t"], pred, ref, target.system.state, out / "transfer_trajectories.png", titles,
                      f"{rec.name}: fine-tuned on the target vs solve_ivp")
    return m, curves


def _compare_histories(ft: History, sc: History) -> dict[str, Any]:
    """Epochs and seconds for fine-tuning to reach the from-scratch final loss."""
    goal = sc.final_ln_loss
    ep = ft.epochs_to(goal)
    secs = ft.seconds_to(goal)
    return {
        "transfer/scratch_epochs": sc.epochs,
        "transfer/scratch_seconds": round(sc.seconds, 3),
        "transfer/scratch_final_ln_loss": _json_float(goal),
        "transfer/finetune_final_ln_loss": _json_float(ft.final_ln_loss),
        "transfer/finetune_epochs_to_scratch_loss": ep,
        "transfer/finetune_seconds_to_scratch_loss": None if secs is None else round(secs, 3),
        "transfer/epoch_ratio": None if ep is None or sc.epochs == 0 else ep / sc.epochs,
        "transfer/seconds_ratio": None if secs is None or sc.seconds <= 0 else secs / sc.seconds,
    }


# ----------------------------------------------------------------------------- CLI helpers


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["S=0.75", "I=0.1:0.3"]`` -> ``{"S": 0.75, "I": [0.1, 0.3]}`` (CLI values and ranges).

    Raises:
        ShiftlabError: an item without ``=`` or with a value that is not a number or ``lo:hi``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        for part in (p for p in item.split(",") if p.strip()):
            name, eq, value = part.partition("=")
            try:
                if not eq or not name.strip():
                    raise ValueError
                lo, colon, hi = value.partition(":")
                out[name.strip()] = [float(lo), float(hi)] if colon else float(value)
            except ValueError:
                raise ShiftlabError(
                    f"{what} {part!r}: expected NAME=VALUE or NAME=LOW:HIGH, e.g. I=0.25 or beta=0.5:0.9."
                ) from None
    return out


def solve_checkpoint(
    path: str | os.PathLike[str],
    ic: dict[str, float] | None = None,
    params: dict[str, float] | None = None,
    times: list[float] | None = None,
) -> dict[str, Any]:
    """Answer one query with a saved solver, without retraining (``shiftlab pinn solve``).

    Args:
        path: the saved solver (``solver.json`` or its stem).
        ic: initial values by state name; unspecified ones are the box centre's (a
            ``remainder`` component such as ``S = 1 - I - R`` follows the others).
        params: parameter values by name (default: the box centre's).
        times: query times (default: 11 points over the box's time span).

    Returns:
        ``{"t": [T], "state": names, "z": [T][n_state], "z0", "theta", "inside_box": bool,
        "box": description}``; ``inside_box`` is False when the query lies outside the
        ranges the solver was trained on (the answer is then an extrapolation).

    Raises:
        ShiftlabError: unknown names or values a box cannot take (e.g. a negative remainder).
    """
    solver = Solver.load(path)
    box = solver.box
    try:
        point = box.replace(None, {k: float(v) for k, v in (ic or {}).items()},
                            {k: float(v) for k, v in (params or {}).items()})
        # collapse the remaining bundle ranges to the box centre
        z0c, thc = box.defaults(torch.float64)
        centre = {n: float(z0c[i]) for i, n in enumerate(box.system.state) if isinstance(point.ic.get(n), tuple)}
        centre_p = {n: float(thc[i]) for i, n in enumerate(box.system.params) if isinstance(point.params.get(n), tuple)}
        point = point.replace(None, centre, centre_p)
    except ValueError as exc:
        raise ShiftlabError(f"pinn solve: {exc}") from None
    z0, theta = point.defaults(torch.float64)
    t0, t1 = box.t_span
    t = torch.tensor(times if times else np.linspace(t0, t1, 11).tolist(), dtype=torch.float64)
    z = solver.predict(t, z0, theta)
    inside = bool(box.contains(box.coords(z0.unsqueeze(0), theta.unsqueeze(0)))[0]) and bool(
        ((t >= t0) & (t <= t1)).all()
    )
    return {
        "t": t.tolist(), "state": list(box.system.state), "z": z.tolist(),
        "z0": dict(zip(box.system.state, z0.tolist(), strict=True)),
        "theta": dict(zip(box.system.params, theta.tolist(), strict=True)),
        "inside_box": inside, "box": box.describe(),
    }


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    ic: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    t_span: list[float] | None = None,
    grid: int = 5,
    times: int = 201,
    png: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Load a saved solver and evaluate it on its box or on changed values/ranges.

    This is what ``shiftlab pinn eval`` calls.

    Args:
        path: the saved solver (``solver.json`` or its stem).
        ic: initial values/ranges to change.
        params: parameter values/ranges to change.
        t_span: a different time span.
        grid: problems per bundle dimension.
        times: time points.
        png: if given, a trajectory plot is written there.

    Returns:
        The scalar metrics of :func:`evaluate_solver` plus ``box`` (a description).
    """
    solver = Solver.load(path)
    box = solver.box.replace(t_span, ic, params) if (ic or params or t_span) else solver.box
    ev = evaluate_solver(solver, box, grid, times)
    if png is not None:
        pred, ref, titles = _show_problems(ev, box)
        plot_trajectories(ev["t"], pred, ref, box.system.state, png, titles, "PINN vs solve_ivp")
    return {**_scalar_metrics(ev), "n_problems": ev["n_problems"], "box": box.describe()}


def demo_stage(out_dir: str | os.PathLike[str]) -> tuple[list[str], list[Path]]:
    """``shiftlab demo``'s PINN stage: the source document's SIR problem in a few seconds.

    Trains a 2 x 16 tanh network (100 Adam epochs, then Levenberg-Marquardt until
    ln(residual MSE) <= -22 or 60 steps) on S0=0.8, I0=0.2, R0=0, beta=0.8, gamma=0.2,
    t in [0, 20], compares it with ``solve_ivp`` and draws it. The result does not depend
    on timing (no time limit), only the duration does.

    Returns:
        Markdown lines and the PNG paths written into ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    solver = Solver(
        "sir", (0.0, 20.0), ic={"S": 0.8, "I": 0.2, "R": 0.0}, params={"beta": 0.8, "gamma": 0.2},
        net=NetConfig(width=16, depth=2, activation="tanh"), seed=0,
    )
    hist = solver.fit(TrainConfig(points=2000, epochs=100, refine="lm", refine_steps=60, log_every=20,
                                  target_ln_loss=-22.0))
    ev = evaluate_solver(solver, grid=1, times=201)
    pngs = [
        plot_trajectories(ev["t"], ev["pred"][0], ev["ref"][0], solver.system.state, out / "pinn_sir.png",
                          [f"max abs error {ev['max_abs_error']:.1e}"], "SIR by a PINN (solid) vs solve_ivp (dashed)"),
        plot_loss_curves({"SIR": hist.records}, out / "pinn_sir_loss.png", title="ln(residual MSE)"),
    ]
    lines = [
        "### PINN stage: the SIR model (source document, differential-equation half)",
        "",
        "S0=0.8, I0=0.2, R0=0, beta=0.8, gamma=0.2, t in [0, 20]; 2 x 16 tanh network, 2,000 points, "
        "100 Adam epochs then Levenberg-Marquardt.",
        "",
        "| ln(residual MSE) | max abs error vs solve_ivp | training time (s) | steps |",
        "|---|---|---|---|",
        f"| {hist.final_ln_loss:.2f} | {ev['max_abs_error']:.2e} | {hist.seconds:.1f} | {hist.epochs} |",
    ]
    return lines, pngs


def read_results(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``results.jsonl`` records of a PINN run folder."""
    return read_jsonl(Path(run_dir) / "results.jsonl")
