"""Transfer-learning recipes (``kind: transfer``): fine-tune a source model on a subset of a
shifted target, chosen by data-selection strategies.

A ``kind: transfer`` recipe names the **source model** (trained here, loaded or pretrained,
exactly as in ``kind: tta``), the **target** (a labelled training pool and a validation set,
optionally shifted: ``awgn``, ``gaussian_blur``, any corruption, or the seeds'
``embedding_shift``), the **fine-tuning** (mode, schedule, optimizer) and the **selection
grid**: strategies x fractions x re-selection periods, plus fine-tuning on 100% of the pool
as the reference. Example (``recipes/transfer/mnist_to_usps.yaml``, shortened)::

    kind: transfer
    name: transfer-mnist_to_usps
    source:
      dataset: mnist
      backbone: {name: lenet}
      train: {epochs: 2, batch_size: 64, lr: 0.001}
    data: {image_size: 28, channels: 1, fit: resize}
    target:
      dataset: usps                     # pool: the train split (7,291 images)
      val: {split: test}                # validation: the test split (2,007)
    finetune: {epochs: 15, batch_size: 64, optimizer: {name: adam, lr: 0.0005}, hparams: {mode: full}}
    selection:
      strategies: {random: {}, entropy_most: {}, entropy_least: {}, error: {}, differential: {}}
      fractions: [0.25, 0.5]
      reselect_every: [0, 5]            # 0: select once; 5: select again every 5 epochs
      full: true                        # also fine-tune on 100% of the pool
    seeds: [0, 1, 2, 3, 4]

Each configuration is labelled ``<strategy>@<fraction>`` (``/r<k>`` when re-selected every
``k`` epochs), e.g. ``entropy_most@0.5/r5``; ``full`` fine-tunes on everything. Every
configuration starts from the same source model. The selection rule is a fixed schedule: the
reported accuracy is the last epoch's, the validation set is never used to pick anything.

The embedding shift's autoencoder is trained on the source training images (``autoencoder``
section), once for all seeds (its own ``seed``), and cached under
``<runs>/<recipe>/_cache/`` with its config and the hash of its training images. Shifted
images are quantised to uint8. The target domain (shift draws, validation split) is fixed
across seeds; the seeds vary the source model, the selections and the fine-tuning order.

A run writes ``runs/<recipe>/<variant>/seed-<k>/``:

* ``config.yaml``: the resolved recipe (the configurations, sizes, the autoencoder's
  reconstruction error and code scale when the embedding shift is used);
* ``source_model.safetensors`` + ``.json`` when the source is trained here (reused by
  ``--resume``);
* ``results.jsonl``: per configuration, one row per epoch (epoch 0 = the source model before
  fine-tuning): ``{"epoch", "config", "strategy", "fraction", "reselect_every", "k",
  "train_seconds", "select_seconds", "metrics": {"<config>/acc": validation accuracy,
  "<config>/train_loss": mean training loss}}`` (one metric name per configuration, so
  ``shiftlab report`` draws each configuration's learning curve with its CI over seeds);
* ``metrics.json``: ``metrics`` holds ``source/acc`` (the source model on the target
  validation set), ``<config>/acc`` (last epoch), ``<config>/select_overhead`` (selection
  seconds / training seconds of the epochs the selections serve) and, with the embedding
  shift, ``autoencoder/recon_mse``; ``timing`` has every configuration's seconds;
* ``curves.png``: validation accuracy per epoch of every configuration.

With ``--resume`` a finished seed is kept, and an unfinished one continues: the cached
source model is loaded and configurations whose every epoch is in ``results.jsonl`` are not
run again (a configuration that was interrupted restarts from its epoch 0).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Labeled
from shiftlab.config import (
    RunName,
    StrictModel,
    apply_overrides,
    normalise_overrides,
    validate_recipe,
    variant_label,
)
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData, to_float, to_uint8
from shiftlab.data.transforms import fit_dataset
from shiftlab.errors import RecipeError, ShiftlabError, TrainingError
from shiftlab.experiment.run import (
    RunInterrupted,
    RunOptions,
    accuracy,
    open_run_folder,
    run_dir_for,
    run_seeds_locked,
    versions,
)
from shiftlab.experiment.tta_run import DataFit, OptimizerCfg, SourceModel, build_source_model
from shiftlab.io import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    read_jsonl,
)
from shiftlab.methods import create_method, make_hparams
from shiftlab.methods.transfer.selection import SELECTIONS, SelectionContext, create_selection
from shiftlab.seeding import epoch_generator, resolve_device

log = logging.getLogger(__name__)

__all__ = ["TransferRecipe", "load_transfer_recipe", "run_transfer", "config_labels"]

SELECTION_RULE = "fixed schedule: the last epoch's validation accuracy; nothing is picked on the validation set"


# ----------------------------------------------------------------------------- recipe


class TargetShift(StrictModel):
    """The shift that makes the target domain.

    Attributes:
        name: a shift of ``shiftlab list shifts`` (``awgn``, ``gaussian_blur``, a corruption,
            or ``embedding_shift``).
        severity: 1..5 for the registered shifts (ignored by ``embedding_shift``).
        level: the additive code shift of ``embedding_shift`` (0: reconstruction only).
        seed: seed of the shift's random draws (the same target domain for every run seed).
    """

    name: str
    severity: int = Field(default=3, ge=0, le=5)
    level: float = 0.0
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from shiftlab.data.shifts import SHIFTS

        if v not in SHIFTS:
            raise ValueError(f"unknown shift {v!r}; allowed: {', '.join(SHIFTS.names())}")
        return v


class TargetVal(StrictModel):
    """The validation set: a split of a dataset (default: the target's ``test``), or a
    ``fraction`` of the pool held out (fixed across seeds)."""

    dataset: str | None = None
    split: str = "test"
    start: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)
    fraction: float | None = Field(default=None, gt=0, lt=1)


class Target(StrictModel):
    """The labelled target: its training pool (``dataset``/``split`` rows ``start`` to
    ``start + limit``), its validation set and its shift."""

    dataset: str
    split: str = "train"
    start: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1)
    val: TargetVal = Field(default_factory=TargetVal)
    shift: TargetShift | None = None


class AutoencoderCfg(StrictModel):
    """The embedding shift's autoencoder (see :class:`shiftlab.data.embedding_shift.AutoencoderConfig`),
    trained on the source training images, or on ``dataset``/``split`` when set (a source model
    that is loaded or pretrained has no training images here); ``limit``: the first N images."""

    dataset: str | None = None
    split: str = "train"
    code_channels: int = Field(default=8, ge=1)
    width: int = Field(default=32, ge=1)
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0


class FinetuneCfg(StrictModel):
    """How every configuration fine-tunes (the ``finetune`` method's ``hparams``: ``mode``,
    ``freeze_blocks``, ``lr_decay``, ...)."""

    epochs: int = Field(default=15, ge=1)
    batch_size: int = Field(default=64, ge=1)
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    hparams: dict[str, Any] = Field(default_factory=dict)

    @field_validator("hparams")
    @classmethod
    def _valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        make_hparams("finetune", v)
        return v


class StrategySpec(StrictModel):
    """A strategy under a label: ``strategy`` defaults to the label; ``hparams`` its own;
    ``class_balanced``: score-ranked strategies pick within each class, in proportion to the
    pool's class frequencies (see :func:`~shiftlab.methods.transfer.selection.base.rank_top_balanced`)."""

    strategy: str | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)
    class_balanced: bool = False


class SelectionCfg(StrictModel):
    """The selection grid.

    Attributes:
        strategies: label -> spec (``null`` drops a label, e.g. ``--set selection.strategies.kcenter=null``).
        fractions: subset sizes as fractions of the pool, in (0, 1).
        reselect_every: re-selection periods in epochs (0: select once, before epoch 1).
        full: also fine-tune on 100% of the pool (``full``).
        score_batch: images per scoring forward pass (128: the fastest on CPU for the digit
            networks, eager or traced).
        score_backend: ``auto`` (an inference-optimised TorchScript trace on CPU, checked
            against the eager model on the first batch) or ``eager``; see
            :mod:`shiftlab.backbones.inference`. Runs started before 2026-12-03 scored
            ``eager`` with ``score_batch: 1000``; set both to ``--resume`` one of them.
    """

    strategies: dict[str, StrategySpec | None] = Field(default_factory=lambda: {"random": StrategySpec()})
    fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5])
    reselect_every: list[int] = Field(default_factory=lambda: [0])
    full: bool = True
    score_batch: int = Field(default=128, ge=1)
    score_backend: Literal["auto", "eager"] = "auto"

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f < 1 for f in v):
            raise ValueError(f"fractions must be a non-empty list of numbers in (0, 1), got {v}")
        return v

    @field_validator("reselect_every")
    @classmethod
    def _periods(cls, v: list[int]) -> list[int]:
        if not v or any(k < 0 for k in v):
            raise ValueError(f"reselect_every must be a non-empty list of epochs >= 0 (0: once), got {v}")
        return v

    @model_validator(mode="after")
    def _known(self) -> SelectionCfg:
        for label, spec in self.strategies.items():
            if spec is None:
                continue
            name = spec.strategy or label
            if name not in SELECTIONS:
                raise ValueError(f"strategies.{label}: unknown selection {name!r}; allowed: {', '.join(SELECTIONS.names())}")
            create_selection(name, spec.hparams)
            if label == "full" or any(c in label for c in "@/"):
                raise ValueError(f"strategies.{label}: a label may not be 'full' nor contain '@' or '/'")
        return self

    def active(self) -> dict[str, StrategySpec]:
        return {k: v for k, v in self.strategies.items() if v is not None}


class TransferRecipe(StrictModel):
    """A ``kind: transfer`` recipe (see the module doc)."""

    kind: Literal["transfer"] = "transfer"
    name: RunName
    description: str = ""
    source: SourceModel
    data: DataFit = Field(default_factory=DataFit)
    target: Target
    autoencoder: AutoencoderCfg = Field(default_factory=AutoencoderCfg)
    finetune: FinetuneCfg = Field(default_factory=FinetuneCfg)
    selection: SelectionCfg = Field(default_factory=SelectionCfg)
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "auto"


def load_transfer_recipe(
    raw: dict[str, Any], overrides: dict[str, Any] | Sequence[str] | None = None
) -> tuple[TransferRecipe, dict[str, Any]]:
    """Validate a ``kind: transfer`` mapping with ``--set`` overrides applied.

    Raises:
        RecipeError: naming the bad key, its value and the allowed ones.
    """
    ov = normalise_overrides(overrides)
    what = f"transfer recipe {raw.get('name', '<unnamed>')!r}"
    return validate_recipe(TransferRecipe, apply_overrides(raw, ov), what), ov


@dataclass(frozen=True)
class Config:
    """One fine-tuning configuration of the grid."""

    label: str
    strategy: str | None      # label in selection.strategies; None for full
    fraction: float
    reselect_every: int


def config_labels(recipe: TransferRecipe) -> list[Config]:
    """The grid in run order: ``full`` first, then strategy-major, fraction, period."""
    out = [Config("full", None, 1.0, 0)] if recipe.selection.full else []
    for label in recipe.selection.active():
        for f in recipe.selection.fractions:
            for r in recipe.selection.reselect_every:
                out.append(Config(f"{label}@{f:g}" + (f"/r{r}" if r else ""), label, f, r))
    return out


# ----------------------------------------------------------------------------- data


@dataclass
class TransferData:
    """Source training set, target pool and validation set, fitted and shifted."""

    source: TensorData | None
    pool: TensorData
    val: TensorData
    info: dict[str, Any]


def _shift_images(x: Tensor, shift: TargetShift, stream: int, ae: Any, chunk: int = 1000) -> Tensor:
    from shiftlab.data.shifts import apply_shift

    gen = epoch_generator(shift.seed, 20_000 + zlib.crc32(shift.name.encode()) % 100_000, stream)
    parts = []
    for i in range(0, len(x), chunk):
        xb = to_float(x[i : i + chunk])
        out = ae(xb, shift.level) if shift.name == "embedding_shift" else apply_shift(shift.name, xb, shift.severity, gen)
        parts.append(to_uint8(out))
    return torch.cat(parts) if parts else x.clone()


def load_transfer_data(recipe: TransferRecipe, options: RunOptions, cache_dir: Path) -> TransferData:
    """Load, fit and shift the recipe's sets (the autoencoder is trained or loaded from ``cache_dir``)."""
    d, t = recipe.data, recipe.target
    loaded: dict[tuple[str, str], TensorData] = {}

    def get(name: str, split: str) -> TensorData:
        if (name, split) not in loaded:
            raw = load_dataset(name, split, data_dir=options.data_dir, download=options.download)
            loaded[(name, split)] = fit_dataset(raw, d.image_size, d.channels, d.fit)
        return loaded[(name, split)]

    def rows(data: TensorData, start: int, limit: int | None, what: str) -> TensorData:
        stop = len(data) if limit is None else start + limit
        if start >= len(data) or stop > len(data):
            raise RecipeError(f"{what}: rows {start}..{stop} do not fit in {data.name}/{data.split} ({len(data)} images).")
        return data.subset(slice(start, stop))

    source = None
    s = recipe.source
    if s.dataset:
        source = get(s.dataset, s.split)
        if s.train.limit:
            source = source.subset(slice(0, s.train.limit))
    pool = rows(get(t.dataset, t.split), t.start, t.limit, "target")
    if t.val.fraction is not None:
        perm = torch.randperm(len(pool), generator=epoch_generator(0, -1, 17))
        n_val = max(1, round(len(pool) * t.val.fraction))
        val = pool.subset(perm[:n_val], split=f"{t.split}-val")
        pool = pool.subset(perm[n_val:])
    else:
        val = rows(get(t.val.dataset or t.dataset, t.val.split), t.val.start, t.val.limit, "target.val")
    info: dict[str, Any] = {"pool": len(pool), "val": len(val), "source_train": len(source) if source else 0}
    if t.shift is not None:
        ae = None
        if t.shift.name == "embedding_shift":
            from shiftlab.data.embedding_shift import (
                AutoencoderConfig,
                EmbeddingShift,
                cached_autoencoder,
            )

            a = recipe.autoencoder
            ae_images = get(a.dataset, a.split).x if a.dataset else (source.x if source is not None else None)
            if ae_images is None:
                raise RecipeError("target.shift embedding_shift trains its autoencoder on the source images: "
                                  "set source.dataset, or autoencoder.dataset.")
            cfg = AutoencoderConfig(a.code_channels, a.width, a.epochs, a.batch_size, a.lr, a.limit)
            model, ae_info = cached_autoencoder(ae_images, cfg, cache_dir, seed=a.seed,
                                                device=resolve_device(options.device or recipe.device))
            ae = EmbeddingShift(model)
            info["autoencoder"] = asdict(ae_info)
            log.info("autoencoder (%s): reconstruction mse %.5f, code std %.3f", ae_info.origin, ae_info.recon_mse,
                     ae_info.code_std)
        clean_val = val.x
        pool = pool.with_x(_shift_images(pool.x, t.shift, 0, ae), shift=t.shift.model_dump())
        val = val.with_x(_shift_images(val.x, t.shift, 1, ae), shift=t.shift.model_dump())
        info["shift_mean_abs_change"] = float((val.x.float() - clean_val.float()).abs().mean() / 255.0)
    return TransferData(source, pool, val, info)


# ----------------------------------------------------------------------------- training


class _Finetuner:
    """Builds and trains ``finetune`` methods with the recipe's settings."""

    def __init__(self, recipe: TransferRecipe, num_classes: int, device: torch.device) -> None:
        self.cfg = recipe.finetune
        self.num_classes = num_classes
        self.device = device

    def method(self, model: Backbone, steps_per_epoch: int, epochs: int) -> Any:
        m = create_method("finetune", backbone=model, num_classes=self.num_classes, hparams=self.cfg.hparams,
                          optimizer=self.cfg.optimizer.factory()).to(self.device)
        m.set_schedule(epochs, steps_per_epoch)
        return m

    def epoch(self, method: Any, data: TensorData, gen: torch.Generator, epoch: int, epochs: int,
              where: str) -> float:
        """One epoch over ``data`` (shuffled by ``gen``); returns the mean loss."""
        bs = self.cfg.batch_size
        steps = math.ceil(len(data) / bs)
        total = 0.0
        for i, b in enumerate(data.batches(bs, shuffle=True, generator=gen, device=self.device)):
            method.set_progress(((epoch - 1) * steps + i) / (epochs * steps))
            loss = method.update(Labeled(b.x, b.y))["loss"]
            if not math.isfinite(loss):
                raise TrainingError(f"{where}: the fine-tuning loss is {loss} at epoch {epoch}, step {i + 1}; "
                                    "lower finetune.optimizer.lr.")
            total += loss
        return total / max(steps, 1)

    def brief(self, pool: TensorData, epochs: int) -> Any:
        """The differential strategy's probe: fine-tune a copy of ``model`` on ``idx``."""

        def run(model: Backbone, idx: Tensor, seed: int) -> Backbone:
            probe = copy.deepcopy(model)
            sub = pool.subset(idx)
            m = self.method(probe, math.ceil(len(sub) / self.cfg.batch_size), epochs)
            for e in range(1, epochs + 1):
                self.epoch(m, sub, epoch_generator(seed, e, 5), e, epochs, "differential probe")
            return probe.eval()

        return run


# ----------------------------------------------------------------------------- running


def run_transfer(
    raw_recipe: dict[str, Any],
    overrides: dict[str, Any] | Sequence[str] | None,
    options: RunOptions,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Run a ``kind: transfer`` recipe for ``seeds`` (default: the recipe's); returns each ``metrics.json``.

    Raises:
        RecipeError: invalid recipe. RunExists: the folder holds a run (see ``--resume``).
        DataError: missing data. TrainingError: a NaN loss. RunInterrupted: Ctrl-C.
    """
    recipe, ov = load_transfer_recipe(raw_recipe, overrides)
    cache_dir = Path(options.runs_dir) / recipe.name / "_cache"
    data = load_transfer_data(recipe, options, cache_dir)
    if len(data.pool) < 2:
        raise ShiftlabError(f"The target pool has {len(data.pool)} images; fine-tuning needs more.")
    return run_seeds_locked(seeds if seeds is not None else recipe.seeds,
                            lambda s: run_dir_for(recipe.name, ov, s, options.runs_dir),
                            lambda s: _run_seed(recipe, ov, data, options, s))


def _run_seed(recipe: TransferRecipe, ov: dict[str, Any], data: TransferData, options: RunOptions,
              seed: int) -> dict[str, Any]:
    from shiftlab.experiment.tta_run import _check_same

    out = run_dir_for(recipe.name, ov, seed, options.runs_dir)
    finished, resuming = open_run_folder(
        out, options, None, "the cached source model and the finished configurations are kept")
    if finished is not None:
        return finished
    t_start = time.perf_counter()
    device = resolve_device(options.device or recipe.device)
    configs = config_labels(recipe)
    num_classes = int(recipe.source.backbone.args.get("num_classes", 0)) or (
        data.source.num_classes if data.source is not None else recipe.source.num_classes)
    config = recipe.model_dump(mode="json")
    config.update({
        "seed": seed, "overrides": ov, "variant": variant_label(ov), "selection_rule": SELECTION_RULE,
        "resolved": {"device": str(device), "configs": [asdict(c) for c in configs], "data": data.info,
                     "subset_sizes": {c.label: _subset_size(c, len(data.pool)) for c in configs},
                     "finetune_hparams": asdict(make_hparams("finetune", recipe.finetune.hparams)),
                     "data_dir": options.data_dir, "versions": versions(), "platform": platform.platform()},
    })
    if resuming:
        _check_same(out / "config.yaml", config, _without_new_defaults)
    atomic_write_yaml(out / "config.yaml", config)

    source, src_info = build_source_model(recipe, seed, num_classes, device, data.source,  # type: ignore[arg-type]
                                          out / "source_model", options.data_dir)
    source_acc = accuracy(source, data.val, 1000, device)
    log.info("%s seed %d: source model (%s) accuracy on the target validation set %.4f", recipe.name, seed,
             src_info.origin, source_acc)

    results_path = out / "results.jsonl"
    rows: list[dict[str, Any]] = []
    if resuming and results_path.exists():
        by_cfg: dict[str, list[dict[str, Any]]] = {}
        for r in read_jsonl(results_path):
            by_cfg.setdefault(r["config"], []).append(r)
        complete = {c: rs for c, rs in by_cfg.items() if {r["epoch"] for r in rs} >= set(range(recipe.finetune.epochs + 1))}
        rows = [r for rs in complete.values() for r in rs]
        atomic_write_text(results_path, "".join(json.dumps(r) + "\n" for r in rows))
    elif results_path.exists():
        results_path.unlink()
    done = {r["config"] for r in rows}

    tuner = _Finetuner(recipe, num_classes, device)
    try:
        for cfg in configs:
            if cfg.label in done:
                continue
            new = _run_config(recipe, cfg, source, source_acc, data, tuner, seed, device)
            for r in new:
                append_jsonl(results_path, r)
            rows += new
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"Interrupted (Ctrl-C) during {out}. The finished configurations are in results.jsonl and the source "
            "model is cached; run the same command with --resume to continue."
        ) from None

    metrics, timing = _summarize(configs, rows, source_acc, data.info)
    result = {
        "recipe": recipe.name, "variant": variant_label(ov), "overrides": ov, "seed": seed, "method": "transfer",
        "backbone": recipe.source.backbone.name, "selection": SELECTION_RULE, "metrics": metrics, "timing": timing,
        "source": {"origin": src_info.origin, "train_seconds": round(src_info.train_seconds, 3),
                   "train_images": src_info.train_images},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    _plot(out, recipe, configs, rows)
    atomic_write_json(out / "metrics.json", result)
    return result


def _without_new_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The config as runs started before ``class_balanced`` and ``score_backend`` existed wrote
    it (when they are off / ``eager``), so that ``--resume`` accepts them. (Those runs scored
    eagerly with 1,000 images per pass: a recipe with ``selection: {score_batch: 1000,
    score_backend: eager}`` resumes them exactly.)"""
    out = copy.deepcopy(config)
    if out.get("selection", {}).get("score_backend") == "eager":
        del out["selection"]["score_backend"]
    for spec in (out.get("selection", {}).get("strategies") or {}).values():
        if isinstance(spec, dict) and spec.get("class_balanced") is False:
            del spec["class_balanced"]
    return out


def _subset_size(cfg: Config, n: int) -> int:
    return n if cfg.strategy is None else max(1, min(n, round(cfg.fraction * n)))


def _run_config(recipe: TransferRecipe, cfg: Config, source: Backbone, source_acc: float,
                data: TransferData, tuner: _Finetuner, seed: int, device: torch.device) -> list[dict[str, Any]]:
    """Fine-tune one configuration from the source model; returns its rows (epochs 0..E)."""
    epochs = recipe.finetune.epochs
    n = len(data.pool)
    k = _subset_size(cfg, n)
    spec = recipe.selection.active()[cfg.strategy] if cfg.strategy else None
    name = (spec.strategy or cfg.strategy) if spec is not None else None
    strategy = create_selection(name, spec.hparams) if spec is not None and name else None
    stream = zlib.crc32(cfg.label.encode()) % 1_000_003  # the configuration's own streams, whatever the grid
    sel_gen = epoch_generator(seed, 1000 + stream, 3)
    torch.manual_seed(seed * 7919 + stream)
    model = copy.deepcopy(source)
    method = tuner.method(model, math.ceil(k / recipe.finetune.batch_size), epochs)
    brief = None
    if strategy is not None and name == "differential":
        brief = tuner.brief(data.pool, int(getattr(strategy.hparams, "probe_epochs", 1)))

    def select() -> tuple[TensorData, float]:
        if strategy is None:
            return data.pool, 0.0
        t0 = time.perf_counter()
        ctx = SelectionContext(model=model, pool=data.pool, brief_finetune=brief, device=device,
                               batch_size=recipe.selection.score_batch,
                               backend=recipe.selection.score_backend,
                               class_balanced=bool(spec and spec.class_balanced))
        idx = strategy.select(ctx, k, sel_gen)
        log.debug("%s: selection scored by the %s backend", cfg.label, ctx.backend_used)
        if idx.numel() != k or torch.unique(idx).numel() != k:
            raise ShiftlabError(f"selection {cfg.strategy!r} returned {idx.numel()} indices "
                                f"({torch.unique(idx).numel()} distinct), not {k}")
        return data.pool.subset(idx), time.perf_counter() - t0

    subset, sel_s = select()
    rows = [_row(cfg, 0, k, source_acc, None, 0.0, sel_s)]
    where = f"{recipe.name} seed {seed} {cfg.label}"
    for epoch in range(1, epochs + 1):
        sel_s = 0.0
        if cfg.reselect_every and epoch > 1 and (epoch - 1) % cfg.reselect_every == 0:
            subset, sel_s = select()
        t0 = time.perf_counter()
        loss = tuner.epoch(method, subset, epoch_generator(seed, epoch, 100 + stream), epoch, epochs, where)
        train_s = time.perf_counter() - t0
        acc = accuracy(model, data.val, 1000, device)
        rows.append(_row(cfg, epoch, k, acc, loss, train_s, sel_s))
    log.info("%s: validation accuracy %.4f after %d epochs", where, rows[-1]["metrics"][f"{cfg.label}/acc"], epochs)
    return rows


def _row(cfg: Config, epoch: int, k: int, acc: float, loss: float | None, train_s: float,
         sel_s: float) -> dict[str, Any]:
    metrics: dict[str, float] = {f"{cfg.label}/acc": acc}
    if loss is not None:
        metrics[f"{cfg.label}/train_loss"] = loss
    return {"epoch": epoch, "config": cfg.label, "strategy": cfg.strategy or "full", "fraction": cfg.fraction,
            "reselect_every": cfg.reselect_every, "k": k, "train_seconds": round(train_s, 4),
            "select_seconds": round(sel_s, 4), "metrics": metrics}


def _summarize(configs: list[Config], rows: list[dict[str, Any]], source_acc: float,
               info: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    metrics: dict[str, float] = {"source/acc": source_acc}
    if "autoencoder" in info:
        metrics["autoencoder/recon_mse"] = float(info["autoencoder"]["recon_mse"])
    timing: dict[str, dict[str, float]] = {}
    for cfg in configs:
        rs = sorted((r for r in rows if r["config"] == cfg.label), key=lambda r: r["epoch"])
        metrics[f"{cfg.label}/acc"] = float(rs[-1]["metrics"][f"{cfg.label}/acc"])
        train_s = sum(float(r["train_seconds"]) for r in rs)
        sel_s = sum(float(r["select_seconds"]) for r in rs)
        if cfg.strategy is not None:
            metrics[f"{cfg.label}/select_overhead"] = sel_s / train_s if train_s > 0 else float("nan")
        timing[cfg.label] = {"train_seconds": round(train_s, 3), "select_seconds": round(sel_s, 3)}
    return metrics, timing


def _plot(out: Path, recipe: TransferRecipe, configs: list[Config], rows: list[dict[str, Any]]) -> None:
    try:
        from shiftlab.plots import Curve, curves_with_band

        curves = []
        for cfg in configs:
            rs = sorted((r for r in rows if r["config"] == cfg.label), key=lambda r: r["epoch"])
            curves.append(Curve(cfg.label, [r["epoch"] for r in rs],
                                [100 * r["metrics"][f"{cfg.label}/acc"] for r in rs]))
        curves_with_band(curves, out / "curves.png", ylabel="validation accuracy (%)",
                         title=f"{recipe.name}: fine-tuning on selected subsets")
    except Exception as exc:  # a plot must never lose a finished run
        log.warning("could not draw curves.png: %s", exc)


# ----------------------------------------------------------------------------- demo


def demo_recipe() -> dict[str, Any]:
    """The demo's selection stage: a LeNet trained on ``digits`` (16 px) fine-tuned on
    ``digits_m`` (the same digits on photo patches): 25% of the pool chosen at random, by
    highest entropy and by k-center, against 100%."""
    return {
        "kind": "transfer",
        "name": "demo-transfer-digits",
        "description": "data selection: fine-tune a digits model on 25% of digits_m chosen by each strategy",
        "source": {"dataset": "digits", "backbone": {"name": "lenet"},
                   "train": {"epochs": 6, "batch_size": 32, "lr": 0.002}},
        "data": {"image_size": 16, "channels": 3, "fit": "resize"},
        "target": {"dataset": "digits_m", "split": "train", "val": {"split": "test"}},
        "finetune": {"epochs": 6, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.002}},
        "selection": {"strategies": {"random": {}, "entropy_most": {}, "kcenter": {}}, "fractions": [0.25],
                      "reselect_every": [0], "full": True},
        "seeds": [0],
        "device": "cpu",
    }


def demo_stage(out_dir: str | Path) -> tuple[list[str], dict[str, float], list[Path]]:
    """``shiftlab demo``'s data-selection stage (a few seconds on one core): see :func:`demo_recipe`.

    Returns:
        Markdown lines, metrics (``transfer/<config>/acc``) and the PNG written into ``out_dir``.
    """
    import shutil

    out = Path(out_dir)
    t0 = time.perf_counter()
    raw = demo_recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = run_transfer(raw, {}, RunOptions(runs_dir=out / "runs", overwrite=True, progress=False), [0])[0]
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    run = out / "runs" / raw["name"] / "default" / "seed-0"
    figs = []
    if (run / "curves.png").is_file():
        figs.append(Path(shutil.copyfile(run / "curves.png", out / "transfer_curves.png")))
    recipe, _ = load_transfer_recipe(raw)
    labels = [c.label for c in config_labels(recipe)]
    lines = [
        "### Data-selection stage: fine-tuning on 25% of a shifted target",
        "",
        f"A LeNet trained on `digits` ({100 * m['metrics']['source/acc']:.1f}% on the `digits_m` test set before "
        "fine-tuning), fine-tuned 6 epochs on `digits_m` with a quarter of the pool chosen by each strategy, "
        "against the whole pool:",
        "",
        "| configuration | accuracy (%) | selection / training time |",
        "|---|---:|---:|",
        *(f"| {lb} | {100 * m['metrics'][f'{lb}/acc']:.1f} | "
          + (f"{100 * m['metrics'][f'{lb}/select_overhead']:.1f}%" if f"{lb}/select_overhead" in m["metrics"] else "-")
          + " |" for lb in labels),
        "",
        f"Time: {seconds:.1f} s",
    ]
    return lines, {f"transfer/{lb}/acc": m["metrics"][f"{lb}/acc"] for lb in labels}, figs
