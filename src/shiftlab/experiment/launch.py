"""Sweeps: the product of grid values × seeds, dispatched run by run.

The unit of scale-out is the run; results land in the usual run folders, so
``shiftlab report`` does not care where they ran. The ``local`` launcher uses a process
pool (``workers=1`` runs in this process).
"""

from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftlab.config import apply_overrides, load_recipe, parse_override
from shiftlab.errors import RecipeError, ShiftlabError
from shiftlab.experiment.dispatch import read_raw, recipe_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One run: a recipe file, its overrides and a seed."""

    recipe: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int


def expand_grid(
    recipe: str | os.PathLike[str], grid: list[str], fixed: list[str], seeds: list[int] | None
) -> list[Job]:
    """``--grid method=a,b --grid train.lr=0.1,0.01`` × seeds -> jobs (validated up front)."""
    axes: list[list[tuple[str, Any]]] = []
    for g in grid:
        key, raw = parse_override(g)
        values = raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list) else [raw]
        axes.append([parse_override(f"{g.split('=', 1)[0]}={v}") for v in values])
    fixed_ov = [parse_override(f) for f in fixed]
    jobs: list[Job] = []
    for combo in itertools.product(*axes) if axes else [()]:
        ov = dict(fixed_ov + list(combo))
        raw = read_raw(recipe)
        if recipe_kind(raw) == "train":
            rec, _ = load_recipe(recipe, ov)  # fail before anything runs
            default_seeds = rec.seeds
        else:
            default_seeds = apply_overrides(raw, ov).get("seeds", [0])
        for seed in seeds if seeds is not None else default_seeds:
            jobs.append(Job(str(recipe), tuple(sorted(ov.items())), seed))
    if not jobs:
        raise RecipeError("The sweep is empty: give --grid values and/or --seeds.")
    return jobs


def _run_job(job: Job, runs_dir: str, data_dir: str | None, device: str | None, resume: bool) -> dict[str, Any]:
    from shiftlab.experiment.dispatch import run_recipe
    from shiftlab.experiment.run import RunOptions

    opts = RunOptions(runs_dir=Path(runs_dir), data_dir=data_dir, device=device, resume=resume, progress=False)
    return run_recipe(job.recipe, dict(job.overrides), opts, [job.seed])[0]


def launch(
    jobs: list[Job],
    *,
    launcher: str = "local",
    workers: int = 1,
    runs_dir: str | os.PathLike[str] = "runs",
    data_dir: str | None = None,
    device: str | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run ``jobs``; returns their ``metrics.json`` contents in job order."""
    if launcher != "local":
        raise ShiftlabError(f"Unknown launcher {launcher!r}; available: local.")
    args = (str(runs_dir), data_dir, device, resume)
    if workers <= 1:
        return [_run_job(j, *args) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_job, j, *args) for j in jobs]
        return [f.result() for f in futures]
