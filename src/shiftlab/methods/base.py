"""The Method contracts shared by all method families (see DESIGN.md, "The contracts").

A method is an ``nn.Module`` that owns its networks and optimizers. Collaborators (the
backbone, an optimizer factory) are passed in; hyper-parameters are a frozen dataclass
``Hparams`` defined next to each method, with the paper's defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.optim import OptimizerFactory, lr_factor


class Method(nn.Module):
    """Base of every method: ``predict(x) -> logits [B, C]``.

    Attributes:
        family: ``supervised``, ``uda``, ``tta``, ``fewshot``, ``transfer`` or ``ssl``.
        Hparams: the frozen hyper-parameter dataclass of the method.
    """

    family: ClassVar[str] = "supervised"
    Hparams: ClassVar[type]

    def __init__(self, backbone: Backbone, num_classes: int, hparams: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.hparams = hparams

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float in [0, 1] -> logits ``[B, num_classes]``."""
        return self.backbone(x)


class TrainableMethod(Method):
    """A method trained by repeated :meth:`update` calls (DomainBed's ``Algorithm`` shape).

    Attributes:
        batch_kind: what :meth:`update` expects: ``labeled`` (:class:`~shiftlab.batches.Labeled`),
            ``domain_pair`` (:class:`~shiftlab.batches.DomainPair`), ``views`` or ``episode``.
    """

    batch_kind: ClassVar[str] = "labeled"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: Any, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams)
        self.optimizer_factory = optimizer
        self.progress = 0.0
        self.lr_schedule = "constant"
        self.schedule: tuple[int, int] | None = None

    def set_schedule(self, epochs: int, steps_per_epoch: int) -> None:
        """Told once before training (and again on resume): how many epochs of how many
        steps the run has. Methods whose stages are given in epochs check them here and
        raise :class:`~shiftlab.errors.RecipeError` when the recipe does not fit."""
        self.schedule = (int(epochs), int(steps_per_epoch))

    def update(self, batch: Any) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the losses as floats."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The method's optimizers by name, for checkpointing (override if not ``self.opt``)."""
        opt = getattr(self, "opt", None)
        return {"opt": opt} if opt is not None else {}

    def set_progress(self, progress: float) -> None:
        """Tell the method how far training is (in [0, 1]); adjusts learning rates.

        Schedules that depend on progress (learning-rate annealing, DANN's λ) read
        :attr:`progress`, so a resumed run continues them exactly.
        """
        self.progress = float(progress)
        factor = lr_factor(self.lr_schedule, self.progress)
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * factor


class TestTimeMethod(Method):
    """Adapts on unlabelled test batches (test-time adaptation)."""

    family: ClassVar[str] = "tta"

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """Adapt on ``x: [B, C, H, W]`` (no labels) and return logits ``[B, C]``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Restore the source weights (and optimizer state)."""
        raise NotImplementedError


class FewShotClassifier(Method):
    """Classifies queries against a support set (labels ``0..N-1`` within an episode)."""

    family: ClassVar[str] = "fewshot"

    def fit_support(self, support_x: Tensor, support_y: Tensor) -> None:
        """``support_x: [N*K, C, H, W]``, ``support_y: [N*K]`` int64 in ``[0, N)``."""
        raise NotImplementedError
