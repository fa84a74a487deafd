"""Empirical risk minimisation: plain supervised training ("source only" baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Labeled
from shiftlab.methods import METHODS
from shiftlab.methods.base import TrainableMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class ErmHparams:
    """Hyper-parameters of :class:`ERM`.

    Attributes:
        label_smoothing: cross-entropy label smoothing (0 = plain cross-entropy).
        lr_schedule: ``constant``, ``cosine`` or ``dann`` annealing over training.
    """

    label_smoothing: float = 0.0
    lr_schedule: str = "constant"


@METHODS.register(
    "erm",
    summary="Supervised training on the (source) labels; the source-only baseline of every family",
    paper="Vapnik, 'Principles of risk minimization for learning theory', NeurIPS 1992",
    family="supervised",
)
class ERM(TrainableMethod):
    """Cross-entropy training of ``backbone`` on labelled batches."""

    Hparams = ErmHparams
    batch_kind = "labeled"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: ErmHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.lr_schedule = hparams.lr_schedule
        self.opt = optimizer(self.backbone.parameters())

    def update(self, batch: Labeled) -> dict[str, float]:
        """One step of cross-entropy on ``batch.x: [B, C, H, W]``, ``batch.y: [B]``."""
        self.train()
        return cross_entropy_step(self.backbone, self.opt, batch, self.hparams.label_smoothing)


def cross_entropy_step(
    backbone: Backbone, opt: torch.optim.Optimizer, batch: Labeled, label_smoothing: float = 0.0
) -> dict[str, float]:
    """One optimiser step of cross-entropy of ``backbone(batch.x)`` against ``batch.y``;
    returns ``{"loss": float}``. The caller sets train/eval modes."""
    loss = F.cross_entropy(backbone(batch.x), batch.y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.item()}
