"""PINN recipes: a pydantic model of a ``kind: pinn`` YAML file, with ``--set`` overrides.

Example (``recipes/pinn/sir_ic_bundle.yaml``)::

    kind: pinn
    name: pinn-sir_ic_bundle
    system: sir
    t_span: [0, 20]
    ic: {S: remainder}             # S0 = 1 - I0 - R0
    params: {beta: 0.8, gamma: 0.2}
    bundle: {I: [0.1, 0.2], R: [0.1, 0.2]}
    net: {width: 24, depth: 2, activation: tanh}
    train: {points: 2000, sampler: lhs, epochs: 300, refine: lm, refine_steps: 150, margin: 0.1}
    eval: {grid: 10}
    seeds: [0]

Unknown keys and wrong types are :class:`~shiftlab.errors.RecipeError` naming the key's
path and the keys allowed there; names that do not belong to the system (a state or a
parameter it does not have) are errors too.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from shiftlab.config import (
    RunName,
    StrictModel,
    apply_overrides,
    normalise_overrides,
    read_recipe_mapping,
    validate_recipe,
)
from shiftlab.errors import RecipeError
from shiftlab.pinn.box import Box
from shiftlab.pinn.nets import ACTIVATIONS, NetConfig
from shiftlab.pinn.solver import SAMPLERS, TrainConfig
from shiftlab.pinn.systems import OdeSystem, resolve_system

__all__ = ["PinnRecipe", "is_pinn_recipe", "load_pinn_recipe"]

Value = float | str | list[float]


class SystemSection(StrictModel):
    """A system: a registry name, or ``module:function`` with its state/parameter names."""

    name: str
    state: list[str] | None = None
    params: list[str] | None = None


class NetSection(StrictModel):
    """The MLP ``N`` (defaults: the source document's SIR network, see :class:`NetConfig`)."""

    width: int = Field(default=NetConfig.width, ge=1)
    depth: int = Field(default=NetConfig.depth, ge=1)
    activation: str = NetConfig.activation

    @field_validator("activation")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ACTIVATIONS:
            raise ValueError(f"unknown activation {v!r}; allowed: {', '.join(sorted(ACTIVATIONS))}")
        return v

    def config(self) -> NetConfig:
        return NetConfig(self.width, self.depth, self.activation)


class TrainSection(StrictModel):
    """The schedule; see :class:`~shiftlab.pinn.solver.TrainConfig` for each field."""

    points: int = Field(default=TrainConfig.points, ge=1)
    sampler: str = TrainConfig.sampler
    epochs: int = Field(default=TrainConfig.epochs, ge=0)
    lr: float = Field(default=TrainConfig.lr, gt=0)
    lr_final: float | None = Field(default=None, gt=0)
    refine: Literal["none", "lbfgs", "lm"] = TrainConfig.refine
    refine_steps: int = Field(default=TrainConfig.refine_steps, ge=0)
    refine_points: int | None = Field(default=None, ge=1)
    margin: float = Field(default=0.0, ge=0.0, le=1.0)
    target_ln_loss: float | None = None
    time_limit_s: float | None = Field(default=None, gt=0)
    log_every: int = Field(default=TrainConfig.log_every, ge=1)
    val_points: int = Field(default=TrainConfig.val_points, ge=1)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; allowed: {', '.join(sorted(SAMPLERS))}")
        return v

    def config(self) -> TrainConfig:
        return TrainConfig(**self.model_dump())


class TransferSection(StrictModel):
    """A transfer target: what changes, how to fine-tune, whether to train from scratch too.

    Attributes:
        t_span: new time span (default: the source's).
        ic: initial values that change.
        params: parameter values that change.
        bundle: ranges that change (same bundle dimensions as the source).
        train: fine-tuning schedule (default: the source's ``train``).
        scratch_train: schedule of the from-scratch comparison (default: ``train``; e.g.
            fine-tune with Levenberg-Marquardt alone, train from scratch with Adam first).
        compare_scratch: also train a fresh network on the target and report epochs and
            seconds for the fine-tuned one to reach the from-scratch final loss.
    """

    t_span: list[float] | None = None
    ic: dict[str, Value] = Field(default_factory=dict)
    params: dict[str, float | list[float]] = Field(default_factory=dict)
    bundle: dict[str, list[float]] = Field(default_factory=dict)
    train: TrainSection | None = None
    scratch_train: TrainSection | None = None
    compare_scratch: bool = True


class EvalSection(StrictModel):
    """Evaluation against ``solve_ivp``.

    Attributes:
        grid: problems per bundle dimension (``grid^k`` problems; one when ``k = 0``).
        times: evaluation times per trajectory (even grid over the time span).
        heatmaps: draw the ln-loss heatmaps for bundles.
        heatmap_resolution: heatmap cells per axis.
        rtol: reference relative tolerance.
        atol: reference absolute tolerance.
        method: ``solve_ivp`` method.
    """

    grid: int = Field(default=10, ge=1)
    times: int = Field(default=201, ge=2)
    heatmaps: bool = True
    heatmap_resolution: int = Field(default=25, ge=3)
    rtol: float = Field(default=1e-10, gt=0)
    atol: float = Field(default=1e-12, gt=0)
    method: Literal["DOP853", "Radau", "RK45", "LSODA", "BDF"] = "DOP853"


class PinnRecipe(StrictModel):
    """A PINN experiment (see the module docstring for an example)."""

    kind: Literal["pinn"]
    name: RunName
    description: str = ""
    system: str | SystemSection = "sir"
    t_span: list[float] = Field(default_factory=lambda: [0.0, 20.0], min_length=2, max_length=2)
    ic: dict[str, Value] = Field(default_factory=dict)
    params: dict[str, float | list[float]] = Field(default_factory=dict)
    bundle: dict[str, list[float]] = Field(default_factory=dict)
    net: NetSection = Field(default_factory=NetSection)
    train: TrainSection = Field(default_factory=TrainSection)
    transfer: TransferSection | None = None
    eval: EvalSection = Field(default_factory=EvalSection)
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: str = "cpu"
    dtype: Literal["float64", "float32"] = "float64"

    # ------------------------------------------------------------------ resolved objects
    def resolved_system(self) -> OdeSystem:
        if isinstance(self.system, str):
            return resolve_system(self.system)
        return resolve_system(self.system.name, self.system.state, self.system.params)

    def box(self, system: OdeSystem | None = None) -> Box:
        """The training box (raises :class:`RecipeError` for names the system lacks)."""
        sys_ = system or self.resolved_system()
        try:
            return Box.create(sys_, self.t_span, self.ic, self.params, self.bundle)
        except ValueError as exc:
            raise RecipeError(f"Invalid recipe {self.name!r}: {exc}.") from None

    def target_box(self, source: Box) -> Box | None:
        """The transfer target box, or ``None`` without a ``transfer`` section."""
        if self.transfer is None:
            return None
        tr = self.transfer
        try:
            target = source.replace(tr.t_span, tr.ic, tr.params, tr.bundle)
        except ValueError as exc:
            raise RecipeError(f"Invalid recipe {self.name!r}: transfer: {exc}.") from None
        if target.structure() != source.structure():
            raise RecipeError(
                f"Invalid recipe {self.name!r}: transfer target has bundle dims/remainder {target.structure()} "
                f"but the source has {source.structure()}; they must match to reuse the network."
            )
        return target


# ----------------------------------------------------------------------------- loading


def is_pinn_recipe(raw: Any) -> bool:
    """Whether a parsed YAML mapping is a PINN recipe (``kind: pinn``)."""
    return isinstance(raw, dict) and raw.get("kind") == "pinn"


def load_pinn_recipe(
    recipe: str | os.PathLike[str] | dict[str, Any],
    overrides: dict[str, Any] | list[str] | None = None,
) -> tuple[PinnRecipe, dict[str, Any]]:
    """Read and validate a PINN recipe.

    Args:
        recipe: a YAML file or an already-parsed mapping.
        overrides: ``{"train.lr": 0.01}`` or ``["train.lr=0.01"]`` (dotted keys).

    Returns:
        The validated recipe and the overrides applied.

    Raises:
        RecipeError: unreadable file, bad YAML, unknown key, wrong type, a state or
            parameter name the system does not have, or an unknown system.
    """
    raw = read_recipe_mapping(recipe)
    source = "<dict>" if isinstance(recipe, dict) else str(recipe)
    ov = normalise_overrides(overrides)
    model = validate_recipe(PinnRecipe, apply_overrides(raw, ov), f"PINN recipe {source}")
    src = model.box()
    model.target_box(src)
    return model, ov
