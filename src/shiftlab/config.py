"""Recipes: pydantic models of a YAML experiment description, with ``--set`` overrides.

A recipe names the data (source, optional unlabelled target, evaluation sets and shifts),
the backbone, the method and its hyper-parameters, the schedule, the model-selection rule
and the seeds. Unknown keys and wrong types are errors naming the key's path and the
allowed values. Example (``recipes/demo/digits.yaml``)::

    name: digits-erm
    data:
      source: digits
      eval: [{name: digits, split: test}, {name: digits_m, split: test}]
      image_size: 28
      channels: 3
    backbone: {name: dann_cnn}
    method: {name: erm}
    train: {epochs: 5, batch_size: 64, lr: 0.001}
    seeds: [0, 1, 2]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shiftlab.errors import RecipeError


def _plain_folder_name(v: str) -> str:
    if not v or any(c in v for c in "/\\") or v.startswith("."):
        raise ValueError("must be a plain folder name (no slashes, not starting with '.')")
    return v


RunName = Annotated[str, AfterValidator(_plain_folder_name)]
"""A recipe's ``name``: it names the run folder, so it must be a plain folder name."""


class StrictModel(BaseModel):
    """Base of every recipe section: unknown keys are errors (typos never pass silently), and
    validated sections are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalSet(StrictModel):
    """One evaluation set: a dataset split, optionally under a shift.

    Attributes:
        bn: the BatchNorm statistics the network is evaluated with: ``running`` (the running
            averages of training, the default), ``target`` or ``source`` (the population
            statistics of the recipe's unlabelled target / labelled source training images,
            recomputed for this evaluation: AdaBN, Li et al. 2018; no labels are read).
            Networks without BatchNorm give the same number either way. A set with
            ``bn: target`` is keyed ``<name>/<split>+target_bn``.
    """

    name: str
    split: str = "test"
    shift: str | None = None
    severity: int = Field(default=0, ge=0, le=5)
    limit: int | None = Field(default=None, ge=1, description="use only the first N items")
    bn: Literal["running", "target", "source"] = "running"

    @property
    def key(self) -> str:
        base = f"{self.name}/{self.split}"
        base = f"{base}+{self.shift}@{self.severity}" if self.shift else base
        return base if self.bn == "running" else f"{base}+{self.bn}_bn"


class DataCfg(StrictModel):
    """Where the data comes from and how it is brought to one size.

    Attributes:
        source: labelled training set (a dataset name, ``folder:PATH`` or ``npz:PATH``).
        source_split: its split.
        target: unlabelled target set for domain adaptation (labels never used in training).
        target_split: its split.
        eval: evaluation sets; the first one that is not the source is the "target" metric.
        image_size: every image is brought to ``image_size`` × ``image_size`` ...
        fit: ... by zero-padding (``pad``, centred; e.g. MNIST 28 -> 32 like MNIST-M) or
            bilinear resizing (``resize``).
        channels: 1 (RGB averaged to grey) or 3 (grey repeated to RGB).
        val_fraction: fraction of the source training set held out for source validation.
        limit_train: use only the first N source (and target) training items (quick runs).
    """

    source: str
    source_split: str = "train"
    target: str | None = None
    target_split: str = "train"
    eval: list[EvalSet] = Field(default_factory=list)
    image_size: int = Field(default=28, ge=4)
    fit: Literal["pad", "resize"] = "pad"
    channels: Literal[1, 3] = 3
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    limit_train: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _target_bn_needs_a_target(self) -> DataCfg:
        if self.target is None and any(ev.bn == "target" for ev in self.eval):
            raise ValueError("an eval set has bn: target, but data.target is not set (the target "
                             "BatchNorm statistics come from the unlabelled target training images)")
        keys = [ev.key for ev in self.eval]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"data.eval lists {', '.join(twice)} more than once")
        return self


class BackboneCfg(StrictModel):
    name: str = "dann_cnn"
    args: dict[str, Any] = Field(default_factory=dict)


class MethodCfg(StrictModel):
    name: str = "erm"
    hparams: dict[str, Any] = Field(default_factory=dict)


class TrainCfg(StrictModel):
    """The optimisation schedule.

    Attributes:
        epochs: passes over the source training set.
        batch_size: source batch size (the target batch has the same size).
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: learning rate.
        augment: batched augmentation applied to every training batch (source and target):
            ``none``, ``digits_uda`` (crop + mild colour jitter) or ``digits_strong`` (the
            FixMatch-style strong branch: crop, strong jitter, grayscale, inversion, blur,
            cutout; see :mod:`shiftlab.data.augment`).
        eval_every: evaluate every N epochs (and always after the last).
        max_steps_per_epoch: cap on optimisation steps per epoch (quick runs).
        precision: ``fp32`` or ``bf16`` (autocast of the training steps; fast on CPUs with
            AVX-512 BF16 / AMX and recent GPUs, see :mod:`shiftlab.precision`).
    """

    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0)
    augment: str = "none"
    eval_every: int = Field(default=1, ge=1)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"


SELECTION_RULES = {
    "last": "fixed schedule: the model after the last epoch",
    "source_val": "the epoch with the best accuracy on held-out source validation data (no target labels)",
}


class Recipe(StrictModel):
    """A whole experiment. See the module docstring for an example."""

    kind: Literal["train"] = "train"
    name: RunName
    description: str = ""
    data: DataCfg
    backbone: BackboneCfg = Field(default_factory=BackboneCfg)
    method: MethodCfg = Field(default_factory=MethodCfg)
    method_hparams: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-method hyper-parameters used when that method is selected (sweeps)",
    )
    train: TrainCfg = Field(default_factory=TrainCfg)
    selection: Literal["last", "source_val"] = "last"
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "auto"

    def effective_hparams(self) -> dict[str, Any]:
        """``method_hparams[method.name]`` updated with ``method.hparams``."""
        return {**self.method_hparams.get(self.method.name, {}), **self.method.hparams}

    @property
    def selection_rule(self) -> str:
        return SELECTION_RULES[self.selection]


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)`` (the value is parsed as YAML).

    ``method=dann`` is short for ``method.name=dann``; likewise ``backbone=lenet``.
    """
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key in ("method", "backbone"):
        key += ".name"
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {text!r}: the value is not valid YAML ({exc}).") from None
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); creating dicts where needed."""
    out = json.loads(json.dumps(raw))
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(
                    f"--set {key}: {'.'.join(parts[: i + 1])} is a {type(nxt).__name__}, not a section."
                )
            node = nxt
        node[parts[-1]] = value
    return out


def normalise_overrides(overrides: Sequence[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``--set`` strings or a dict of dotted keys -> a dict (``method``/``backbone`` mean
    ``method.name``/``backbone.name`` in both forms)."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return {(f"{k}.name" if k in ("method", "backbone") else k): v for k, v in overrides.items()}
    return dict(parse_override(o) for o in overrides)


M = TypeVar("M", bound=BaseModel)


def validate_recipe(model: type[M], merged: dict[str, Any], what: str) -> M:
    """``model.model_validate(merged)``; a validation error becomes one :class:`RecipeError`
    paragraph naming each bad key's path (with the keys allowed there) and ``what`` (e.g.
    ``"recipe recipes/uda/x.yaml"``)."""
    try:
        return model.model_validate(merged)
    except pydantic.ValidationError as exc:
        raise RecipeError(format_validation_error(exc, model, what)) from None


def format_validation_error(exc: pydantic.ValidationError, model: type[BaseModel], what: str) -> str:
    """One paragraph for a pydantic error on ``model``; ``what`` names the recipe."""
    lines = []
    for err in exc.errors():
        # drop pydantic's union/validator tags (``str``, ``function-after[...]``) from the path
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            lines.append(f"unknown key '{path}'" + (f" (allowed here: {', '.join(allowed)})" if allowed else ""))
        elif err["type"] == "missing":
            lines.append(f"missing required key '{path}'")
        else:
            lines.append(f"'{path}': {err['msg']} (got {err.get('input')!r})")
    return f"Invalid {what}: " + "; ".join(dict.fromkeys(lines)) + "."


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    mapping_key = False  # the next part is a key of a ``dict[str, Model]`` field
    for part in loc:
        if isinstance(part, int) or mapping_key:
            mapping_key = False
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        mapping_key = getattr(ann, "__origin__", None) is dict
        cur = _unwrap_model(ann)
        if cur is None:
            return []
    return list(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def _unwrap_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def read_recipe_mapping(recipe: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A recipe file (or dict) as a dict; unreadable files and bad YAML are :class:`RecipeError`."""
    if isinstance(recipe, dict):
        return dict(recipe)
    p = Path(recipe)
    if not p.is_file():
        raise RecipeError(f"Recipe file {p} does not exist. `shiftlab list recipes` shows the bundled ones.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"Recipe {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe {p} must be a YAML mapping at the top level.")
    return raw


def load_recipe(
    path: str | os.PathLike[str] | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None
) -> tuple[Recipe, dict[str, Any]]:
    """Read and validate a recipe.

    Args:
        path: a YAML file, or an already-parsed dict.
        overrides: ``["train.lr=0.01", "method=dann"]`` or ``{"train.lr": 0.01}``.

    Returns:
        The validated recipe and the overrides applied (a dict of dotted keys).

    Raises:
        RecipeError: unreadable file, bad YAML, unknown key, wrong type.
    """
    raw = read_recipe_mapping(path)
    source = "<dict>" if isinstance(path, dict) else str(path)
    ov = normalise_overrides(overrides)
    return validate_recipe(Recipe, apply_overrides(raw, ov), f"recipe {source}"), ov


def overrides_id(overrides: dict[str, Any]) -> str:
    """A short, readable, stable folder name for a set of overrides (seeds excluded)."""
    ov = {k: v for k, v in sorted(overrides.items()) if k != "seeds"}
    if not ov:
        return "default"
    text = ",".join(f"{k}={json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}" for k, v in ov.items())
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    readable = "".join(c if c.isalnum() or c in "._=-," else "_" for c in text)[:60]
    return f"{readable}-{digest}"


def variant_label(overrides: dict[str, Any]) -> str:
    ov = {k: v for k, v in sorted(overrides.items()) if k != "seeds"}
    return ",".join(f"{k}={v}" for k, v in ov.items()) or "default"
