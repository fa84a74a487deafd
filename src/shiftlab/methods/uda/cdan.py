"""CDAN(+E): conditional adversarial adaptation on the features x predictions outer product."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import DomainPair
from shiftlab.losses.entropy import entropy_weights
from shiftlab.methods import METHODS
from shiftlab.methods.uda.common import (
    DomainDiscriminator,
    UdaMethod,
    domain_accuracy,
    domain_loss,
    grad_reverse,
    grl_coefficient,
)
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class CdanHparams:
    """Hyper-parameters of :class:`CDAN` (defaults: Long et al., NeurIPS 2018).

    Attributes:
        trade_off: weight of the conditional domain loss.
        entropy_conditioning: weigh samples by ``1 + exp(-H(g))`` (CDAN+E).
        lambda_schedule: ``ganin`` ramp of the reversal coefficient or ``constant``.
        gamma: steepness of the ramp.
        disc_hidden: width of the discriminator's hidden layers (paper: 1024).
        domain_forward: ``joint`` (one forward pass over source and target) or ``separate``
            (one pass per domain, so BatchNorm layers normalise each domain by its own batch
            statistics in training); see :class:`~shiftlab.methods.uda.dann.DannHparams`.
        lr_schedule: ``constant``, ``dann`` or ``cosine``.
    """

    trade_off: float = 1.0
    entropy_conditioning: bool = True
    lambda_schedule: str = "ganin"
    gamma: float = 10.0
    disc_hidden: int = 1024
    domain_forward: str = "joint"
    lr_schedule: str = "constant"


def multilinear_map(f: Tensor, g: Tensor) -> Tensor:
    """``f ⊗ g`` flattened: ``f: [B, D]``, ``g: [B, C]`` -> ``[B, D * C]`` (CDAN's conditioning)."""
    return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


@METHODS.register(
    "cdan",
    summary="CDAN+E: domain discriminator on features (x) class predictions, entropy-weighted samples",
    paper="Long, Cao, Wang & Jordan, 'Conditional Adversarial Domain Adaptation', NeurIPS 2018",
    family="uda",
)
class CDAN(UdaMethod):
    """The discriminator sees ``f ⊗ softmax(logits)`` (``[B, D*C]``) through a gradient
    reversal layer, so feature alignment is conditioned on the predicted class; with
    ``entropy_conditioning`` confident samples weigh more in the domain loss."""

    Hparams = CdanHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: CdanHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.discriminator = DomainDiscriminator(backbone.num_features * num_classes, hparams.disc_hidden)
        self.opt = optimizer(self.parameters())

    def update(self, batch: DomainPair) -> dict[str, float]:
        """One step; returns ``loss``, ``cls``, ``domain``, ``domain_acc`` and ``lambda``."""
        self.train()
        f_s, f_t, logits_s, logits_t = self.features_and_logits(batch)
        cls = F.cross_entropy(logits_s, batch.source.y)
        f = torch.cat([f_s, f_t])
        logits = torch.cat([logits_s, logits_t])
        g = torch.softmax(logits, dim=1).detach()
        lam = grl_coefficient(self.progress, self.hparams.lambda_schedule, self.hparams.gamma)
        d = self.discriminator(grad_reverse(multilinear_map(f, g), lam))
        b = len(f_s)
        w = entropy_weights(logits) if self.hparams.entropy_conditioning else None
        dom = domain_loss(d[:b], d[b:], None if w is None else w[:b], None if w is None else w[b:])
        loss = cls + self.hparams.trade_off * dom
        self.step(loss)
        return {"loss": loss.item(), "cls": cls.item(), "domain": dom.item(),
                "domain_acc": domain_accuracy(d[:b], d[b:]), "lambda": lam}
