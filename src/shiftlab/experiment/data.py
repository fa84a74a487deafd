"""Build a run's datasets from a recipe: load, fit to one size, split, shift."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from shiftlab.config import Recipe
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData, to_float, to_uint8
from shiftlab.data.transforms import fit_dataset
from shiftlab.seeding import epoch_generator


@dataclass
class RunData:
    """Everything a run trains and evaluates on, as in-memory tensors of one size.

    Attributes:
        train: labelled source training set ``x: [N, C, S, S]`` uint8.
        val: held-out source validation set (``None`` unless ``data.val_fraction > 0``).
        target: unlabelled target training set (its labels are never given to a method).
        evals: evaluation sets keyed ``"<name>/<split>[+<shift>@<severity>]"``.
        num_classes: number of classes of the source.
        info: provenance of every set (files, variants, fitting), written into config.yaml.
    """

    train: TensorData
    val: TensorData | None
    target: TensorData | None
    evals: dict[str, TensorData]
    num_classes: int
    info: dict[str, dict] = field(default_factory=dict)


def build_run_data(
    recipe: Recipe, seed: int, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> RunData:
    """Load and prepare the recipe's datasets for ``seed`` (val split and shifts are seeded)."""
    d = recipe.data
    cache: dict[tuple[str, str], TensorData] = {}

    def get(name: str, split: str) -> TensorData:
        if (name, split) not in cache:
            raw = load_dataset(name, split, data_dir=data_dir, download=download)
            cache[(name, split)] = fit_dataset(raw, d.image_size, d.channels, d.fit)
        return cache[(name, split)]

    train = get(d.source, d.source_split)
    if d.limit_train:
        train = train.subset(slice(0, d.limit_train))
    val = None
    if d.val_fraction > 0:
        perm = torch.randperm(len(train), generator=epoch_generator(seed, -1, 7))
        n_val = max(1, int(round(len(train) * d.val_fraction)))
        val = train.subset(perm[:n_val], split=f"{d.source_split}-val")
        train = train.subset(perm[n_val:])
    target = None
    if d.target:
        target = get(d.target, d.target_split)
        if d.limit_train:
            target = target.subset(slice(0, d.limit_train))
    evals: dict[str, TensorData] = {}
    for i, ev in enumerate(d.eval):
        data = get(ev.name, ev.split)
        if ev.limit:
            data = data.subset(slice(0, ev.limit))
        if ev.shift:
            from shiftlab.data.shifts import apply_shift

            gen = epoch_generator(seed, -2, 100 + i)
            shifted = torch.cat(
                [
                    to_uint8(apply_shift(ev.shift, to_float(data.x[s : s + 1000]), ev.severity, gen))
                    for s in range(0, len(data), 1000)
                ]
            )
            data = data.with_x(shifted, shift={"name": ev.shift, "severity": ev.severity})
        evals[ev.key] = data
    info = {key: dict(v.info) for key, v in {"source": train, **({"target": target} if target else {}), **evals}.items()}
    return RunData(train=train, val=val, target=target, evals=evals, num_classes=train.num_classes, info=info)
