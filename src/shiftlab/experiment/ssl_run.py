"""Self-supervised pre-training for transfer (``kind: ssl``): the five transfer settings.

One recipe compares, per seed, five ways to get a classifier for a **target** task that
has few labels, given a larger **source** set:

====  ==========================================  ==========================================
      pre-training on the source                  on the target's labelled images
====  ==========================================  ==========================================
A     none (random initialisation)                train the full model
B     supervised (the source labels)              fine-tune the full model (new head)
C     self-supervised (source images only)        fine-tune the full model (new head)
D     supervised (the source labels)              frozen backbone, linear probe
E     self-supervised (source images only)        frozen backbone, linear probe
====  ==========================================  ==========================================

The source labels are used only by B and D. Example (``recipes/ssl/mnist_to_usps.yaml``,
shortened)::

    kind: ssl
    name: ssl-mnist_to_usps
    data: {image_size: 28, channels: 1, fit: pad}
    source: {dataset: mnist, split: train}
    target: {dataset: usps, split: train, labels_per_class: 10, eval_split: test, fit: resize}
    backbone: {name: dann_cnn, args: {norm: true}}
    ssl:
      method: byol
      hparams: {projection_hidden: 1024, projection_dim: 128, predictor_hidden: 1024}
      epochs: 20
      batch_size: 256
      optimizer: {name: adam, lr: 0.001, weight_decay: 1.0e-6}
      augment: byol_digits
    supervised: {epochs: 2, batch_size: 64, lr: 0.001}
    finetune: {epochs: 100, batch_size: 32, lr: 0.001}
    probe: {steps: 500, lr: 0.01, weight_decay: 0.0001}
    monitor: {dataset: mnist, split: test, bank_per_class: 10, query: 2000}
    seeds: [0, 1, 2]

**The target split.** ``target.labels_per_class`` images of each class are drawn from
``target.split`` with a generator seeded by the run's seed (per class: a seeded
permutation of that class's images, the first ``k`` kept; ``null``: every image of the
split is labelled). Evaluation is on ``target.eval_split``; when that is the same split
of the same dataset (the MNIST-M recipe: the real MNIST-M test set is the only real
MNIST-M data), the labelled images are removed from it and the accuracy is over the
**rest** of the split. The drawn indices are written to ``metrics.json``
(``target_split.labelled_indices``).

**Pre-training.** Self-supervised (C, E): the recipe's ``ssl.method`` (``byol``,
``simsiam``, ``simclr``: ``shiftlab list methods``) on two views of every source batch,
made by one batched augmentation of the tensors (``ssl.augment``: ``byol_small`` or
``byol_digits``, :mod:`shiftlab.data.augment`), with data order and views drawn from
generators seeded by ``(seed, epoch)``. Supervised (B, D): ERM on the source labels
(:func:`shiftlab.experiment.tta_run._train_erm`). Fine-tuning (A, B, C) is the same ERM
on the labelled target images (no augmentation, ``finetune`` schedule); the linear probe
(D, E) is :func:`shiftlab.methods.ssl.monitor.linear_probe` on the frozen features.

**Monitors.** With a ``monitor`` set, the weighted k-NN accuracy (k = 20, T = 0.07;
:mod:`shiftlab.methods.ssl.monitor`) of the backbone's features is measured before
pre-training (the random initialisation) and every ``monitor.every`` epochs: a labelled
bank of ``bank_per_class`` images per class and ``query`` other images, both drawn once
from ``monitor.split`` (seed 0, the same for every seed of the recipe). At the end a
linear probe is trained on the bank and scored on the queries. The supervised
pre-trained model is scored by the same k-NN for comparison.

A run writes ``runs/<recipe>/<variant>/seed-<k>/``:

* ``config.yaml``: the resolved recipe (method hyper-parameters, sizes, versions);
* ``ssl_model.safetensors`` + ``.json`` and ``supervised_model.safetensors`` + ``.json``:
  the pre-trained backbones of this seed, with the spec they were trained for; ``--resume``
  reuses them. While self-supervised pre-training runs, ``ssl_checkpoint.*`` is written
  every ``ssl.checkpoint_every`` epochs (method, optimizer and RNG state), so a killed
  pre-training continues from its last checkpoint and ends as an uninterrupted one (CPU);
* ``results.jsonl``: one row per k-NN evaluation during pre-training (``"stage": "ssl"``,
  ``epoch``, ``metrics: {"ssl/knn_acc", "train/loss"}``) and one row per transfer setting
  (``"stage": "transfer"``, ``setting``, ``metrics: {"<S>/acc"}``);
* ``metrics.json``: ``metrics`` holds ``A/acc`` ... ``E/acc`` (target accuracy per
  setting), ``ssl/init_knn_acc`` (random initialisation), ``ssl/knn_acc`` (after
  pre-training), ``ssl/probe_acc``, ``supervised/knn_acc``, ``ssl/images_per_s`` (source
  images per second of pre-training, augmentation and update included, monitors
  excluded), ``ssl/seconds``, ``ssl/final_loss``, ``target/labels_per_class`` and
  ``target/labelled`` (the label budget); ``knn_curve`` lists ``{epoch, step, acc}``,
  ``settings`` describes each setting, ``target_split`` the labelled draw;
* ``settings.png`` (bars of A-E) and ``knn.png`` (the k-NN curve).

``shiftlab report`` aggregates ``metrics`` over seeds (mean ± 95% CI).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from shiftlab.backbones import create_backbone
from shiftlab.backbones.base import Backbone
from shiftlab.config import (
    BackboneCfg,
    RunName,
    StrictModel,
    apply_overrides,
    normalise_overrides,
    validate_recipe,
    variant_label,
)
from shiftlab.data import augment
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData
from shiftlab.data.transforms import fit_dataset
from shiftlab.errors import RecipeError, ShiftlabError, TrainingError
from shiftlab.experiment.run import (
    RunInterrupted,
    RunOptions,
    _progress,
    accuracy,
    open_run_folder,
    run_dir_for,
    run_seeds_locked,
    versions,
)
from shiftlab.experiment.tta_run import DataFit, OptimizerCfg, SourceTrain, _check_same, _train_erm
from shiftlab.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    load_state,
    read_jsonl,
    save_state,
)
from shiftlab.methods import METHODS, create_method, make_hparams
from shiftlab.methods.ssl.common import SslMethod
from shiftlab.methods.ssl.monitor import extract_features, knn_accuracy, linear_probe
from shiftlab.seeding import epoch_generator, resolve_device, seed_everything

log = logging.getLogger(__name__)

__all__ = [
    "SETTINGS",
    "SslRecipe",
    "demo_recipe",
    "demo_stage",
    "draw_labelled",
    "load_ssl_recipe",
    "run_ssl",
]

SettingName = Literal["A", "B", "C", "D", "E"]

#: What each setting does: (pre-training, adaptation on the target's labels).
SETTINGS: dict[str, tuple[str, str]] = {
    "A": ("none", "full training"),
    "B": ("supervised", "full fine-tuning"),
    "C": ("self-supervised", "full fine-tuning"),
    "D": ("supervised", "frozen backbone, linear probe"),
    "E": ("self-supervised", "frozen backbone, linear probe"),
}

AUGMENTS = {"byol_small": augment.byol_small, "byol_digits": augment.byol_digits}

SELECTION = "fixed schedules: the model after the last epoch / probe step (no target labels beyond the budget)"


# ----------------------------------------------------------------------------- recipe


class SslSource(StrictModel):
    """The source set: images for self-supervised pre-training (labels used by B and D only).

    Attributes:
        dataset: a dataset name, ``folder:PATH`` or ``npz:PATH``.
        split: its split.
        fit: ``pad`` or ``resize`` to ``data.image_size`` (default: ``data.fit``).
        limit: use the first N images only (quick runs).
    """

    dataset: str
    split: str = "train"
    fit: Literal["pad", "resize"] | None = None
    limit: int | None = Field(default=None, ge=1)


class SslTarget(StrictModel):
    """The target task (see the module docstring, "The target split").

    Attributes:
        dataset: a dataset name, ``folder:PATH`` or ``npz:PATH``.
        split: the split the labelled images are drawn from.
        labels_per_class: labelled images per class (``null``: all of ``split``).
        eval_split: the split scored; equal to ``split``: the rest of that split.
        fit: ``pad`` or ``resize`` (default: ``data.fit``).
        eval_limit: score the first N evaluation images only (quick runs).
    """

    dataset: str
    split: str = "train"
    labels_per_class: int | None = Field(default=10, ge=1)
    eval_split: str = "test"
    fit: Literal["pad", "resize"] | None = None
    eval_limit: int | None = Field(default=None, ge=1)


class SslTrain(StrictModel):
    """Self-supervised pre-training (settings C and E).

    Attributes:
        method: a registered SSL method (``byol``, ``simsiam``, ``simclr``).
        hparams: its hyper-parameters (defaults: the paper's; ``shiftlab list methods``).
        epochs: passes over the source images.
        batch_size: images per step (two views each).
        optimizer: the optimizer (Adam by default; the papers use LARS/SGD at batch 4096).
        augment: the two-view augmentation (``byol_small`` or ``byol_digits``).
        max_steps_per_epoch: cap on steps per epoch (quick runs).
        checkpoint_every: write ``ssl_checkpoint`` every N epochs (resume point).
    """

    method: str = "byol"
    hparams: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=256, ge=2)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    augment: Literal["byol_small", "byol_digits"] = "byol_small"
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    checkpoint_every: int = Field(default=1, ge=1)


class Finetune(StrictModel):
    """Training on the target's labelled images (settings A, B, C): cross-entropy, no
    augmentation; ``batch_size`` is capped at the number of labelled images."""

    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0)


class Probe(StrictModel):
    """The linear probe of the frozen settings D and E (and of the monitor): full-batch Adam
    on standardised features (:func:`~shiftlab.methods.ssl.monitor.linear_probe`)."""

    steps: int = Field(default=500, ge=1)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)


class Monitor(StrictModel):
    """The k-NN / linear-probe monitor of the representation (labels never trained on).

    Attributes:
        dataset: a labelled dataset (e.g. the source's test split).
        split: its split.
        fit: ``pad`` or ``resize`` (default: ``data.fit``).
        bank_per_class: labelled bank images per class.
        query: images classified (drawn from the rest of the split).
        k: neighbours (DINO: 20).
        temperature: weight temperature (DINO: 0.07).
        every: evaluate every N pre-training epochs (and after the last).
    """

    dataset: str
    split: str = "test"
    fit: Literal["pad", "resize"] | None = None
    bank_per_class: int = Field(default=10, ge=1)
    query: int = Field(default=1000, ge=1)
    k: int = Field(default=20, ge=1)
    temperature: float = Field(default=0.07, gt=0)
    every: int = Field(default=1, ge=1)


class SslRecipe(StrictModel):
    """A transfer experiment with self-supervised pre-training (``kind: ssl``); see the module docstring."""

    kind: Literal["ssl"] = "ssl"
    name: RunName
    description: str = ""
    data: DataFit = Field(default_factory=DataFit)
    source: SslSource
    target: SslTarget
    backbone: BackboneCfg = Field(default_factory=BackboneCfg)
    ssl: SslTrain = Field(default_factory=SslTrain)
    supervised: SourceTrain = Field(default_factory=SourceTrain)
    finetune: Finetune = Field(default_factory=Finetune)
    probe: Probe = Field(default_factory=Probe)
    monitor: Monitor | None = None
    settings: list[SettingName] = Field(default_factory=lambda: list(SETTINGS))
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "auto"

    @model_validator(mode="after")
    def _settings(self) -> SslRecipe:
        if not self.settings or len(set(self.settings)) != len(self.settings):
            raise ValueError("settings must list each of A, B, C, D, E at most once (at least one)")
        return self

    @property
    def needs_ssl(self) -> bool:
        return bool({"C", "E"} & set(self.settings))

    @property
    def needs_supervised(self) -> bool:
        return bool({"B", "D"} & set(self.settings))


def _ssl_method_names() -> list[str]:
    return [n for n in METHODS.names() if issubclass(METHODS.get(n), SslMethod)]


def load_ssl_recipe(
    raw: dict[str, Any], overrides: dict[str, Any] | Sequence[str] | None = None
) -> tuple[SslRecipe, dict[str, Any]]:
    """Validate a ``kind: ssl`` recipe mapping with ``--set`` overrides applied.

    Raises:
        RecipeError: unknown key or wrong type (naming its path and the allowed keys), a
            method that is not self-supervised, an unknown hyper-parameter.
    """
    ov = normalise_overrides(overrides)
    what = f"SSL recipe {raw.get('name', '<unnamed>')!r}"
    recipe = validate_recipe(SslRecipe, apply_overrides(raw, ov), what)
    name = recipe.ssl.method
    if name not in METHODS or not issubclass(METHODS.get(name), SslMethod):
        raise RecipeError(
            f"Invalid {what}: ssl.method: {name!r} is not a self-supervised method; use one of "
            f"{', '.join(_ssl_method_names())}."
        )
    try:
        make_hparams(name, recipe.ssl.hparams)
    except RecipeError as exc:
        raise RecipeError(f"Invalid {what}: ssl.{exc}") from None
    return recipe, ov


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SslData:
    """The run's sets, fitted to one size (uint8 ``[N, C, S, S]``).

    Attributes:
        source: source images (and labels, for B and D).
        target: the split the labelled images are drawn from.
        target_eval: the evaluation split (``None``: the rest of ``target``).
        monitor: the monitor's labelled split (``None``: no monitor).
    """

    source: TensorData
    target: TensorData
    target_eval: TensorData | None
    monitor: TensorData | None


def _load_data(recipe: SslRecipe, options: RunOptions) -> SslData:
    d = recipe.data
    cache: dict[tuple[str, str, str], TensorData] = {}

    def get(name: str, split: str, fit: str | None) -> TensorData:
        key = (name, split, fit or d.fit)
        if key not in cache:
            raw = load_dataset(name, split, data_dir=options.data_dir, download=options.download)
            cache[key] = fit_dataset(raw, d.image_size, d.channels, key[2])
        return cache[key]

    s, t = recipe.source, recipe.target
    source = get(s.dataset, s.split, s.fit)
    if s.limit:
        source = source.subset(slice(0, s.limit))
    target = get(t.dataset, t.split, t.fit)
    target_eval = None if t.eval_split == t.split else get(t.dataset, t.eval_split, t.fit)
    monitor = None
    if recipe.monitor is not None:
        m = recipe.monitor
        monitor = get(m.dataset, m.split, m.fit)
    return SslData(source, target, target_eval, monitor)


def draw_labelled(data: TensorData, per_class: int | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A seeded per-class draw of labelled images.

    For each class (in label order) a permutation of its images drawn from ``generator``;
    the first ``per_class`` are labelled (all of them for ``None``; a class with fewer
    images gives all it has).

    Args:
        data: the split to draw from.
        per_class: images per class.
        generator: the RNG of the permutations.

    Returns:
        ``(labelled indices, the other indices)``, each sorted int64.
    """
    picked = []
    for c in range(data.num_classes):
        idx = torch.nonzero(data.y == c).squeeze(1)
        if per_class is not None:
            idx = idx[torch.randperm(len(idx), generator=generator)[:per_class]]
            if 0 < len(idx) < per_class:
                log.warning("%s/%s: class %d has %d images, fewer than %d labels per class",
                            data.name, data.split, c, len(idx), per_class)
        picked.append(idx)
    labelled = torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[labelled] = False
    return labelled, torch.nonzero(rest).squeeze(1)


@dataclass(frozen=True)
class MonitorSets:
    """The monitor's bank and queries (drawn once, seed 0)."""

    bank: TensorData
    query: TensorData


def _monitor_sets(recipe: SslRecipe, data: SslData) -> MonitorSets | None:
    if recipe.monitor is None or data.monitor is None:
        return None
    m = recipe.monitor
    bank_idx, rest = draw_labelled(data.monitor, m.bank_per_class, epoch_generator(0, -5, 0))
    rest = rest[torch.randperm(len(rest), generator=epoch_generator(0, -5, 1))[: m.query]].sort().values
    if len(rest) == 0:
        raise RecipeError(f"monitor: {m.dataset}/{m.split} has no images left for queries after the bank.")
    return MonitorSets(data.monitor.subset(bank_idx, split=f"{m.split}-bank"),
                       data.monitor.subset(rest, split=f"{m.split}-query"))


def _knn(net: Backbone, mon: MonitorSets, recipe: SslRecipe, device: torch.device) -> float:
    assert recipe.monitor is not None
    fb = extract_features(net, mon.bank, device)
    fq = extract_features(net, mon.query, device)
    return knn_accuracy(fb, mon.bank.y, fq, mon.query.y, recipe.monitor.k, recipe.monitor.temperature,
                        max(mon.bank.num_classes, mon.query.num_classes))


# ----------------------------------------------------------------------------- models


def _backbone(recipe: SslRecipe, num_classes: int) -> Backbone:
    args: dict[str, Any] = {"in_chans": recipe.data.channels, "num_classes": num_classes,
                            "image_size": recipe.data.image_size}
    args.update(recipe.backbone.args)
    return create_backbone(recipe.backbone.name, **args)


def _spec(recipe: SslRecipe, part: str) -> dict[str, Any]:
    """What a cached pre-trained model depends on (a changed spec trains again)."""
    spec = {"data": recipe.data.model_dump(mode="json"), "source": recipe.source.model_dump(mode="json"),
            "backbone": recipe.backbone.model_dump(mode="json")}
    if part == "ssl":
        spec["ssl"] = recipe.ssl.model_dump(mode="json")
        spec["monitor"] = recipe.monitor.model_dump(mode="json") if recipe.monitor else None
    else:
        spec["supervised"] = recipe.supervised.model_dump(mode="json")
    return spec


@dataclass
class SslInfo:
    """How the self-supervised backbone came about (``origin``: ``trained`` or ``cached``)."""

    origin: str
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    final_loss: float = math.nan
    probe_acc: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _head_free_state(net: Backbone) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith("head.")}


def _pretrain_ssl(
    recipe: SslRecipe, data: SslData, mon: MonitorSets | None, seed: int, device: torch.device, out: Path,
    results: Path, options: RunOptions,
) -> tuple[Backbone, SslInfo]:
    """The self-supervised backbone of ``seed`` (cached in ``out/ssl_model``), head-less."""
    spec = _spec(recipe, "ssl")
    cache, ckpt = out / "ssl_model", out / "ssl_checkpoint"
    seed_everything(seed)
    net = _backbone(recipe, 0)
    if cache.with_suffix(".json").is_file():
        state = load_state(cache)
        if state.get("spec") == spec and state.get("seed") == seed:
            net.load_state_dict(state["backbone"])
            info = SslInfo("cached", list(state["curve"]), float(state["seconds"]), int(state["images"]),
                           float(state["final_loss"]), state.get("probe_acc"))
            return net.to(device), info
        log.info("the cached SSL model in %s is for another spec; training again", cache)
    s = recipe.ssl
    method = create_method(s.method, backbone=net, num_classes=data.target.num_classes, hparams=s.hparams,
                           optimizer=s.optimizer.factory())
    assert isinstance(method, SslMethod)
    method.to(device)
    steps = len(data.source) // s.batch_size
    if s.max_steps_per_epoch:
        steps = min(steps, s.max_steps_per_epoch)
    if steps == 0:
        raise ShiftlabError(f"The source set has {len(data.source)} images, fewer than one batch of "
                            f"{s.batch_size}; lower ssl.batch_size.")
    total = s.epochs * steps
    method.set_schedule(s.epochs, steps)
    views_of = AUGMENTS[s.augment](recipe.data.image_size)
    start, curve, seconds, images, last_loss = 0, [], 0.0, 0, math.nan
    if ckpt.with_suffix(".json").is_file():
        state = load_state(ckpt, device="cpu")
        if state.get("spec") == spec and state.get("seed") == seed:
            method.load_state_dict(state["model"])
            method.opt.load_state_dict(state["optim"]["opt"])
            torch.set_rng_state(state["rng"])
            method.to(device)
            start, curve = int(state["epoch"]), list(state["curve"])
            seconds, images, last_loss = float(state["seconds"]), int(state["images"]), float(state["loss"])
            log.info("%s seed %d: SSL pre-training resumes at epoch %d", recipe.name, seed, start)
    # the k-NN rows of results.jsonl after the restart point are written again
    rows = read_jsonl(results)
    atomic_write_text(results, "".join(json.dumps(r) + "\n" for r in rows
                                       if r.get("stage") != "ssl" or (start > 0 and r.get("epoch", 0) <= start)))
    if start == 0 and mon is not None:
        acc = _knn(net, mon, recipe, device)
        curve = [{"epoch": 0, "step": 0, "acc": acc}]
        append_jsonl(results, {"epoch": 0, "step": 0, "stage": "ssl", "metrics": {"ssl/knn_acc": acc}})
        log.info("%s seed %d: k-NN accuracy at initialisation %.4f", recipe.name, seed, acc)
    with _progress(options.progress) as bar:
        task = bar.add_task(f"{recipe.name} seed {seed}: {s.method}", total=total, completed=start * steps)
        for epoch in range(start, s.epochs):
            order = epoch_generator(seed, epoch, 0)
            views_gen = epoch_generator(seed, epoch, 2)
            sums: dict[str, float] = {}
            t0 = time.perf_counter()
            for i, batch in enumerate(data.source.batches(s.batch_size, shuffle=True, generator=order,
                                                          drop_last=True)):
                if i >= steps:
                    break
                method.set_progress((epoch * steps + i) / total)
                views = views_of.apply(batch.x.to(device), views_gen)
                losses = method.update(views)
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    raise TrainingError(
                        f"The {s.method} loss became {', '.join(f'{k}={v}' for k, v in bad.items())} at epoch "
                        f"{epoch + 1}, step {i + 1} of self-supervised pre-training in {out}. Training diverged: "
                        f"lower the learning rate (now --set ssl.optimizer.lr={s.optimizer.lr}), check the source "
                        "images for NaN/inf, or change ssl.hparams. The last checkpoint (ssl_checkpoint) is "
                        "intact; after fixing, rerun with --overwrite."
                    )
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                images += len(batch.y)
                bar.advance(task)
            seconds += time.perf_counter() - t0
            last_loss = sums.get("loss", math.nan) / steps
            if mon is not None and ((epoch + 1) % recipe.monitor.every == 0 or epoch + 1 == s.epochs):  # type: ignore[union-attr]
                acc = _knn(net, mon, recipe, device)
                curve.append({"epoch": epoch + 1, "step": (epoch + 1) * steps, "acc": acc})
                append_jsonl(results, {"epoch": epoch + 1, "step": (epoch + 1) * steps, "stage": "ssl",
                                       "metrics": {"ssl/knn_acc": acc, **{f"train/{k}": v / steps
                                                                          for k, v in sums.items()}}})
                log.info("%s seed %d: SSL epoch %d/%d, loss %.4f, k-NN accuracy %.4f", recipe.name, seed,
                         epoch + 1, s.epochs, last_loss, acc)
            else:
                log.info("%s seed %d: SSL epoch %d/%d, loss %.4f", recipe.name, seed, epoch + 1, s.epochs, last_loss)
            if (epoch + 1) % s.checkpoint_every == 0 and epoch + 1 < s.epochs:
                save_state(ckpt, {"model": dict(method.state_dict()), "optim": {"opt": method.opt.state_dict()},
                                  "rng": torch.get_rng_state(), "epoch": epoch + 1, "curve": curve,
                                  "seconds": seconds, "images": images, "loss": last_loss, "spec": spec,
                                  "seed": seed})
    probe_acc = None
    if mon is not None:
        fb, fq = extract_features(net, mon.bank, device), extract_features(net, mon.query, device)
        p = recipe.probe
        probe_acc = linear_probe(fb, mon.bank.y, fq, mon.query.y, max(mon.bank.num_classes, mon.query.num_classes),
                                 p.steps, p.lr, p.weight_decay, seed).accuracy
    info = SslInfo("trained", curve, seconds, images, last_loss, probe_acc)
    save_state(cache, {"backbone": _head_free_state(net), "spec": spec, "seed": seed, "curve": curve,
                       "seconds": seconds, "images": images, "final_loss": last_loss, "probe_acc": probe_acc})
    for f in (ckpt.with_suffix(".json"), ckpt.with_suffix(".safetensors")):
        f.unlink(missing_ok=True)
    net.eval()
    return net, info


def _pretrain_supervised(recipe: SslRecipe, data: SslData, seed: int, device: torch.device,
                         out: Path) -> tuple[Backbone, str, float]:
    """The supervised source model of ``seed`` (cached in ``out/supervised_model``):
    ``(net, origin, seconds)``."""
    spec = _spec(recipe, "supervised")
    cache = out / "supervised_model"
    seed_everything(seed)
    net = _backbone(recipe, data.source.num_classes)
    if cache.with_suffix(".json").is_file():
        state = load_state(cache)
        if state.get("spec") == spec and state.get("seed") == seed:
            net.load_state_dict(state["backbone"])
            return net.to(device).eval(), "cached", float(state["seconds"])
    train = data.source if recipe.supervised.limit is None else data.source.subset(slice(0, recipe.supervised.limit))
    t0 = time.perf_counter()
    net.to(device)
    try:
        _train_erm(net, train, recipe.supervised, seed, device)
    except TrainingError as exc:
        raise TrainingError(f"Supervised pre-training on the source labels (settings B, D) diverged: {exc} "
                            f"Lower supervised.lr (now {recipe.supervised.lr}).") from None
    seconds = time.perf_counter() - t0
    save_state(cache, {"backbone": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "spec": spec,
                       "seed": seed, "seconds": seconds})
    return net.eval(), "trained", seconds


# ----------------------------------------------------------------------------- settings


def _finetune_cfg(recipe: SslRecipe, n_labelled: int) -> SourceTrain:
    f = recipe.finetune
    return SourceTrain(epochs=f.epochs, batch_size=min(f.batch_size, n_labelled), optimizer=f.optimizer, lr=f.lr,
                       weight_decay=f.weight_decay, momentum=f.momentum)


def _run_setting(
    setting: str, recipe: SslRecipe, labelled: TensorData, evalset: TensorData, seed: int, device: torch.device,
    pretrained: Backbone | None,
) -> float:
    """Target accuracy of one setting (``pretrained``: the B/D or C/E backbone, ``None`` for A)."""
    seed_everything(seed * 101 + ord(setting))  # each setting seeded on its own (resume-safe)
    classes = max(labelled.num_classes, evalset.num_classes)
    if setting in ("D", "E"):
        assert pretrained is not None
        p = recipe.probe
        ftr = extract_features(pretrained, labelled, device)
        fev = extract_features(pretrained, evalset, device)
        return linear_probe(ftr, labelled.y, fev, evalset.y, classes, p.steps, p.lr, p.weight_decay, seed).accuracy
    if setting == "A":
        net = _backbone(recipe, classes).to(device)
    else:
        assert pretrained is not None
        net = copy.deepcopy(pretrained)
        net.reset_head(classes)
        net.to(device)
    try:
        _train_erm(net, labelled, _finetune_cfg(recipe, len(labelled)), seed, device)
    except TrainingError as exc:
        raise TrainingError(f"Setting {setting}: training on the labelled target images diverged: {exc} "
                            f"Lower finetune.lr (now {recipe.finetune.lr}).") from None
    return accuracy(net, evalset, 500, device)


# ----------------------------------------------------------------------------- running


def run_ssl(
    raw_recipe: dict[str, Any],
    overrides: dict[str, Any] | Sequence[str] | None,
    options: RunOptions,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Run a ``kind: ssl`` recipe for ``seeds`` (default: the recipe's); returns each ``metrics.json``.

    Raises:
        RecipeError: invalid recipe. RunExists: the folder holds a run (see ``--resume``).
        DataError: missing data. TrainingError: a loss became NaN/inf.
        RunInterrupted: Ctrl-C (the cached models, checkpoint and finished settings are kept).
    """
    recipe, ov = load_ssl_recipe(raw_recipe, overrides)
    data = _load_data(recipe, options)
    mon = _monitor_sets(recipe, data)
    return run_seeds_locked(seeds if seeds is not None else recipe.seeds,
                            lambda s: run_dir_for(recipe.name, ov, s, options.runs_dir),
                            lambda s: _run_seed(recipe, ov, data, mon, options, s))


def _target_sets(recipe: SslRecipe, data: SslData, seed: int) -> tuple[TensorData, TensorData, dict[str, Any]]:
    t = recipe.target
    lab_idx, rest_idx = draw_labelled(data.target, t.labels_per_class, epoch_generator(seed, -3, 0))
    labelled = data.target.subset(lab_idx, split=f"{t.split}-labelled")
    if len(labelled) == 0:
        raise RecipeError(f"target: {t.dataset}/{t.split} gave no labelled images.")
    if data.target_eval is None:
        evalset = data.target.subset(rest_idx, split=f"{t.split}-rest")
        where = f"the rest of {t.dataset}/{t.split} ({len(rest_idx)} of {len(data.target)} images)"
    else:
        evalset = data.target_eval
        where = f"{t.dataset}/{t.eval_split}"
    if t.eval_limit:
        evalset = evalset.subset(slice(0, t.eval_limit))
    if len(evalset) == 0:
        raise RecipeError(f"target: nothing to evaluate on ({where} is empty).")
    digest = hashlib.sha1(lab_idx.numpy().tobytes()).hexdigest()[:12]
    info = {"dataset": t.dataset, "split": t.split, "labels_per_class": t.labels_per_class,
            "labelled": len(labelled), "eval": where, "eval_images": len(evalset),
            "labelled_sha1": digest, "labelled_indices": lab_idx.tolist() if len(lab_idx) <= 5000 else None}
    return labelled, evalset, info


def _run_seed(recipe: SslRecipe, ov: dict[str, Any], data: SslData, mon: MonitorSets | None,
              options: RunOptions, seed: int) -> dict[str, Any]:
    out = run_dir_for(recipe.name, ov, seed, options.runs_dir)
    finished, resuming = open_run_folder(
        out, options, None, "the cached pre-trained models, the SSL checkpoint and the finished settings are kept")
    if finished is not None:
        return finished
    t_start = time.perf_counter()
    device = resolve_device(options.device or recipe.device)
    labelled, evalset, split_info = _target_sets(recipe, data, seed)
    config = recipe.model_dump(mode="json")
    config["ssl"]["hparams"] = asdict(make_hparams(recipe.ssl.method, recipe.ssl.hparams))
    config.update({
        "seed": seed, "overrides": ov, "variant": variant_label(ov), "selection_rule": SELECTION,
        "resolved": {"device": str(device), "settings": {s: list(SETTINGS[s]) for s in recipe.settings},
                     "sizes": {"source": len(data.source), "target_labelled": len(labelled),
                               "target_eval": len(evalset), "monitor_bank": len(mon.bank) if mon else 0,
                               "monitor_query": len(mon.query) if mon else 0},
                     "target_split": {k: v for k, v in split_info.items() if k != "labelled_indices"},
                     "data_dir": options.data_dir, "versions": versions(), "platform": platform.platform()},
    })
    if resuming:
        _check_same(out / "config.yaml", config)
    atomic_write_yaml(out / "config.yaml", config)

    results = out / "results.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if resuming:
        for r in read_jsonl(results):
            if r.get("stage") == "transfer":
                done[r["setting"]] = r
    elif results.exists():
        results.unlink()

    ssl_net: Backbone | None = None
    ssl_info: SslInfo | None = None
    sup_net: Backbone | None = None
    sup_origin, sup_seconds, sup_knn = None, None, None
    try:
        if recipe.needs_ssl:
            ssl_net, ssl_info = _pretrain_ssl(recipe, data, mon, seed, device, out, results, options)
            log.info("%s seed %d: SSL backbone %s (%.0f images/s)", recipe.name, seed, ssl_info.origin,
                     ssl_info.images_per_s)
        if recipe.needs_supervised:
            sup_net, sup_origin, sup_seconds = _pretrain_supervised(recipe, data, seed, device, out)
            if mon is not None:
                sup_knn = _knn(sup_net, mon, recipe, device)
        for setting in recipe.settings:
            if setting in done:
                continue
            t0 = time.perf_counter()
            pre = None if setting == "A" else (sup_net if setting in ("B", "D") else ssl_net)
            acc = _run_setting(setting, recipe, labelled, evalset, seed, device, pre)
            row = {"epoch": recipe.finetune.epochs if setting in "ABC" else 0, "step": len(done), "stage": "transfer",
                   "setting": setting, "pretraining": SETTINGS[setting][0], "adaptation": SETTINGS[setting][1],
                   "labelled": len(labelled), "n": len(evalset), "seconds": round(time.perf_counter() - t0, 3),
                   "metrics": {f"{setting}/acc": acc}}
            append_jsonl(results, row)
            done[setting] = row
            log.info("%s seed %d: setting %s (%s pre-training, %s): target accuracy %.4f", recipe.name, seed,
                     setting, *SETTINGS[setting], acc)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"Interrupted (Ctrl-C) during {out}. The pre-trained models (and the SSL checkpoint) are cached and "
            "the finished settings are in results.jsonl; run the same command with --resume to continue."
        ) from None

    metrics: dict[str, float] = {f"{s}/acc": float(done[s]["metrics"][f"{s}/acc"]) for s in recipe.settings}
    if ssl_info is not None:
        if ssl_info.curve:
            metrics["ssl/init_knn_acc"] = ssl_info.curve[0]["acc"]
            metrics["ssl/knn_acc"] = ssl_info.curve[-1]["acc"]
        if ssl_info.probe_acc is not None:
            metrics["ssl/probe_acc"] = float(ssl_info.probe_acc)
        metrics["ssl/images_per_s"] = ssl_info.images_per_s
        metrics["ssl/seconds"] = ssl_info.seconds
        metrics["ssl/final_loss"] = ssl_info.final_loss
    if sup_knn is not None:
        metrics["supervised/knn_acc"] = sup_knn
    if sup_seconds is not None:
        metrics["supervised/seconds"] = sup_seconds
    metrics["target/labels_per_class"] = float(recipe.target.labels_per_class or 0)
    metrics["target/labelled"] = float(len(labelled))
    result = {
        "recipe": recipe.name,
        "variant": variant_label(ov),
        "overrides": ov,
        "seed": seed,
        "method": recipe.ssl.method,
        "backbone": recipe.backbone.name,
        "selection": SELECTION,
        "metrics": metrics,
        "settings": {s: {"pretraining": SETTINGS[s][0], "adaptation": SETTINGS[s][1],
                         "acc": metrics[f"{s}/acc"], "seconds": done[s]["seconds"]} for s in recipe.settings},
        "knn_curve": ssl_info.curve if ssl_info else [],
        "target_split": split_info,
        "pretraining": {"ssl": None if ssl_info is None else {"origin": ssl_info.origin, "method": recipe.ssl.method,
                                                              "images": ssl_info.images, "seconds": ssl_info.seconds,
                                                              "images_per_s": ssl_info.images_per_s},
                        "supervised": None if sup_origin is None else {"origin": sup_origin, "seconds": sup_seconds}},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    _plot(out, recipe, result)
    atomic_write_json(out / "metrics.json", result)
    return result


def _plot(out: Path, recipe: SslRecipe, result: dict[str, Any]) -> None:
    try:
        from shiftlab.plots import Curve, bar_with_ci, curves_with_band

        m = result["metrics"]
        labels = [f"{s}: {SETTINGS[s][0]}\n{SETTINGS[s][1]}" for s in recipe.settings]
        bar_with_ci(labels, [100 * m[f"{s}/acc"] for s in recipe.settings], [math.nan] * len(recipe.settings),
                    out / "settings.png", ylabel="target accuracy (%)",
                    title=f"{recipe.name} seed {result['seed']}: {result['target_split']['labelled']} labelled "
                          "target images")
        curve = result["knn_curve"]
        if curve:
            curves_with_band([Curve(recipe.ssl.method, [c["epoch"] for c in curve], [100 * c["acc"] for c in curve])],
                             out / "knn.png", xlabel="pre-training epoch", ylabel="k-NN accuracy (%)",
                             title=f"{recipe.name} seed {result['seed']}: k-NN monitor")
    except Exception as exc:  # a plot must never lose a finished run
        log.warning("could not draw settings.png / knn.png: %s", exc)


# ----------------------------------------------------------------------------- demo


def demo_recipe() -> dict[str, Any]:
    """The demo's SSL recipe: BYOL (15 epochs) on the 1,347 unlabelled embedded ``digits``
    training images (16 px, LeNet); the target task is the ``digits`` test split with 10
    labelled images per class (a seeded draw), scored on its other 350 images; settings A-E.
    The supervised settings B and D pre-train on the training digits' labels."""
    return {
        "kind": "ssl",
        "name": "demo-ssl-digits",
        "description": "BYOL on digits, then 10 labels per class: the five transfer settings",
        "data": {"image_size": 16, "channels": 1, "fit": "resize"},
        "source": {"dataset": "digits", "split": "train"},
        "target": {"dataset": "digits", "split": "test", "labels_per_class": 10, "eval_split": "test"},
        "backbone": {"name": "lenet"},
        "ssl": {"method": "byol", "hparams": {"projection_hidden": 512, "predictor_hidden": 512,
                                              "projection_dim": 128, "base_momentum": 0.99},
                "epochs": 15, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003},
                "augment": "byol_digits", "checkpoint_every": 100},
        "supervised": {"epochs": 4, "batch_size": 64, "lr": 0.001},
        "finetune": {"epochs": 30, "batch_size": 32, "lr": 0.001},
        "probe": {"steps": 300, "lr": 0.01, "weight_decay": 0.0001},
        "monitor": {"dataset": "digits", "split": "test", "bank_per_class": 10, "query": 350, "every": 5},
        "seeds": [0],
        "device": "cpu",
    }


def demo_stage(out_dir: str | Path) -> tuple[list[str], dict[str, float], list[Path]]:
    """``shiftlab demo``'s self-supervised stage: see :func:`demo_recipe`.

    Returns:
        Markdown lines, metrics (``ssl/<S>/acc`` per setting, ``ssl/knn_acc``,
        ``ssl/init_knn_acc``) and the PNGs copied into ``out_dir`` (settings bars, k-NN curve).
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    raw = demo_recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second OpenMP thread only waits on a busy core
    try:
        m = run_ssl(raw, {}, RunOptions(runs_dir=out / "runs", overwrite=True, progress=False), [0])[0]
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    run = out / "runs" / raw["name"] / "default" / "seed-0"
    figs = []
    for name, dest in (("settings.png", "ssl_settings.png"), ("knn.png", "ssl_knn.png")):
        if (run / name).is_file():
            figs.append(Path(shutil.copyfile(run / name, out / dest)))
    mm = m["metrics"]
    lines = [
        "### Self-supervised pre-training stage: BYOL on digits, then 10 labels per class",
        "",
        f"BYOL pre-trains a LeNet on the 1,347 unlabelled `digits` training images "
        f"({raw['ssl']['epochs']} epochs, {mm['ssl/images_per_s']:.0f} images/s); k-NN accuracy of its features "
        f"(10 labelled digits per class as the bank): {100 * mm['ssl/init_knn_acc']:.1f}% at random initialisation, "
        f"{100 * mm['ssl/knn_acc']:.1f}% after. Target: {int(mm['target/labelled'])} labelled `digits` test "
        "images (10 per class), scored on the other test images (B and D pre-train on the training labels):",
        "",
        "| setting | pre-training | on the target labels | accuracy (%) |",
        "|---|---|---|---:|",
        *(f"| {s} | {SETTINGS[s][0]} | {SETTINGS[s][1]} | {100 * mm[f'{s}/acc']:.1f} |" for s in SETTINGS),
        "",
        f"Time: {seconds:.1f} s",
    ]
    metrics = {f"ssl/{s}/acc": mm[f"{s}/acc"] for s in SETTINGS}
    metrics.update({"ssl/knn_acc": mm["ssl/knn_acc"], "ssl/init_knn_acc": mm["ssl/init_knn_acc"]})
    return lines, metrics, figs
