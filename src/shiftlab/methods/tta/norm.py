"""BN-adapt: normalise with test-batch BatchNorm statistics (optionally mixed with the source's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import BatchNormAdapter, TtaMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class NormHparams:
    """Hyper-parameters of :class:`Norm` (Schneider et al., NeurIPS 2020).

    Attributes:
        prior_strength: ``N``, the weight of the source statistics counted in samples:
            ``mu = N/(N+n) mu_source + n/(N+n) mu_batch`` for a test batch of ``n``.
            0 (default, and Tent's ``norm`` baseline) uses the test-batch statistics alone;
            the paper finds ``N`` of about 16 best for very small test batches.
    """

    prior_strength: float = 0.0


@METHODS.register(
    "norm",
    summary="BN-adapt: BatchNorm with test-batch statistics (optionally mixed with the source's, prior N)",
    paper="Schneider et al., 'Improving robustness against common corruptions by covariate shift "
    "adaptation', NeurIPS 2020",
    family="tta",
)
class Norm(TtaMethod):
    """Replaces the source BatchNorm statistics by those of each test batch (no parameter
    is updated, nothing is remembered between batches). Needs BatchNorm layers."""

    Hparams = NormHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: NormHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.bn = BatchNormAdapter(self.backbone, hparams.prior_strength, None, "norm")
        self._finish_init()

    @torch.no_grad()
    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]`` under ``x``'s statistics."""
        self.backbone.eval()
        return self.backbone(x)
