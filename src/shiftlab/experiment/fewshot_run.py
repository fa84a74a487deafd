"""Few-shot recipes (``kind: fewshot``): episodic meta-training and few-shot evaluation.

A run writes the standard folder ``runs/<recipe>/<variant>/seed-<k>/`` (see
:mod:`shiftlab.experiment.run`): ``config.yaml`` (resolved), ``results.jsonl`` (one record
per evaluation boundary), ``metrics.json`` (final, with ``"episodes": {metric: [per-episode
accuracy, ...]}`` so that ``shiftlab report`` gives the 95% CI over episodes, as the
few-shot papers do) and a checkpoint (``checkpoint.safetensors`` + ``checkpoint.json``)
written atomically at every evaluation boundary. Every training batch is drawn from a
generator seeded by ``(seed, iteration)``, and the global RNG is checkpointed, so a
resumed run ends with the same metrics as an uninterrupted one on CPU.

Example (``recipes/fewshot/omniglot_protonet.yaml``)::

    kind: fewshot
    name: fewshot-omniglot-protonet
    data: {source: omniglot, splits: [background_small1, background_small2],
           image_size: 28, rotations: [0, 90, 180, 270]}
    backbone: {name: conv4}
    method: {name: protonet, hparams: {distance: euclidean}}
    train: {iterations: 2000, way: 60, shot: 5, query: 5, lr: 0.001, eval_every: 500}
    eval:
      sets:
        - {name: lake20, kind: omniglot_runs}
    seeds: [0]

Evaluation protocols (``eval.sets``):

* ``kind: omniglot_runs``: Lake et al.'s 20 within-alphabet 20-way 1-shot runs
  (``metric <name>/acc``; the per-run accuracies are the "episodes").
* ``kind: episodes``: N-way K-shot episodes for every ``ways`` x ``shots`` over
  ``source``/``split`` (``<name>/<N>w<K>s/acc``). With ``split`` unset and a
  ``data.class_split`` (e.g. ``90-10``), the episodes use the held-out side of the
  classes. ``held_out: true`` drops the Omniglot alphabets seen in meta-training.
  ``pairs: P`` adds binary verification accuracy over P balanced pairs with the
  decision threshold tuned on P pairs of validation classes (``<name>/verify_acc``) and
  ``triplets: T`` adds the distance accuracy ``P(d(a, p) < d(a, n))`` (``<name>/triplet_acc``).

``eval.tta_shift: P`` adds test-time augmentation to the final evaluation (every metric
again as ``<metric>_tta``: each image's embedding averaged over itself and its copies shifted
by P pixels in the four directions). :func:`evaluate_run` evaluates a finished run again with
other ``eval.*`` settings and :func:`evaluate_ensemble` several finished runs as one
ensemble, without training (``shiftlab eval RUN... [--set eval.tta_shift=1] [--ensemble FILE]``).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, field_validator

from shiftlab.backbones import create_backbone
from shiftlab.batches import Episode, Labeled
from shiftlab.config import (
    BackboneCfg,
    MethodCfg,
    RunName,
    StrictModel,
    apply_overrides,
    normalise_overrides,
    overrides_id,
    validate_recipe,
    variant_label,
)
from shiftlab.data.episodes import (
    EpisodeSampler,
    PairSampler,
    TripletSampler,
    cifar_fs,
    class_ratio_split,
    fc100,
    held_out_alphabets,
    load_csv_split,
    merge_omniglot,
    random_affine,
    select_classes,
    with_rotated_classes,
)
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData, to_float
from shiftlab.data.transforms import fit_channels, fit_images
from shiftlab.errors import RecipeError, ShiftlabError, TrainingError
from shiftlab.experiment.run import (
    RunExists,
    RunInterrupted,
    RunOptions,
    open_run_folder,
    run_dir_for,
    run_seeds_locked,
    versions,
)
from shiftlab.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    load_state,
    read_jsonl,
    save_state,
)
from shiftlab.methods import create_method, make_hparams
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.optim import OptimizerFactory
from shiftlab.precision import train_autocast
from shiftlab.seeding import epoch_generator, resolve_device, seed_everything
from shiftlab.stats import summarize

log = logging.getLogger(__name__)

__all__ = [
    "FewShotData",
    "FewShotEvalSet",
    "FewShotRecipe",
    "FewShotTrain",
    "demo_stage",
    "evaluate_episodes",
    "evaluate_runs",
    "load_fewshot_recipe",
    "load_split",
    "prepare",
    "run_fewshot",
    "triplet_accuracy",
    "verification_accuracy",
]


# ----------------------------------------------------------------------------- recipe


class FewShotData(StrictModel):
    """Meta-training data.

    Attributes:
        source: dataset name (``omniglot``, ``cifar100``, ``digits``, ``folder:PATH``,
            ``csv:PATH`` for mini-ImageNet CSV splits, ...); see :func:`load_split`.
        splits: dataset splits pooled for meta-training (Omniglot splits are merged with
            duplicate characters removed: the minimal sets share Greek and Latin).
        class_split: ``"90-10"``, ``"80-20"``, ``"50-50"``: meta-train on the first part of
            the classes only; evaluation sets without a ``split`` use the rest.
        split_seed: seed of the class permutation of ``class_split``.
        split_shuffle: permute the classes before the ratio split (``false``: the first
            classes in label order train, e.g. digits 0-4 vs 5-9).
        val_fraction: fraction of the meta-training classes held out as validation classes
            (never trained on), used to tune the verification threshold. 0: tune on pairs of
            meta-training classes.
        image_size: images are brought to ``image_size`` x ``image_size`` ...
        fit: ... by bilinear ``resize`` (Omniglot 105 -> 28) or ``pad``.
        channels: 1 or 3.
        rotations: class augmentation by rotation (``[0, 90, 180, 270]``: each rotation of a
            class is a new class; meta-training only).
        augment: ``none`` or ``affine`` (small random affine distortions per image, as Koch
            et al.; training batches only).
        limit_classes: use only the first N meta-training classes (quick runs, tests).
    """

    source: str = "omniglot"
    splits: list[str] = Field(default_factory=lambda: ["background_small1", "background_small2"])
    class_split: str | None = None
    split_seed: int = 0
    split_shuffle: bool = True
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    image_size: int = Field(default=28, ge=8)
    fit: Literal["pad", "resize"] = "resize"
    channels: Literal[1, 3] = 1
    rotations: list[int] = Field(default_factory=lambda: [0])
    augment: Literal["none", "affine"] = "none"
    limit_classes: int | None = Field(default=None, ge=2)


class FewShotTrain(StrictModel):
    """The meta-training schedule.

    Attributes:
        iterations: number of :meth:`update` calls (an update of a meta-batched method
            takes ``meta_batch`` episodes).
        way, shot, query: training episodes (may differ from the evaluation ones).
        within_group: draw training episodes within one alphabet (Lake's runs are like that).
        batch_size: pairs / triplets / labelled images per update for the non-episodic methods.
        triplet_classes: classes per triplet batch.
        optimizer, lr, weight_decay, momentum: the (meta-)optimizer.
        eval_every: evaluate (quickly), log and checkpoint every N iterations (and at the end).
        eval_episodes: episodes per quick evaluation during training.
        channels_last: run convolutions in channels-last memory format (faster on CPU).
        precision: ``fp32`` or ``bf16`` (autocast of the training steps, :mod:`shiftlab.precision`).
    """

    iterations: int = Field(default=2000, ge=0)
    way: int = Field(default=5, ge=2)
    shot: int = Field(default=1, ge=1)
    query: int = Field(default=15, ge=1)
    within_group: bool = False
    batch_size: int = Field(default=64, ge=2)
    triplet_classes: int = Field(default=16, ge=2)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0)
    eval_every: int = Field(default=500, ge=1)
    eval_episodes: int = Field(default=200, ge=1)
    channels_last: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"


class FewShotEvalSet(StrictModel):
    """One evaluation protocol (see the module docstring)."""

    name: str
    kind: Literal["episodes", "omniglot_runs"] = "episodes"
    source: str | None = None
    split: str | None = None
    held_out: bool = True
    ways: list[int] = Field(default_factory=lambda: [5])
    shots: list[int] = Field(default_factory=lambda: [1])
    query: int = Field(default=15, ge=1)
    episodes: int = Field(default=1000, ge=1)
    pairs: int = Field(default=0, ge=0)
    triplets: int = Field(default=0, ge=0)

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("must be a non-empty label without '/'")
        return v


class FewShotEval(StrictModel):
    """Evaluation protocols and the test-episode seed (the same episodes for every method).

    ``tta_shift: P`` (pixels, 0 = off) adds test-time augmentation to the final evaluation:
    every metric is reported twice, plain and as ``<metric>_tta`` with each image's embedding
    averaged over the image and its copies shifted by ``P`` pixels up, down, left and right
    (:meth:`~shiftlab.methods.fewshot.common.FewShotMethod.test_time_shift`; metric methods only).
    """

    sets: list[FewShotEvalSet] = Field(default_factory=list)
    seed: int = 12345
    tta_shift: int = Field(default=0, ge=0, le=8)


class FewShotRecipe(StrictModel):
    """A few-shot experiment (``kind: fewshot``); see the module docstring."""

    kind: Literal["fewshot"] = "fewshot"
    name: RunName
    description: str = ""
    data: FewShotData = Field(default_factory=FewShotData)
    backbone: BackboneCfg = Field(default_factory=lambda: BackboneCfg(name="conv4"))
    method: MethodCfg = Field(default_factory=lambda: MethodCfg(name="protonet"))
    method_hparams: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: FewShotTrain = Field(default_factory=FewShotTrain)
    eval: FewShotEval = Field(default_factory=FewShotEval)
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "auto"

    def effective_hparams(self) -> dict[str, Any]:
        """``method_hparams[method.name]`` updated with ``method.hparams``."""
        return {**self.method_hparams.get(self.method.name, {}), **self.method.hparams}


def load_fewshot_recipe(
    raw: dict[str, Any], overrides: dict[str, Any] | Sequence[str] | None = None
) -> tuple[FewShotRecipe, dict[str, Any]]:
    """Validate a ``kind: fewshot`` recipe mapping with ``--set`` overrides applied.

    Raises:
        RecipeError: naming the key path and the allowed keys or values.
    """
    ov = normalise_overrides(overrides)
    what = f"few-shot recipe {raw.get('name', '<unnamed>')!r}"
    recipe = validate_recipe(FewShotRecipe, apply_overrides(raw, ov), what)
    make_hparams(recipe.method.name, recipe.effective_hparams())  # an unknown method or hyper-parameter fails early
    return recipe, ov


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PreparedData:
    """Everything a run needs, images already fitted (uint8 ``[N, C, S, S]``).

    Attributes:
        train: meta-training images (rotation classes included), labels ``0..C-1``.
        val: validation classes (``val_fraction``), or ``None``.
        evals: per evaluation-set name: its images (episodes sets) or the runs dataset.
        info: provenance for ``config.yaml``.
    """

    train: TensorData
    val: TensorData | None
    evals: dict[str, TensorData]
    info: dict[str, Any]


def _fit(data: TensorData, cfg: FewShotData) -> TensorData:
    x = fit_channels(fit_images(data.x, cfg.image_size, cfg.fit), cfg.channels)
    return data if x is data.x else data.with_x(x)


def load_split(source: str, split: str, data_dir: str | None, download: bool, image_size: int = 84) -> TensorData:
    """One few-shot split of a dataset.

    Besides every registered dataset split, this knows ``csv:PATH`` sources (Ravi &
    Larochelle's mini-ImageNet CSVs beside an ``images/`` folder; split ``train``, ``val``
    or ``test``) and the CIFAR-100 few-shot splits ``cifar_fs-<train|val|test>`` and
    ``fc100-<train|val|test>`` (built from CIFAR-100's train and test images together).
    """
    if source.startswith("csv:"):
        return load_csv_split(source[4:], split, image_size)
    bench, _, part = split.partition("-")
    if bench in ("cifar_fs", "fc100") and part:
        both = [load_dataset(source, s, data_dir=data_dir, download=download) for s in ("train", "test")]
        union = TensorData(torch.cat([b.x for b in both]), torch.cat([b.y for b in both]), both[0].name,
                           "train+test", both[0].classes, both[0].info)
        return cifar_fs(union, part) if bench == "cifar_fs" else fc100(union, part)
    return load_dataset(source, split, data_dir=data_dir, download=download)


def _load_pool(source: str, splits: Sequence[str], data_dir: str | None, download: bool, image_size: int) -> TensorData:
    parts = [load_split(source, s, data_dir, download, image_size) for s in splits]
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p.info.get("alphabet"), (list, tuple)) for p in parts):
        return merge_omniglot(parts)
    offset, xs, ys = 0, [], []
    for p in parts:  # distinct label spaces per split (e.g. few-shot splits of one dataset)
        xs.append(p.x)
        ys.append(p.y + offset)
        offset += p.num_classes
    return TensorData(torch.cat(xs), torch.cat(ys), parts[0].name, "+".join(splits))


def prepare(recipe: FewShotRecipe, data_dir: str | None = None, download: bool = False) -> PreparedData:
    """Load, split, fit and augment the data of ``recipe`` (deterministic; no seed needed)."""
    d = recipe.data
    pool = _load_pool(d.source, d.splits, data_dir, download, d.image_size)
    held: TensorData | None = None
    if d.class_split:
        tr, te = class_ratio_split(pool.num_classes, d.class_split, d.split_seed if d.split_shuffle else None)
        held = select_classes(pool, te, split=f"{pool.split}:{d.class_split}-test")
        pool = select_classes(pool, tr, split=f"{pool.split}:{d.class_split}-train")
    if d.limit_classes:
        pool = select_classes(pool, range(min(d.limit_classes, pool.num_classes)))
    val = None
    if d.val_fraction > 0:
        n_val = max(2, round(pool.num_classes * d.val_fraction))
        perm = torch.randperm(pool.num_classes, generator=torch.Generator().manual_seed(d.split_seed + 1))
        val = _fit(select_classes(pool, perm[:n_val].sort().values, split=f"{pool.split}:val"), d)
        pool = select_classes(pool, perm[n_val:].sort().values)
    train = _fit(pool, d)
    if d.rotations != [0]:
        train = with_rotated_classes(train, d.rotations)
    evals: dict[str, TensorData] = {}
    for s in recipe.eval.sets:
        if s.kind == "omniglot_runs":
            runs = load_dataset(s.source or "omniglot_runs", s.split or "test", data_dir=data_dir, download=download)
            evals[s.name] = _fit(runs, d)
            continue
        if s.split is None:
            if held is None:
                raise RecipeError(
                    f"eval set {s.name!r}: set its split (a dataset split), or set data.class_split so that it "
                    "uses the held-out classes."
                )
            ev = held
        else:
            ev = load_split(s.source or d.source, s.split, data_dir, download, d.image_size)
            if s.held_out and isinstance(ev.info.get("alphabet"), list) and isinstance(pool.info.get("alphabet"), list):
                ev = held_out_alphabets(pool, ev)
        evals[s.name] = _fit(ev, d)
    info = {
        "train": {"split": train.split, "classes": train.num_classes, "images": len(train)},
        "val": None if val is None else {"classes": val.num_classes, "images": len(val)},
        "evals": {k: {"split": v.split, "classes": v.num_classes, "images": len(v),
                      "dropped_alphabets": v.info.get("dropped_alphabets", [])} for k, v in evals.items()},
    }
    return PreparedData(train, val, evals, info)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _embed_all(method: FewShotMethod, data: TensorData, device: torch.device, chunk: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, len(data), chunk):
        out.append(method.embed_eval(to_float(data.x[i : i + chunk]).to(device)))
    return torch.cat(out)


def evaluate_episodes(
    method: FewShotMethod,
    data: TensorData,
    way: int,
    shot: int,
    query: int,
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> list[float]:
    """Per-episode query accuracy of ``method`` on ``episodes`` seeded N-way K-shot episodes.

    The episodes depend only on ``(data, way, shot, query, seed)``, so every method sees
    the same ones. Metric methods (``embeds_independently``) embed each image once and
    score the episodes from the cache (identical logits, far faster); the others run
    ``fit_support`` + ``predict`` per episode.

    Returns:
        ``episodes`` accuracies in [0, 1].
    """
    device = torch.device(device)
    sampler = EpisodeSampler(data, way, shot, query)
    gen = torch.Generator().manual_seed(seed)
    method.eval()
    accs: list[float] = []
    cache = _embed_all(method, data, device) if (use_cache and method.embeds_independently) else None
    sy = torch.arange(way, device=device).repeat_interleave(shot)
    qy = torch.arange(way, device=device).repeat_interleave(query)
    for _ in range(episodes):
        s_idx, q_idx = sampler.sample_rows(gen)
        if cache is not None:
            with torch.no_grad():
                logits = method.logits_from_embeddings(cache[s_idx.reshape(-1)], sy, cache[q_idx.reshape(-1)], way)
        else:
            method.fit_support(to_float(data.x[s_idx.reshape(-1)]).to(device), sy)
            logits = method.predict(to_float(data.x[q_idx.reshape(-1)]).to(device))
        accs.append((logits.argmax(1) == qy).float().mean().item())
    return accs


def evaluate_runs(method: FewShotMethod, runs: TensorData, device: torch.device | str = "cpu") -> list[float]:
    """Accuracy on each of Lake et al.'s 20-way one-shot runs (``omniglot_runs``): 20 values."""
    device = torch.device(device)
    method.eval()
    out = []
    for run in runs.info["runs"]:
        s = torch.tensor(run["support_idx"])
        q = torch.tensor(run["query_idx"])
        target = torch.tensor(run["query_target"], device=device)
        sy = torch.arange(len(s), device=device)
        method.fit_support(to_float(runs.x[s]).to(device), sy)
        logits = method.predict(to_float(runs.x[q]).to(device))
        out.append((logits.argmax(1) == target).float().mean().item())
    return out


@torch.no_grad()
def _pair_scores(method: FewShotMethod, data: TensorData, n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    a, b, same = PairSampler(data).sample_rows(n, torch.Generator().manual_seed(seed))
    sims = []
    for i in range(0, n, 512):
        x1 = to_float(data.x[a[i : i + 512]]).to(device)
        x2 = to_float(data.x[b[i : i + 512]]).to(device)
        sims.append(method.similarity(x1, x2).float().cpu())
    return torch.cat(sims), same


def best_threshold(scores: torch.Tensor, same: torch.Tensor) -> float:
    """The threshold ``t`` maximising the accuracy of ``score > t`` on ``(scores, same)``."""
    s, order = scores.sort()
    y = same[order]
    n = len(s)
    # predicting "same" for items above position i: correct = (#diff at <= i) + (#same above i)
    diff_le = torch.cumsum(1 - y, 0)
    same_gt = y.sum() - torch.cumsum(y, 0)
    acc = torch.cat([y.sum()[None], diff_le + same_gt]) / n  # index 0: threshold below everything
    k = int(acc.argmax())
    if k == 0:
        return float(s[0]) - 1e-6
    if k == n:
        return float(s[-1]) + 1e-6
    return float((s[k - 1] + s[k]) / 2)


def verification_accuracy(
    method: FewShotMethod, val: TensorData, test: TensorData, pairs: int, seed: int, device: torch.device | str = "cpu"
) -> tuple[float, float, list[float]]:
    """Binary same/different accuracy on ``test`` pairs with the threshold tuned on ``val`` pairs.

    Returns:
        ``(accuracy, threshold, per-pair correctness)``.
    """
    device = torch.device(device)
    method.eval()
    vs, vy = _pair_scores(method, val, pairs, seed + 1, device)
    t = best_threshold(vs, vy)
    ts, ty = _pair_scores(method, test, pairs, seed + 2, device)
    correct = ((ts > t).float() == ty).float()
    return float(correct.mean()), t, correct.tolist()


@torch.no_grad()
def triplet_accuracy(
    method: FewShotMethod, data: TensorData, triplets: int, seed: int, device: torch.device | str = "cpu"
) -> list[float]:
    """Per-triplet indicator of ``sim(a, p) > sim(a, n)`` (the document's distance accuracy)."""
    device = torch.device(device)
    method.eval()
    a, p, n, _, _ = TripletSampler(data, classes_per_batch=data.num_classes).sample_rows(
        triplets, torch.Generator().manual_seed(seed + 3))
    out = []
    for i in range(0, triplets, 512):
        xa = to_float(data.x[a[i : i + 512]]).to(device)
        sp = method.similarity(xa, to_float(data.x[p[i : i + 512]]).to(device))
        sn = method.similarity(xa, to_float(data.x[n[i : i + 512]]).to(device))
        out += (sp > sn).float().tolist()
    return out


def evaluate_all(
    method: FewShotMethod,
    recipe: FewShotRecipe,
    data: PreparedData,
    device: torch.device,
    quick: bool,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """All evaluation sets: ``(metrics, per-episode values)``; ``quick`` uses the first way/shot only
    and ``train.eval_episodes`` episodes (during training). With ``eval.tta_shift`` the final
    (not quick) evaluation runs twice, the second time with test-time shifts (keys ``*_tta``;
    :func:`build_method` has refused them for methods that adapt per episode).
    """
    metrics, episodes = _evaluate_sets(method, recipe, data, device, quick)
    px = recipe.eval.tta_shift
    if px and not quick:
        with method.test_time_shift(px):
            m2, e2 = _evaluate_sets(method, recipe, data, device, quick)
        metrics.update({f"{k}_tta": v for k, v in m2.items()})
        episodes.update({f"{k}_tta": v for k, v in e2.items()})
    return metrics, episodes


def _check_tta(recipe: FewShotRecipe, method: FewShotMethod) -> None:
    if recipe.eval.tta_shift and not method.embeds_independently:
        raise RecipeError(
            f"eval.tta_shift averages each image's embedding over shifted copies, but "
            f"{recipe.method.name!r} adapts its network to every episode; drop eval.tta_shift."
        )


def _evaluate_sets(
    method: FewShotMethod,
    recipe: FewShotRecipe,
    data: PreparedData,
    device: torch.device,
    quick: bool,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    metrics: dict[str, float] = {}
    episodes: dict[str, list[float]] = {}
    seed = recipe.eval.seed
    for s in recipe.eval.sets:
        ev = data.evals[s.name]
        if s.kind == "omniglot_runs":
            vals = evaluate_runs(method, ev, device)
            metrics[f"{s.name}/acc"] = sum(vals) / len(vals)
            episodes[f"{s.name}/acc"] = vals
            continue
        combos = [(w, k) for w in s.ways for k in s.shots]
        if quick:
            combos = combos[:1]
        for w, k in combos:
            n = min(s.episodes, recipe.train.eval_episodes) if quick else s.episodes
            vals = evaluate_episodes(method, ev, w, k, s.query, n, seed, device)
            key = f"{s.name}/{w}w{k}s/acc"
            metrics[key] = sum(vals) / len(vals)
            episodes[key] = vals
        if quick:
            continue
        if s.pairs:
            val = data.val if data.val is not None else data.train
            acc, thr, per = verification_accuracy(method, val, ev, s.pairs, seed, device)
            metrics[f"{s.name}/verify_acc"] = acc
            metrics[f"{s.name}/verify_threshold"] = thr
            episodes[f"{s.name}/verify_acc"] = per
        if s.triplets:
            per = triplet_accuracy(method, ev, s.triplets, seed, device)
            metrics[f"{s.name}/triplet_acc"] = sum(per) / len(per)
            episodes[f"{s.name}/triplet_acc"] = per
    return metrics, episodes


# ----------------------------------------------------------------------------- training


class BatchMaker:
    """Builds the training batch of iteration ``it`` for the method's ``batch_kind``.

    Every batch is drawn from ``epoch_generator(seed, it, stream)``, so it depends only on
    the seed and the iteration (exact resume). Affine augmentation, when enabled, uses
    another stream of the same generator family.
    """

    def __init__(self, method: FewShotMethod, recipe: FewShotRecipe, data: TensorData, seed: int,
                 device: torch.device) -> None:
        t = recipe.train
        self.kind = method.batch_kind
        self.n_tasks = method.episodes_per_update
        self.seed, self.device, self.train, self.data = seed, device, t, data
        self.augment = recipe.data.augment == "affine"
        groups = None
        if t.within_group:
            groups = data.info.get("class_alphabet")
            if groups is None:
                raise RecipeError("train.within_group needs a dataset with alphabets (Omniglot).")
        if self.kind == "episode":
            self.sampler: Any = EpisodeSampler(data, t.way, t.shot, t.query, class_groups=groups,
                                               within_group=t.within_group)
        elif self.kind == "pairs":
            self.sampler = PairSampler(data)
        elif self.kind == "triplets":
            self.sampler = TripletSampler(data, classes_per_batch=t.triplet_classes)
        elif self.kind != "labeled":
            raise ShiftlabError(f"few-shot runs cannot build {self.kind!r} batches")

    def _aug(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_affine(x, gen) if self.augment else x

    def __call__(self, it: int) -> Any:
        gen = epoch_generator(self.seed, it, 0)
        agen = epoch_generator(self.seed, it, 1)
        dev = self.device
        if self.kind == "episode":
            eps = []
            for _ in range(self.n_tasks):
                ep = self.sampler.sample(gen)
                eps.append(Episode(self._aug(ep.support_x, agen).to(dev), ep.support_y.to(dev),
                                   self._aug(ep.query_x, agen).to(dev), ep.query_y.to(dev)))
            return eps[0] if self.n_tasks == 1 else eps
        bs = self.train.batch_size
        if self.kind == "pairs":
            p = self.sampler.sample(bs, gen)
            return type(p)(self._aug(p.x1, agen).to(dev), self._aug(p.x2, agen).to(dev), p.same.to(dev))
        if self.kind == "triplets":
            t = self.sampler.sample(bs, gen)
            return type(t)(self._aug(t.anchor, agen).to(dev), self._aug(t.positive, agen).to(dev),
                           self._aug(t.negative, agen).to(dev), t.anchor_y.to(dev), t.negative_y.to(dev))
        idx = torch.randint(len(self.data), (bs,), generator=gen)
        return Labeled(self._aug(to_float(self.data.x[idx]), agen).to(dev), self.data.y[idx].to(dev))


def build_method(recipe: FewShotRecipe, data: PreparedData, device: torch.device) -> FewShotMethod:
    """The recipe's backbone (no head) and method, on ``device``."""
    args: dict[str, Any] = {"in_chans": recipe.data.channels, "num_classes": 0, "image_size": recipe.data.image_size}
    args.update(recipe.backbone.args)
    backbone = create_backbone(recipe.backbone.name, **args)
    t = recipe.train
    opt = OptimizerFactory(name=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    method = create_method(recipe.method.name, backbone=backbone, num_classes=data.train.num_classes,
                           hparams=recipe.effective_hparams(), optimizer=opt)
    if not isinstance(method, FewShotMethod):
        raise ShiftlabError(
            f"method {recipe.method.name!r} is not a few-shot method; few-shot recipes take one of the "
            "family 'fewshot' (`shiftlab list methods`)."
        )
    _check_tta(recipe, method)  # before any training, not after it
    method.to(device)
    if t.channels_last and device.type == "cpu":
        method.use_channels_last(True)
    return method


def _plain_hparams(recipe: FewShotRecipe) -> dict[str, Any]:
    from dataclasses import asdict

    hp = asdict(make_hparams(recipe.method.name, recipe.effective_hparams()))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}


def run_fewshot(
    raw_recipe: dict[str, Any],
    overrides: dict[str, Any] | Sequence[str] | None,
    options: RunOptions,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Run a ``kind: fewshot`` recipe for ``seeds`` (default: the recipe's); returns each ``metrics.json``.

    Args:
        raw_recipe: the recipe mapping (as read from YAML).
        overrides: ``--set`` overrides, dotted keys -> values (or ``["k=v", ...]``).
        options: run options (runs folder, data root, device, resume/overwrite).
        seeds: seeds to run.

    Raises:
        RecipeError: invalid recipe. RunExists: the folder holds a run (see ``--resume``).
        TrainingError: a non-finite loss. RunInterrupted: Ctrl-C (the last checkpoint is kept).
    """
    recipe, ov = load_fewshot_recipe(raw_recipe, overrides)
    data = prepare(recipe, options.data_dir, options.download)
    return run_seeds_locked(seeds if seeds is not None else recipe.seeds,
                            lambda s: run_dir_for(recipe.name, ov, s, options.runs_dir),
                            lambda s: _run_seed(recipe, ov, data, options, s))


def _run_seed(recipe: FewShotRecipe, ov: dict[str, Any], data: PreparedData, options: RunOptions, seed: int) -> dict[str, Any]:
    out = run_dir_for(recipe.name, ov, seed, options.runs_dir)
    ckpt = out / "checkpoint"
    metrics_path = out / "metrics.json"
    finished, resuming = open_run_folder(out, options, ckpt.with_suffix(".json"), "from its last checkpoint")
    if finished is not None:
        return finished

    seed_everything(seed)
    device = resolve_device(options.device or recipe.device)
    method = build_method(recipe, data, device)
    config = recipe.model_dump(mode="json")
    config.update({
        "seed": seed, "overrides": ov, "variant": variant_label(ov), "selection_rule": "last",
        "resolved": {"device": str(device), "hparams": _plain_hparams(recipe), "data": data.info,
                     "versions": versions(), "platform": platform.platform()},
    })
    if resuming:
        _check_same(out / "config.yaml", config)
    atomic_write_yaml(out / "config.yaml", config)

    start, elapsed = 0, 0.0
    if resuming:
        state = load_state(ckpt, device="cpu")
        method.load_state_dict(state["model"])
        for name, opt in method.optimizers().items():
            opt.load_state_dict(state["optim"][name])
        torch.set_rng_state(state["rng"])
        start, elapsed = int(state["iteration"]), float(state["elapsed"])
        kept = [r for r in read_jsonl(out / "results.jsonl") if r.get("step", 0) <= start]
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        log.info("resuming %s at iteration %d", out, start)
    elif (out / "results.jsonl").exists():
        (out / "results.jsonl").unlink()

    t = recipe.train
    make_batch = BatchMaker(method, recipe, data.train, seed, device)
    last_train: dict[str, float] = {}
    try:
        it = start
        while it < t.iterations:
            stop = min(t.iterations, (it // t.eval_every + 1) * t.eval_every)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for i in range(it, stop):
                method.set_progress(i / t.iterations)
                batch = make_batch(i)
                with train_autocast(device, t.precision):
                    losses = method.update(batch)
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    raise TrainingError(
                        f"The loss became {', '.join(f'{k}={v}' for k, v in bad.items())} at iteration {i + 1} of "
                        f"{out}. Training diverged: lower the learning rate (now train.lr={t.lr}) or change the "
                        "method's hyper-parameters. The checkpoint of the last evaluation is intact; after fixing, "
                        "rerun with --overwrite."
                    )
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
            elapsed += time.perf_counter() - t0
            last_train = {f"train/{k}": v / (stop - it) for k, v in sums.items()}
            it = stop
            log.info("%s seed %d: iteration %d/%d, %.1f s, %s", recipe.name, seed, it, t.iterations, elapsed,
                     ", ".join(f"{k}={v:.4g}" for k, v in last_train.items()))
            if it < t.iterations:
                metrics, _ = evaluate_all(method, recipe, data, device, quick=True)
                log.info("%s seed %d: %s", recipe.name, seed, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                append_jsonl(out / "results.jsonl", {"epoch": it // t.eval_every - 1, "step": it,
                                                     "elapsed_s": round(elapsed, 3),
                                                     "metrics": {**last_train, **metrics}})
                _save(method, ckpt, it, elapsed)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"Interrupted (Ctrl-C) during {out}. Everything up to the last evaluation is saved in "
            f"{ckpt.with_suffix('.json').name}; run the same command with --resume to continue."
        ) from None

    t_eval = time.perf_counter()
    final, episodes = evaluate_all(method, recipe, data, device, quick=False)
    eval_seconds = time.perf_counter() - t_eval
    last_epoch = max(math.ceil(t.iterations / t.eval_every) - 1, 0)
    append_jsonl(out / "results.jsonl", {"epoch": last_epoch, "step": t.iterations, "elapsed_s": round(elapsed, 3),
                                         "metrics": {**last_train, **final}})
    _save(method, ckpt, t.iterations, elapsed)
    metrics = {
        "recipe": recipe.name,
        "variant": variant_label(ov),
        "overrides": ov,
        "seed": seed,
        "method": recipe.method.name,
        "backbone": recipe.backbone.name,
        "selection": "last: the model after the last meta-training iteration",
        "selected_epoch": last_epoch,
        "metrics": final,
        "episodes": episodes,
        "seconds": round(elapsed, 3),
        "eval_seconds": round(eval_seconds, 3),
        "iterations": t.iterations,
    }
    _plot(out, recipe, ov)
    atomic_write_json(metrics_path, metrics)
    return metrics


def evaluate_run(
    run_dir: str | Path,
    overrides: dict[str, Any] | Sequence[str] | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    reuse: bool = False,
) -> dict[str, Any]:
    """Evaluate a finished few-shot run's final checkpoint again, with other ``eval.*`` settings
    (more episodes, other sets, ``eval.tta_shift``), without training.

    Writes ``<run_dir>/eval-<overrides id>.json`` (atomically; ``metrics.json`` and the
    checkpoint are not touched) with the metrics and per-episode values, and returns it
    (``reuse``: return that file when it exists instead of evaluating again). With no
    overrides the result equals the run's own ``metrics.json`` (same episodes).

    Raises:
        RecipeError: an override outside ``eval.*`` (it would describe another model).
        ShiftlabError: ``run_dir`` is not a finished few-shot run.
    """
    run_dir = Path(run_dir)
    ov = _eval_overrides(overrides)
    cfg, recipe, ov = _finished_run(run_dir, ov)
    out = run_dir / f"eval-{overrides_id(ov)}.json"
    if reuse and out.is_file():
        return json.loads(out.read_text())
    t0 = time.perf_counter()
    dev = resolve_device(device)
    data = prepare(recipe, data_dir)
    method = _trained(recipe, data, dev, run_dir)
    metrics, episodes = evaluate_all(method, recipe, data, dev, quick=False)
    result = {"run": str(run_dir), "seed": cfg.get("seed"), "method": recipe.method.name,
              "train_overrides": cfg.get("overrides", {}), "eval_overrides": ov, "metrics": metrics,
              "episodes": episodes, "eval_seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(out, result)
    return result


def evaluate_ensemble(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    overrides: dict[str, Any] | Sequence[str] | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
    reuse: bool = False,
) -> dict[str, Any]:
    """Evaluate the :class:`~shiftlab.methods.fewshot.ensemble.FewShotEnsemble` of finished
    few-shot runs (mean log-probability of the members) on the first run's evaluation sets
    (with ``eval.*`` overrides); writes ``out`` (JSON, atomically) and returns it
    (``reuse``: return ``out`` when it exists instead of evaluating again).

    Raises:
        RecipeError: a non-``eval.*`` override, or runs with different data (``data:``
            sections), or a member that adapts per episode (MAML, Reptile).
        ShiftlabError: a run folder is not a finished few-shot run.
    """
    from shiftlab.methods.fewshot.ensemble import FewShotEnsemble

    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise RecipeError("an ensemble needs at least two finished runs")
    if reuse and Path(out).is_file():
        return json.loads(Path(out).read_text())
    ov = _eval_overrides(overrides)
    runs = [_finished_run(d, ov) for d in dirs]
    first = runs[0][1]
    for d, (_, r, _) in zip(dirs[1:], runs[1:], strict=True):
        if r.data != first.data:
            raise RecipeError(f"{d} was trained on other data than {dirs[0]} (their `data:` sections differ); "
                              "an ensemble's members must share the data and image size.")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    data = prepare(first, data_dir)
    try:
        ensemble = FewShotEnsemble([_trained(r, data, dev, d) for d, (_, r, _) in zip(dirs, runs, strict=True)])
    except ValueError as exc:
        raise RecipeError(f"cannot ensemble these runs: {exc}") from None
    metrics, episodes = evaluate_all(ensemble, first, data, dev, quick=False)  # type: ignore[arg-type]
    result = {"runs": [str(d) for d in dirs], "members": [{"method": r.method.name, "seed": c.get("seed"),
                                                            "train_overrides": c.get("overrides", {})}
                                                           for c, r, _ in runs],
              "eval_overrides": runs[0][2], "combination": "mean of the members' log-softmax",
              "metrics": metrics, "episodes": episodes, "eval_seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(Path(out), result)
    return result


def _eval_overrides(overrides: dict[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    ov = normalise_overrides(overrides)
    bad = [k for k in ov if k != "eval" and not k.startswith("eval.")]
    if bad:
        raise RecipeError(f"evaluating a trained run takes eval.* overrides only; {', '.join(bad)} would "
                          "change the model: train it with `shiftlab run RECIPE --set ...` instead.")
    return ov


def _finished_run(run_dir: Path, ov: dict[str, Any]) -> tuple[dict[str, Any], FewShotRecipe, dict[str, Any]]:
    """``(config.yaml, its recipe with the eval overrides, normalised overrides)`` of a finished run."""
    cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoint"
    if not all(f.is_file() for f in (run_dir / "metrics.json", ckpt.with_suffix(".json"), cfg_path)):
        raise ShiftlabError(f"{run_dir} is not a finished run (it needs config.yaml, metrics.json and its checkpoint); "
                            "finish it with `shiftlab run RECIPE --resume` first.")
    cfg = yaml.safe_load(cfg_path.read_text())
    if not isinstance(cfg, dict) or cfg.get("kind") != "fewshot":
        raise ShiftlabError(f"{cfg_path} is not a few-shot run (kind: {cfg.get('kind') if isinstance(cfg, dict) else None}).")
    raw = {k: v for k, v in cfg.items() if k in FewShotRecipe.model_fields}
    recipe, ov = load_fewshot_recipe(raw, ov)
    return cfg, recipe, ov


def _trained(recipe: FewShotRecipe, data: PreparedData, device: torch.device, run_dir: Path) -> FewShotMethod:
    method = build_method(recipe, data, device)
    method.load_state_dict(load_state(run_dir / "checkpoint", device="cpu")["model"])
    return method


def _save(method: FewShotMethod, ckpt: Path, iteration: int, elapsed: float) -> None:
    save_state(ckpt, {"model": dict(method.state_dict()),
                      "optim": {k: o.state_dict() for k, o in method.optimizers().items()},
                      "rng": torch.get_rng_state(), "iteration": iteration, "elapsed": elapsed})


def _check_same(path: Path, config: dict[str, Any]) -> None:
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return
    ignore = {"seeds", "device", "resolved", "description"}
    changed = sorted(k for k in set(old) | set(config) if k not in ignore and old.get(k) != config.get(k))
    if changed:
        raise RunExists(
            f"The recipe changed since the run in {path.parent} started (different: {', '.join(changed)}). "
            "--resume continues a run only with the same recipe: restore it, or pass --overwrite."
        )


def _plot(out: Path, recipe: FewShotRecipe, ov: dict[str, Any]) -> None:
    try:
        from shiftlab.plots import learning_curves

        learning_curves(read_jsonl(out / "results.jsonl"), out / "curves.png",
                        title=f"{recipe.name} ({variant_label(ov)})")
    except Exception as exc:  # a plot must never lose a finished run
        log.warning("could not draw curves.png: %s", exc)


# ----------------------------------------------------------------------------- demo


def demo_recipe(iterations: int = 150) -> dict[str, Any]:
    """The demo's few-shot recipe: ProtoNet meta-trained on digits 0-4, tested 5-way 1-shot on 5-9."""
    return {
        "kind": "fewshot",
        "name": "demo-fewshot-digits",
        "description": "ProtoNet on embedded digits: meta-train on 0-4, test 5-way 1-shot on the unseen 5-9",
        "data": {"source": "digits", "splits": ["train"], "class_split": "50-50", "split_shuffle": False,
                 "image_size": 28, "channels": 1},
        "backbone": {"name": "conv4"},
        "method": {"name": "protonet"},
        "train": {"iterations": iterations, "way": 5, "shot": 5, "query": 10, "lr": 1e-3,
                  "eval_every": iterations, "eval_episodes": 100},
        "eval": {"sets": [{"name": "digits5-9", "ways": [5], "shots": [1, 5], "query": 15, "episodes": 600}]},
        "seeds": [0],
    }


def demo_stage(out_dir: str | Path, iterations: int = 150) -> tuple[list[str], list[Path]]:
    """``shiftlab demo``'s few-shot stage: 5-way 1-shot on unseen embedded digits, in seconds.

    ProtoNet with a Conv-4 backbone is meta-trained for 150 5-way 5-shot episodes on the
    digits 0-4 of the embedded ``digits`` training split and tested on 600 5-way 1-shot
    and 5-shot episodes of the digits 5-9 (never seen in meta-training).

    Returns:
        Markdown lines and the PNG paths written into ``out_dir``.
    """
    from shiftlab import plots

    out = Path(out_dir)
    raw = demo_recipe(iterations)
    opts = RunOptions(runs_dir=out / "runs", overwrite=True, progress=False)
    t0 = time.perf_counter()
    metrics = run_fewshot(raw, {}, opts, [0])[0]
    seconds = time.perf_counter() - t0
    rows = []
    labels, means, cis = [], [], []
    for k in (1, 5):
        key = f"digits5-9/5w{k}s/acc"
        s = summarize(metrics["episodes"][key])
        rows.append(f"| 5-way {k}-shot | {100 * s.mean:.2f} ± {100 * s.ci95:.2f} | {s.n} |")
        labels.append(f"5w{k}s")
        means.append(100 * s.mean)
        cis.append(100 * s.ci95)
    pngs = [plots.bar_with_ci(labels, means, cis, out / "fewshot_accuracy.png", ylabel="accuracy (%)",
                              title="ProtoNet on unseen digits 5-9 (chance 20%)")]
    # one test episode: support row then its queries
    recipe, _ = load_fewshot_recipe(raw)
    data = prepare(recipe)
    ep = EpisodeSampler(data.evals["digits5-9"], 5, 1, 3).sample(torch.Generator().manual_seed(0))
    grid = torch.cat([ep.support_x, ep.query_x.view(5, 3, *ep.query_x.shape[1:]).transpose(0, 1).reshape(-1, *ep.query_x.shape[1:])])
    titles = [f"support {c}" for c in range(5)] + [f"query {c}" for _ in range(3) for c in range(5)]
    pngs.append(plots.image_grid(grid, titles, out / "fewshot_episode.png", ncols=5,
                                 title="a 5-way 1-shot test episode (digits 5-9)"))
    lines = [
        "### Few-shot stage: 5-way 1-shot on unseen digits",
        "",
        f"ProtoNet (Snell et al. 2017) + Conv-4, meta-trained on {iterations} 5-way episodes of digits 0-4, tested on "
        "600 episodes of the unseen digits 5-9 (mean ± 95% CI over episodes; chance 20%).",
        "",
        "| task | accuracy (%) | episodes |",
        "|---|---|---|",
        *rows,
        "",
        f"Time: {seconds:.1f} s",
    ]
    return lines, pngs

