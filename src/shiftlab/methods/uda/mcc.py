"""MCC: minimum class confusion on the target predictions."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from shiftlab.backbones.base import Backbone
from shiftlab.batches import DomainPair
from shiftlab.losses.entropy import minimum_class_confusion
from shiftlab.methods import METHODS
from shiftlab.methods.uda.common import UdaMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class MccHparams:
    """Hyper-parameters of :class:`MCC` (defaults: Jin et al., ECCV 2020).

    Attributes:
        trade_off: weight of the class-confusion loss (paper: 1.0).
        temperature: probability rescaling T (paper: 2.5 on Office, 3 on VisDA/digits).
        domain_forward: ``joint`` (one forward pass over source and target) or ``separate``
            (one pass per domain, so BatchNorm layers normalise each domain by its own batch
            statistics in training); see :class:`~shiftlab.methods.uda.dann.DannHparams`.
        lr_schedule: ``constant``, ``dann`` or ``cosine``.
    """

    trade_off: float = 1.0
    temperature: float = 2.5
    domain_forward: str = "joint"
    lr_schedule: str = "constant"


@METHODS.register(
    "mcc",
    summary="MCC: minimises the entropy-weighted between-class confusion of target predictions",
    paper="Jin, Wang, Long & Wang, 'Minimum Class Confusion for Versatile Domain Adaptation', ECCV 2020",
    family="uda",
)
class MCC(UdaMethod):
    """Loss ``CE(source) + trade_off * MCC(target logits)``: no discriminator; the target
    predictions are pushed to be confident and not to confuse classes with each other."""

    Hparams = MccHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: MccHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.opt = optimizer(self.parameters())

    def update(self, batch: DomainPair) -> dict[str, float]:
        """One step; returns ``loss``, ``cls`` and ``mcc``."""
        self.train()
        _, _, logits_s, logits_t = self.features_and_logits(batch)
        cls = F.cross_entropy(logits_s, batch.source.y)
        mcc = minimum_class_confusion(logits_t, self.hparams.temperature)
        loss = cls + self.hparams.trade_off * mcc
        self.step(loss)
        return {"loss": loss.item(), "cls": cls.item(), "mcc": mcc.item()}
