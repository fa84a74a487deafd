"""Source: the source model as it is, no test-time adaptation (the TTA baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import TtaMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class SourceHparams:
    """:class:`Source` has no hyper-parameters."""


@METHODS.register(
    "source",
    summary="Source model, no adaptation: eval-mode BatchNorm with the training statistics (TTA baseline)",
    paper="Wang et al., 'Tent: Fully Test-Time Adaptation by Entropy Minimization', ICLR 2021 (the 'source' rows)",
    family="tta",
)
class Source(TtaMethod):
    """Predicts with the unchanged source network (BatchNorm in eval mode, running
    statistics of the training data). Works on any backbone."""

    Hparams = SourceHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: SourceHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self._finish_init()

    @torch.no_grad()
    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]``; nothing changes."""
        self.backbone.eval()
        return self.backbone(x)
