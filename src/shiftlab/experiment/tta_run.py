"""Test-time adaptation recipes (``kind: tta``): one source model, many shifts, many methods.

A ``kind: tta`` recipe names the **source model** (trained here on a labelled dataset,
loaded from a checkpoint, or built pretrained by its backbone), the **evaluation set**
and its **shifts** (the 15 corruptions x severities, built on the fly and seeded, and/or
natural shifts: other datasets such as the real MNIST-M test set), the **methods** to
compare (each with its hyper-parameters, optimizer and optionally its own protocol,
batch size and test-set limit) and the **protocol**. Example (``recipes/tta/mnist_c.yaml``,
shortened)::

    kind: tta
    name: tta-mnist_c
    source:
      dataset: mnist                               # trained here (cached per seed)
      backbone: {name: dann_cnn, args: {norm: true}}
      train: {epochs: 2, batch_size: 64, optimizer: adam, lr: 0.001}
    data: {image_size: 28, channels: 1, fit: pad}
    eval:
      dataset: {name: mnist, split: test}
      corruptions: all                             # or a list of names
      severities: [5]
      table: imagenet
    methods:
      source: {}
      norm: {}
      tent: {optimizer: {name: adam, lr: 0.001}}
      memo: {hparams: {hflip: false, crop_padding: 2}, limit: 1000}
      memo_nobn: {method: memo, hparams: {bn_prior: null}}   # a second variant of one method
    protocol: online
    batch_size: 64
    seeds: [0, 1, 2]

``methods`` maps a label (the name in tables) to a spec whose ``method`` defaults to the
label; ``--set methods.cotta=null`` drops one, ``--set methods.tent.hparams.steps=3``
changes one. Protocols: ``online`` (Tent's: the method adapts batch after batch and is
reset before each shift), ``continual`` (CoTTA's: one stream over all shifts in order,
reset once), ``episodic`` (reset before every batch) and ``single`` (batch size 1, reset
per sample: MEMO's). Each shift is built from a generator seeded by the run's seed and
the shift's name and severity, so every method sees the same corrupted images, and a
resumed run sees what the first attempt saw.

A run writes ``runs/<recipe>/<variant>/seed-<k>/``:

* ``config.yaml``: the resolved recipe (every method's hyper-parameters and optimizer);
* ``source_model.safetensors`` + ``source_model.json`` when the source is trained here
  (``resume`` reuses it, so each seed trains once);
* ``results.jsonl``: one line per (method, shift, severity), written as each finishes:
  ``{"epoch": 0, "step", "method", "method_name", "segment", "shift", "severity", "set", "kind",
  "protocol", "batch_size", "n", "seconds", "metrics": {"acc", "err"}}``;
* ``metrics.json``: ``metrics`` holds ``clean/acc`` (the source model on the clean
  evaluation set), ``<label>/err`` (mean error over the corruption shifts; over the
  natural shifts when there is no corruption), ``<label>/sev<k>/err`` (per severity,
  when several), ``<label>/<set>/err`` (each natural shift; ``<label>/natural/err``
  their mean when there are corruptions too and several natural sets) and
  ``per_shift/<corruption>-<severity>/<label>/err``; ``per_shift`` repeats the latter
  as ``{label: {shift: err}}`` and ``method_seconds`` the time of each method;
* ``errors.png``: error per corruption and method at the highest severity (the natural
  shifts when there is no corruption).

With ``resume``, a finished seed is kept, and an unfinished one continues: the cached
source model is loaded and the (method, shift) rows already in ``results.jsonl`` are not
run again (``continual`` methods write their rows only when their whole stream is done).
A recipe that only *adds* methods (every earlier method unchanged) resumes too, finished
seeds included: only the new methods run, and ``metrics.json`` is rewritten with them.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import platform
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from shiftlab.backbones import BACKBONES, create_backbone
from shiftlab.backbones.base import Backbone
from shiftlab.batches import Labeled
from shiftlab.config import (
    BackboneCfg,
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
from shiftlab.errors import DataError, RecipeError, ShiftlabError, TrainingError
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
from shiftlab.methods import METHODS, create_method, make_hparams
from shiftlab.methods.base import TestTimeMethod
from shiftlab.methods.tta.protocols import StreamSegment, run_protocol
from shiftlab.optim import OptimizerFactory
from shiftlab.seeding import epoch_generator, resolve_device, seed_everything

log = logging.getLogger(__name__)

ProtocolName = Literal["online", "continual", "episodic", "single"]

__all__ = [
    "CORRUPTIONS",
    "TtaRecipe",
    "build_source_model",
    "load_tta_recipe",
    "run_tta",
]

#: The 15 corruptions of Hendrycks & Dietterich (ICLR 2019), in their order.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)

PROTOCOLS = ("online", "continual", "episodic", "single")
SELECTION = "none: a fixed source model; test-time methods adapt on unlabelled test batches"


# ----------------------------------------------------------------------------- recipe


class OptimizerCfg(StrictModel):
    """A test-time optimizer (see :class:`~shiftlab.optim.OptimizerFactory`)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0)
    nesterov: bool = False

    def factory(self) -> OptimizerFactory:
        return OptimizerFactory(self.name, self.lr, self.weight_decay, self.momentum, self.nesterov)


class SourceTrain(StrictModel):
    """How the source model is trained when ``source.dataset`` is set (ERM, no augmentation)."""

    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0)
    limit: int | None = Field(default=None, ge=1, description="train on the first N images only")


class Normalize(StrictModel):
    """Per-channel input normalisation inside the model, ``(x - mean) / std`` (shifts and
    augmentations act on images in [0, 1] before it). akamaster's CIFAR ResNets were
    trained with the ImageNet statistics."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Normalize:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std need the same non-zero number of values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class SourceModel(StrictModel):
    """The source model: trained here (``dataset``), loaded (``checkpoint``) or built
    pretrained by the backbone (e.g. ``resnet_cifar20`` with ``pretrained: true``).

    Attributes:
        dataset: labelled training set to train the source model on (per seed, cached).
        split: its split.
        backbone: registry name and arguments (``in_chans``, ``num_classes`` and
            ``image_size`` come from ``data`` and the dataset unless set here).
        train: the training schedule.
        checkpoint: a weights file: a shiftlab state (``*.json`` / ``*.safetensors`` from
            ``save_state``, e.g. a ``train`` run's ``checkpoint.json`` or a TTA run's
            ``source_model.json``), a plain ``*.safetensors`` state dict, or a
            ``torch.save`` state dict (loaded with ``weights_only=True``).
        num_classes: classes of a loaded model (default 10).
        normalize: input normalisation inside the model.
    """

    dataset: str | None = None
    split: str = "train"
    backbone: BackboneCfg = Field(default_factory=BackboneCfg)
    train: SourceTrain = Field(default_factory=SourceTrain)
    checkpoint: str | None = None
    num_classes: int = Field(default=10, ge=2)
    normalize: Normalize | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> SourceModel:
        if self.dataset and self.checkpoint:
            raise ValueError("set either dataset (train the source model here) or checkpoint (load it), not both")
        if not self.dataset and not self.checkpoint and not self.backbone.args.get("pretrained"):
            raise ValueError(
                "the source model needs an origin: dataset (train it here), checkpoint (a weights file) "
                "or a pretrained backbone (backbone.args.pretrained)"
            )
        return self


class DataFit(StrictModel):
    """Every image (training, evaluation, natural shifts) is brought to ``channels`` x
    ``image_size`` x ``image_size`` by zero-padding (``pad``) or bilinear ``resize``."""

    image_size: int = Field(default=28, ge=4)
    channels: Literal[1, 3] = 1
    fit: Literal["pad", "resize"] = "pad"


class TtaSet(StrictModel):
    """A labelled evaluation set (its labels only score the predictions)."""

    name: str
    split: str = "test"
    fit: Literal["pad", "resize"] | None = Field(default=None, description="default: data.fit")
    limit: int | None = Field(default=None, ge=1)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.split}"


class TtaEval(StrictModel):
    """What the methods are evaluated on.

    Attributes:
        dataset: the set that is corrupted (and scored clean with the source model).
        corruptions: ``all`` (the 15), a list of shift names, or ``[]``.
        severities: 1..5.
        table: the corruption parameter table (``auto``: CIFAR-10-C's for images of at
            most 64 px, see :mod:`shiftlab.data.shifts`; ``imagenet``: the
            ``imagecorruptions`` package's).
        natural: other datasets, each a natural shift (e.g. ``{name: mnist_m}``).
        limit: use the first N images of every set (quick runs).
        clean: also score the source model on the clean ``dataset`` (``clean/acc``).
    """

    dataset: TtaSet | None = None
    corruptions: Literal["all"] | list[str] = "all"
    severities: list[int] = Field(default_factory=lambda: [5])
    table: Literal["auto", "cifar", "imagenet"] = "auto"
    natural: list[TtaSet] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)
    clean: bool = True

    @field_validator("corruptions")
    @classmethod
    def _known(cls, v: Literal["all"] | list[str]) -> Literal["all"] | list[str]:
        if v == "all":
            return v
        from shiftlab.data.shifts import SHIFTS

        bad = [c for c in v if c not in SHIFTS]
        if bad:
            raise ValueError(f"unknown shift(s) {', '.join(bad)}; allowed: all, or {', '.join(SHIFTS.names())}")
        return v

    @field_validator("severities")
    @classmethod
    def _sev(cls, v: list[int]) -> list[int]:
        if not v or any(not 1 <= s <= 5 for s in v):
            raise ValueError("severities must be a non-empty list of integers 1..5")
        return v

    @property
    def corruption_names(self) -> list[str]:
        return list(CORRUPTIONS) if self.corruptions == "all" else list(self.corruptions)


class TtaMethodSpec(StrictModel):
    """One compared method.

    Attributes:
        method: registry name (default: the label it is listed under).
        hparams: its hyper-parameters (``shiftlab list methods``; defaults: the paper's).
        optimizer: the optimizer of the adapted parameters (default: the paper's).
        protocol: this method's protocol (default: the recipe's).
        batch_size: this method's test batch size (default: the recipe's).
        limit: score this method on the first N images of each shift only (MEMO is
            hundreds of times slower per image than Tent).
        fisher_samples: EATA only: estimate the Fisher information on the first N clean
            evaluation images (pseudo-labels, as the paper does with clean validation
            images); 0: ETA (no anti-forgetting term).
    """

    method: str | None = None
    hparams: dict[str, Any] = Field(default_factory=dict)
    optimizer: OptimizerCfg | None = None
    protocol: ProtocolName | None = None
    batch_size: int | None = Field(default=None, ge=1)
    limit: int | None = Field(default=None, ge=1)
    fisher_samples: int = Field(default=0, ge=0)


class TtaRecipe(StrictModel):
    """A test-time adaptation experiment (``kind: tta``); see the module docstring."""

    kind: Literal["tta"] = "tta"
    name: RunName
    description: str = ""
    source: SourceModel
    data: DataFit = Field(default_factory=DataFit)
    eval: TtaEval
    methods: dict[str, TtaMethodSpec | None]
    protocol: ProtocolName = "online"
    batch_size: int = Field(default=64, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "auto"

    def active_methods(self) -> dict[str, TtaMethodSpec]:
        """The methods not switched off with ``null``, by label, in recipe order."""
        return {k: v for k, v in self.methods.items() if v is not None}


def load_tta_recipe(
    raw: dict[str, Any], overrides: dict[str, Any] | Sequence[str] | None = None
) -> tuple[TtaRecipe, dict[str, Any]]:
    """Validate a ``kind: tta`` recipe mapping with ``--set`` overrides applied.

    Raises:
        RecipeError: unknown key or wrong type (naming its path and the allowed keys), an
            unknown or non-test-time method, an unknown hyper-parameter, no shift at all.
    """
    ov = normalise_overrides(overrides)
    what = f"TTA recipe {raw.get('name', '<unnamed>')!r}"
    recipe = validate_recipe(TtaRecipe, apply_overrides(raw, ov), what)
    methods = recipe.active_methods()
    if not methods:
        raise RecipeError(f"Invalid {what}: 'methods' names no method (all are null).")
    for label, spec in methods.items():
        name = spec.method or label
        if name not in METHODS:
            raise RecipeError(
                f"Invalid {what}: methods.{label}: unknown method {name!r}; set methods.{label}.method to one "
                f"of the test-time methods: {', '.join(_tta_method_names())}."
            )
        if not issubclass(METHODS.get(name), TestTimeMethod):
            raise RecipeError(
                f"Invalid {what}: methods.{label}: {name!r} is not a test-time method; use one of "
                f"{', '.join(_tta_method_names())}."
            )
        try:
            make_hparams(name, spec.hparams)
        except RecipeError as exc:
            raise RecipeError(f"Invalid {what}: methods.{label}.{exc}") from None
        if spec.fisher_samples and name != "eata":
            raise RecipeError(f"Invalid {what}: methods.{label}.fisher_samples is for eata only (method {name!r}).")
    e = recipe.eval
    if not (e.dataset and e.corruption_names) and not e.natural:
        raise RecipeError(
            f"Invalid {what}: nothing to evaluate: set eval.dataset with corruptions, and/or eval.natural."
        )
    return recipe, ov


def _tta_method_names() -> list[str]:
    return [n for n in METHODS.names() if issubclass(METHODS.get(n), TestTimeMethod)]


# ----------------------------------------------------------------------------- the model


class InputNormalized(Backbone):
    """``net((x - mean) / std)``: a backbone with its input normalisation inside, so that
    shifts and augmentations act on images in [0, 1]. ``mean``/``std`` are non-persistent
    buffers (not in the ``state_dict``)."""

    def __init__(self, net: Backbone, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features
        self.in_chans = getattr(net, "in_chans", len(mean))
        self.num_classes = getattr(net, "num_classes", 0)
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    @property
    def head(self) -> torch.nn.Module:  # type: ignore[override]
        return self.net.head

    def reset_head(self, num_classes: int) -> None:
        self.net.reset_head(num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def _backbone(recipe: TtaRecipe, num_classes: int, data_dir: str | None) -> Backbone:
    s = recipe.source
    args: dict[str, Any] = {"in_chans": recipe.data.channels, "num_classes": num_classes,
                            "image_size": recipe.data.image_size}
    args.update(s.backbone.args)
    if s.backbone.name in BACKBONES and data_dir and "data_dir" not in args:
        params = inspect.signature(BACKBONES.get(s.backbone.name)).parameters
        if "data_dir" in params:  # pretrained=True resolves its weights under the data root
            args["data_dir"] = data_dir
    return create_backbone(s.backbone.name, **args)


def _state_dict_from(path: Path) -> dict[str, Tensor]:
    """A backbone state dict from a weights file, never unpickling arbitrary objects."""
    if not path.exists() and path.with_suffix(".json").exists():
        path = path.with_suffix(".json")
    if not path.is_file():
        raise DataError(f"Source checkpoint {path} does not exist.")
    if path.suffix == ".json" or (path.suffix == ".safetensors" and path.with_suffix(".json").is_file()):
        state = load_state(path)
        sd = state.get("backbone", state.get("model", state)) if isinstance(state, dict) else state
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"Cannot load {path} safely (weights_only=True): {exc}") from None
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise DataError(f"{path} holds no state dict of tensors.")
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


@dataclass
class SourceInfo:
    """How the source model came about: ``origin`` (``trained``, ``cached``, ``checkpoint``,
    ``pretrained``), training seconds and the training set size."""

    origin: str
    train_seconds: float = 0.0
    train_images: int = 0


def build_source_model(
    recipe: TtaRecipe,
    seed: int,
    num_classes: int,
    device: torch.device,
    train: TensorData | None,
    cache: Path | None = None,
    data_dir: str | None = None,
) -> tuple[Backbone, SourceInfo]:
    """The recipe's source model for ``seed``, in eval mode on ``device``.

    Trained here when ``source.dataset`` is set: ERM with the recipe's schedule, batches
    drawn from generators seeded by ``(seed, epoch)``; the weights are saved to
    ``cache`` (``<cache>.safetensors`` + ``<cache>.json``) and loaded from there when it
    exists with the same source spec.
    """
    s = recipe.source
    spec = s.model_dump(mode="json")
    spec["data"] = recipe.data.model_dump(mode="json")
    seed_everything(seed)
    net = _backbone(recipe, num_classes, data_dir)
    info = SourceInfo("pretrained")
    if s.checkpoint:
        net.load_state_dict(_state_dict_from(Path(s.checkpoint).expanduser()))
        info = SourceInfo("checkpoint")
    elif s.dataset:
        cached = cache.with_suffix(".json") if cache is not None else None
        if cached is not None and cached.is_file():
            state = load_state(cache)
            if state.get("spec") == spec and state.get("seed") == seed:
                net.load_state_dict(state["backbone"])
                info = SourceInfo("cached", float(state.get("train_seconds", 0.0)), int(state.get("train_images", 0)))
            else:
                log.info("the cached source model in %s is for another spec; training again", cached)
        if info.origin != "cached":
            assert train is not None
            t0 = time.perf_counter()
            _train_erm(net, train, s.train, seed, device)
            info = SourceInfo("trained", time.perf_counter() - t0, len(train))
            if cache is not None:
                save_state(cache, {"backbone": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                                   "spec": spec, "seed": seed, "train_seconds": info.train_seconds,
                                   "train_images": info.train_images})
    if s.normalize is not None:
        net = InputNormalized(net, s.normalize.mean, s.normalize.std)
    net.to(device).eval()
    return net, info


def _train_erm(net: Backbone, train: TensorData, cfg: SourceTrain, seed: int, device: torch.device) -> None:
    opt = OptimizerFactory(cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    method = create_method("erm", backbone=net, num_classes=train.num_classes, optimizer=opt).to(device)
    steps = len(train) // cfg.batch_size
    if steps == 0:
        raise ShiftlabError(f"The source training set has {len(train)} images, fewer than one batch of {cfg.batch_size}.")
    method.set_schedule(cfg.epochs, steps)
    for epoch in range(cfg.epochs):
        method.train()
        for i, b in enumerate(train.batches(cfg.batch_size, shuffle=True, generator=epoch_generator(seed, epoch, 0),
                                            drop_last=True)):
            method.set_progress((epoch * steps + i) / (cfg.epochs * steps))
            losses = method.update(Labeled(b.x.to(device), b.y.to(device)))
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainingError(f"Source training diverged at epoch {epoch + 1}, step {i + 1}: {losses}; "
                                    "lower source.train.lr.")
        # long schedules on few images (fine-tuning on 100 labels for 100 epochs) log ~10 lines
        if cfg.epochs <= 20 or (epoch + 1) % max(1, cfg.epochs // 10) == 0 or epoch + 1 == cfg.epochs:
            log.info("source model: epoch %d/%d, loss %.4f", epoch + 1, cfg.epochs, losses.get("loss", float("nan")))
    method.eval()


# ----------------------------------------------------------------------------- shifts


@dataclass(frozen=True)
class ShiftSpec:
    """One shift of the evaluation: a corruption at a severity, or a natural set."""

    key: str            # "gaussian_noise-5" or "mnist_m-test"
    kind: str           # "corruption" or "natural"
    shift: str          # corruption name, or dataset name
    severity: int       # 1..5, 0 for natural shifts
    set: str            # the images: "mnist-test"


def shift_specs(recipe: TtaRecipe) -> list[ShiftSpec]:
    """The shifts in evaluation order: corruptions (corruption-major), then natural sets."""
    e = recipe.eval
    out = []
    if e.dataset is not None:
        for c in e.corruption_names:
            for sev in e.severities:
                out.append(ShiftSpec(f"{c}-{sev}", "corruption", c, sev, e.dataset.key))
    out += [ShiftSpec(n.key, "natural", n.name, 0, n.key) for n in e.natural]
    return out


def _shift_generator(seed: int, name: str, severity: int) -> torch.Generator:
    return epoch_generator(seed, 10_000 + zlib.crc32(name.encode()) % 100_000, severity)


def make_segment(spec: ShiftSpec, sets: dict[str, TensorData], seed: int, table: str, chunk: int = 500) -> StreamSegment:
    """The images of one shift as float ``[N, C, H, W]`` in [0, 1]. Corrupted images are
    quantised to uint8 (as the released CIFAR-10-C / ImageNet-C files are)."""
    from shiftlab.data.shifts import apply_shift

    data = sets[spec.set]
    if spec.kind == "natural":
        return StreamSegment(spec.key, data.float_x(), data.y)
    gen = _shift_generator(seed, spec.shift, spec.severity)
    parts = [to_uint8(apply_shift(spec.shift, data.float_x(slice(i, i + chunk)), spec.severity, gen, table))
             for i in range(0, len(data), chunk)]
    return StreamSegment(spec.key, to_float(torch.cat(parts)), data.y)


class _LazyStream(Sequence[StreamSegment]):
    """Segments built one at a time while :func:`run_protocol` iterates (a continual stream
    over all shifts never holds more than one shift in memory)."""

    def __init__(self, specs: list[ShiftSpec], build: Callable[[ShiftSpec], StreamSegment]) -> None:
        self.specs, self.build = specs, build

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> StreamSegment:  # type: ignore[override]
        return self.build(self.specs[i])

    def __iter__(self) -> Iterator[StreamSegment]:
        for s in self.specs:
            yield self.build(s)


# ----------------------------------------------------------------------------- running


def _load_sets(recipe: TtaRecipe, options: RunOptions) -> tuple[TensorData | None, dict[str, TensorData]]:
    d, e = recipe.data, recipe.eval
    s = recipe.source
    cache: dict[tuple[str, str, str], TensorData] = {}

    def get(name: str, split: str, fit: str) -> TensorData:
        if (name, split, fit) not in cache:
            raw = load_dataset(name, split, data_dir=options.data_dir, download=options.download)
            cache[(name, split, fit)] = fit_dataset(raw, d.image_size, d.channels, fit)
        return cache[(name, split, fit)]

    train = None
    if s.dataset:
        train = get(s.dataset, s.split, d.fit)
        if s.train.limit:
            train = train.subset(slice(0, s.train.limit))
    sets: dict[str, TensorData] = {}
    for ts in ([e.dataset] if e.dataset is not None else []) + list(e.natural):
        data = get(ts.name, ts.split, ts.fit or d.fit)
        n = min(x for x in (ts.limit, e.limit, len(data)) if x is not None)
        sets[ts.key] = data.subset(slice(0, n))
    return train, sets


def _num_classes(recipe: TtaRecipe, train: TensorData | None, sets: dict[str, TensorData]) -> int:
    if "num_classes" in recipe.source.backbone.args:
        return int(recipe.source.backbone.args["num_classes"])
    if train is not None:
        return train.num_classes
    return recipe.source.num_classes


def _resolved_methods(recipe: TtaRecipe) -> dict[str, dict[str, Any]]:
    out = {}
    for label, spec in recipe.active_methods().items():
        name = spec.method or label
        cls = METHODS.get(name)
        opt = spec.optimizer.factory() if spec.optimizer is not None else getattr(cls, "default_optimizer", None)
        out[label] = {
            "method": name,
            "hparams": asdict(make_hparams(name, spec.hparams)),
            "optimizer": asdict(opt) if opt is not None else None,
            "optimizer_from": "recipe" if spec.optimizer is not None else "paper default",
            "protocol": spec.protocol or recipe.protocol,
            "batch_size": 1 if (spec.protocol or recipe.protocol) == "single" else (spec.batch_size or recipe.batch_size),
            "limit": spec.limit,
            "fisher_samples": spec.fisher_samples,
        }
    return out


def run_tta(
    raw_recipe: dict[str, Any],
    overrides: dict[str, Any] | Sequence[str] | None,
    options: RunOptions,
    seeds: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Run a ``kind: tta`` recipe for ``seeds`` (default: the recipe's); returns each ``metrics.json``.

    Raises:
        RecipeError: invalid recipe. RunExists: the folder holds a run (see ``--resume``).
        DataError: missing data or weights. RunInterrupted: Ctrl-C (finished rows are kept).
    """
    recipe, ov = load_tta_recipe(raw_recipe, overrides)
    train, sets = _load_sets(recipe, options)
    return run_seeds_locked(seeds if seeds is not None else recipe.seeds,
                            lambda s: run_dir_for(recipe.name, ov, s, options.runs_dir),
                            lambda s: _run_seed(recipe, ov, train, sets, options, s))


def _check_same(path: Path, config: dict[str, Any],
                normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Raise :class:`RunExists` when ``config`` differs from the run's ``config.yaml`` (both
    passed through ``normalise`` first, when given)."""
    import yaml

    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return
    if normalise is not None:
        old, config = normalise(old), normalise(config)
    ignore = {"seeds", "device", "resolved", "description"}
    changed = sorted(k for k in set(old) | set(config) if k not in ignore and old.get(k) != config.get(k))
    if changed:
        raise RunExists(
            f"The recipe changed since the run in {path.parent} started (different: {', '.join(changed)}). "
            "--resume continues a run only with the same recipe: restore it, or pass --overwrite."
        )


def _added_methods(path: Path, config: dict[str, Any]) -> list[str] | None:
    """The method labels ``config`` adds to the run whose ``config.yaml`` is ``path``, when
    that is the only change to its methods (every earlier method is still there with the same
    settings): a resumed run keeps the finished rows and runs only the new methods. ``None``
    when a method was removed or changed (or the file is unreadable); ``[]`` when the same."""
    import yaml

    try:
        old = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("methods") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    new = config.get("methods") or {}
    if any(k not in new or new[k] != v for k, v in old.items()):
        return None
    return [k for k in new if k not in old]


def _without_methods(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "methods"}


def _run_seed(
    recipe: TtaRecipe, ov: dict[str, Any], train: TensorData | None, sets: dict[str, TensorData],
    options: RunOptions, seed: int,
) -> dict[str, Any]:
    out = run_dir_for(recipe.name, ov, seed, options.runs_dir)
    metrics_path = out / "metrics.json"
    finished, resuming = open_run_folder(
        out, options, None, "the cached source model and the finished (method, shift) results are kept")
    if finished is not None:
        added = _added_methods(out / "config.yaml", recipe.model_dump(mode="json")) if options.resume else None
        if not added:
            return finished
        log.info("%s is finished, but the recipe adds methods %s: running those", out, ", ".join(added))
        resuming = True
    t_start = time.perf_counter()
    device = resolve_device(options.device or recipe.device)
    methods = _resolved_methods(recipe)
    config = recipe.model_dump(mode="json")
    config.update({
        "seed": seed, "overrides": ov, "variant": variant_label(ov), "selection_rule": SELECTION,
        "resolved": {"device": str(device), "methods": methods, "shifts": [s.key for s in shift_specs(recipe)],
                     "sizes": {k: len(v) for k, v in sets.items()} | ({"source_train": len(train)} if train else {}),
                     "data_dir": options.data_dir, "versions": versions(), "platform": platform.platform()},
    })
    if resuming:
        _check_same(out / "config.yaml", config,
                    _without_methods if _added_methods(out / "config.yaml", config) is not None else None)
    atomic_write_yaml(out / "config.yaml", config)

    num_classes = _num_classes(recipe, train, sets)
    model, src_info = build_source_model(recipe, seed, num_classes, device, train, out / "source_model",
                                         options.data_dir)
    log.info("%s seed %d: source model %s", recipe.name, seed, src_info.origin)
    clean_acc = None
    if recipe.eval.clean and recipe.eval.dataset is not None:
        clean = sets[recipe.eval.dataset.key]
        src = create_method("source", backbone=copy.deepcopy(model), num_classes=num_classes)
        clean_acc = run_protocol(src, [StreamSegment("clean", clean.float_x(), clean.y)], "online", 500).accuracy
        log.info("%s seed %d: source model clean accuracy %.4f", recipe.name, seed, clean_acc)

    results_path = out / "results.jsonl"
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if resuming and results_path.exists():
        for r in read_jsonl(results_path):
            done[(r["method"], r["segment"])] = r
        atomic_write_text(results_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    elif results_path.exists():
        results_path.unlink()

    specs = shift_specs(recipe)
    table = recipe.eval.table
    built: dict[str, StreamSegment] = {}

    def segment(spec: ShiftSpec) -> StreamSegment:
        if spec.key not in built:
            built.clear()  # one shift in memory at a time
            built[spec.key] = make_segment(spec, sets, seed, table)
        return built[spec.key]

    instances: dict[str, TestTimeMethod] = {}

    def instance(label: str) -> TestTimeMethod:
        if label not in instances:
            m = methods[label]
            spec = recipe.active_methods()[label]
            opt = spec.optimizer.factory() if spec.optimizer is not None else None
            torch.manual_seed(seed)
            meth = create_method(m["method"], backbone=copy.deepcopy(model), num_classes=num_classes,
                                 hparams=spec.hparams, optimizer=opt)
            assert isinstance(meth, TestTimeMethod)
            meth.to(device)
            if spec.fisher_samples and recipe.eval.dataset is not None:
                clean = sets[recipe.eval.dataset.key]
                # kept across resets; the anchor is the source weights
                meth.fit_fisher(clean.float_x(slice(0, spec.fisher_samples)).to(device))  # type: ignore[attr-defined]
            instances[label] = meth
        return instances[label]

    step = [len(done)]

    def record(label: str, spec: ShiftSpec, acc: float, n: int, seconds: float) -> None:
        m = methods[label]
        row = {"epoch": 0, "step": step[0], "method": label, "method_name": m["method"], "segment": spec.key,
               "shift": spec.shift,
               "severity": spec.severity, "set": spec.set, "kind": spec.kind, "protocol": m["protocol"],
               "batch_size": m["batch_size"], "n": n, "seconds": round(seconds, 3),
               "metrics": {"acc": acc, "err": 1.0 - acc}}
        step[0] += 1
        append_jsonl(results_path, row)
        done[(label, spec.key)] = row
        log.info("%s seed %d: %s on %s: error %.4f (%d images, %.1f s)", recipe.name, seed, label, spec.key,
                 1.0 - acc, n, seconds)

    def limited(seg: StreamSegment, limit: int | None) -> StreamSegment:
        return seg if limit is None or limit >= len(seg.y) else StreamSegment(seg.name, seg.x[:limit], seg.y[:limit])

    try:
        per_shift_labels = [lb for lb, m in methods.items() if m["protocol"] != "continual"]
        for spec in specs:
            todo = [lb for lb in per_shift_labels if (lb, spec.key) not in done]
            for label in todo:
                m = methods[label]
                seg = limited(segment(spec), m["limit"])
                res = run_protocol(instance(label), [seg], m["protocol"], m["batch_size"])
                record(label, spec, res.accuracy, res.n, res.seconds)
        for label, m in methods.items():
            if m["protocol"] != "continual" or all((label, s.key) in done for s in specs):
                continue
            stream = _LazyStream(specs, lambda s, lim=m["limit"]: limited(segment(s), lim))
            res = run_protocol(instance(label), stream, "online", m["batch_size"])
            per_seg_s = res.seconds / max(len(specs), 1)
            for spec in specs:
                n = min(len(sets[spec.set]), m["limit"] or len(sets[spec.set]))
                record(label, spec, res.per_segment[spec.key], n, per_seg_s)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"Interrupted (Ctrl-C) during {out}. The finished (method, shift) rows are in results.jsonl and the "
            "source model is cached; run the same command with --resume to continue."
        ) from None

    metrics, per_shift, method_seconds = _summarize(recipe, specs, methods, done)
    if clean_acc is not None:
        metrics = {"clean/acc": clean_acc, **metrics}
    result = {
        "recipe": recipe.name,
        "variant": variant_label(ov),
        "overrides": ov,
        "seed": seed,
        "method": "tta",
        "backbone": recipe.source.backbone.name,
        "selection": SELECTION,
        "metrics": metrics,
        "per_shift": per_shift,
        "method_seconds": method_seconds,
        "source": {"origin": src_info.origin, "train_seconds": round(src_info.train_seconds, 3),
                   "train_images": src_info.train_images, "clean_acc": clean_acc},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    _plot(out, recipe, specs, per_shift)
    atomic_write_json(metrics_path, result)
    return result


def _summarize(
    recipe: TtaRecipe, specs: list[ShiftSpec], methods: dict[str, dict[str, Any]],
    done: dict[tuple[str, str], dict[str, Any]],
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    corr = [s for s in specs if s.kind == "corruption"]
    nat = [s for s in specs if s.kind == "natural"]
    metrics: dict[str, float] = {}
    detail: dict[str, float] = {}
    per_shift: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for label in methods:
        errs = {s.key: float(done[(label, s.key)]["metrics"]["err"]) for s in specs}
        per_shift[label] = errs
        seconds[label] = round(sum(float(done[(label, s.key)]["seconds"]) for s in specs), 3)
        main = corr or nat
        metrics[f"{label}/err"] = sum(errs[s.key] for s in main) / len(main)
        sevs = sorted({s.severity for s in corr})
        if len(sevs) > 1:
            for k in sevs:
                sel = [errs[s.key] for s in corr if s.severity == k]
                metrics[f"{label}/sev{k}/err"] = sum(sel) / len(sel)
        if corr and len(nat) > 1:
            metrics[f"{label}/natural/err"] = sum(errs[s.key] for s in nat) / len(nat)
        for s in nat:
            metrics[f"{label}/{s.key}/err"] = errs[s.key]
        for s in corr:
            detail[f"per_shift/{s.key}/{label}/err"] = errs[s.key]
    return {**metrics, **detail}, per_shift, seconds


def _plot(out: Path, recipe: TtaRecipe, specs: list[ShiftSpec], per_shift: dict[str, dict[str, float]]) -> None:
    try:
        from shiftlab.plots import grouped_bars

        corr = [s for s in specs if s.kind == "corruption"]
        if corr:
            top = max(s.severity for s in corr)
            shown = [s for s in corr if s.severity == top]
            what = f"severity {top}"
        else:
            shown = [s for s in specs if s.kind == "natural"]
            what = "natural shifts"
        series = {lb: [100 * errs[s.key] for s in shown] for lb, errs in per_shift.items()}
        grouped_bars([s.shift for s in shown], series, out / "errors.png", ylabel="error (%)",
                     title=f"{recipe.name}: error per shift and method ({what})")
    except Exception as exc:  # a plot must never lose a finished run
        log.warning("could not draw errors.png: %s", exc)


# ----------------------------------------------------------------------------- demo

DEMO_CORRUPTIONS = ("contrast", "fog", "impulse_noise", "defocus_blur")


def demo_recipe() -> dict[str, Any]:
    """The demo's TTA recipe: a BatchNorm CNN trained 4 epochs on the embedded digits (16 px), then
    ``source`` vs ``norm`` vs ``tent`` on the digits test set under four corruptions at
    severity 5 (online, batch 64)."""
    return {
        "kind": "tta",
        "name": "demo-tta-digits",
        "description": "Tent on embedded digits: source vs norm vs tent under corruptions at severity 5",
        "source": {"dataset": "digits", "backbone": {"name": "dann_cnn", "args": {"norm": True, "hidden": 64}},
                   "train": {"epochs": 4, "batch_size": 64, "lr": 0.001}},
        "data": {"image_size": 16, "channels": 1, "fit": "resize"},  # 8x8 digits: 16 px keeps it fast
        "eval": {"dataset": {"name": "digits", "split": "test"}, "corruptions": list(DEMO_CORRUPTIONS),
                 "severities": [5]},
        "methods": {"source": {}, "norm": {}, "tent": {"optimizer": {"name": "adam", "lr": 0.001}}},
        "protocol": "online",
        "batch_size": 64,
        "seeds": [0],
        "device": "cpu",
    }


def demo_stage(out_dir: str | Path) -> tuple[list[str], dict[str, float], list[Path]]:
    """``shiftlab demo``'s test-time adaptation stage (about 10 s on one core): see :func:`demo_recipe`.

    Returns:
        Markdown lines, metrics (``tta/<method>/err``: mean error over the corruptions) and
        the PNG written into ``out_dir`` (error per corruption and method).
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    raw = demo_recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 64 small images: a second OpenMP thread only waits on a busy core
    try:
        m = run_tta(raw, {}, RunOptions(runs_dir=out / "runs", overwrite=True, progress=False), [0])[0]
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    labels = list(raw["methods"])
    run = out / "runs" / raw["name"] / "default" / "seed-0"
    figs = []
    if (run / "errors.png").is_file():
        figs.append(Path(shutil.copyfile(run / "errors.png", out / "tta_errors.png")))
    keys = [f"{c}-5" for c in DEMO_CORRUPTIONS]
    lines = [
        "### Test-time adaptation stage: Tent on corrupted digits",
        "",
        f"A `dann_cnn` with BatchNorm trained on `digits` (clean test accuracy {100 * m['metrics']['clean/acc']:.2f}%), "
        "then adapted online on the unlabelled corrupted test batches (64 images, reset per corruption). "
        "Error (%) at severity 5:",
        "",
        "| method | " + " | ".join(DEMO_CORRUPTIONS) + " | mean |",
        "|---|" + "---:|" * (len(keys) + 1),
        *(f"| {lb} | " + " | ".join(f"{100 * m['per_shift'][lb][k]:.1f}" for k in keys)
          + f" | {100 * m['metrics'][f'{lb}/err']:.1f} |" for lb in labels),
        "",
        f"Time: {seconds:.1f} s",
    ]
    return lines, {f"tta/{lb}/err": m["metrics"][f"{lb}/err"] for lb in labels}, figs
