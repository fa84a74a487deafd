"""Dispatch a recipe to the runner of its ``kind``.

Every recipe kind writes the same run-folder format, so ``shiftlab report`` and the sweep
launchers treat them alike:

* ``train`` (default): supervised and domain-adaptation training (:mod:`shiftlab.experiment.run`);
* ``fewshot``: episodic meta-training and few-shot evaluation;
* ``pinn``: physics-informed ODE solvers;
* ``tta``: test-time adaptation of one source model under many shifts (:mod:`shiftlab.experiment.tta_run`);
* ``ssl``: self-supervised pre-training for transfer, the five settings A-E (no / supervised /
  self-supervised pre-training x full fine-tuning / linear probe; :mod:`shiftlab.experiment.ssl_run`);
* ``transfer``: fine-tuning a source model on subsets of a shifted target chosen by data-selection
  strategies (:mod:`shiftlab.experiment.transfer_run`);
* ``tpt``: CLIP test-time prompt tuning (``recipes/tta/imagenet_tpt.yaml``): the recipe is
  validated and documented, but ``shiftlab run`` does not execute it yet; the error says how
  to run it from Python.
"""

from __future__ import annotations

import os
from typing import Any

from shiftlab.config import read_recipe_mapping as read_raw
from shiftlab.errors import RecipeError
from shiftlab.experiment.distributed import Distributed
from shiftlab.experiment.run import Experiment, RunOptions

KINDS = ("train", "fewshot", "pinn", "tta", "tpt", "transfer", "ssl")


def recipe_kind(raw: dict[str, Any]) -> str:
    kind = raw.get("kind", "train")
    if kind not in KINDS:
        raise RecipeError(f"Unknown recipe kind {kind!r}; use one of: {', '.join(KINDS)}.")
    return kind


def run_recipe(
    recipe: str | os.PathLike[str] | dict[str, Any],
    overrides: dict[str, Any],
    options: RunOptions,
    seeds: list[int] | None = None,
    dist: Distributed | None = None,
) -> list[dict[str, Any]]:
    """Run ``recipe`` (a file or dict) with ``overrides`` for ``seeds``; returns each ``metrics.json``.

    ``dist``: this process's rank in a data-parallel run (``train`` recipes only; see
    :mod:`shiftlab.experiment.distributed`).
    """
    raw = read_raw(recipe)
    kind = recipe_kind(raw)
    if dist is not None and kind != "train":
        raise RecipeError(f"--nproc / torchrun trains kind: train recipes; this one is kind: {kind} (run it "
                          "in one process, or spread its seeds with `shiftlab sweep`).")
    if kind == "train":
        from shiftlab.config import load_recipe

        rec, ov = load_recipe(raw if isinstance(recipe, dict) else recipe, overrides)
        return Experiment(rec, ov, options, dist=dist).run(seeds)
    if kind == "fewshot":
        from shiftlab.experiment.fewshot_run import run_fewshot

        return run_fewshot(raw, overrides, options, seeds)
    if kind == "tta":
        from shiftlab.experiment.tta_run import run_tta

        return run_tta(raw, overrides, options, seeds)
    if kind == "ssl":
        from shiftlab.experiment.ssl_run import run_ssl

        return run_ssl(raw, overrides, options, seeds)
    if kind == "transfer":
        from shiftlab.experiment.transfer_run import run_transfer

        return run_transfer(raw, overrides, options, seeds)
    if kind == "tpt":
        raise RecipeError(
            "kind: tpt recipes (CLIP test-time prompt tuning) are not run by `shiftlab run` yet. From "
            "Python: shiftlab.backbones.clip.load_clip_classifier(...) builds the CLIP classifier from the "
            "recipe's backbone fields, and create_method('tpt', backbone=..., num_classes=...) adapts it "
            "(see the recipe's header and src/shiftlab/methods/tta/tpt.py)."
        )
    from shiftlab.pinn.run import run_pinn

    return run_pinn(raw, overrides, options.runs_dir, seeds, options.resume)
