"""DANN: domain-adversarial training through a gradient reversal layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import DomainPair
from shiftlab.errors import RecipeError
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
class DannHparams:
    """Hyper-parameters of :class:`DANN` (defaults: Ganin et al., JMLR 2016).

    Attributes:
        trade_off: weight of the domain loss.
        lambda_schedule: ``ganin`` (``2 / (1 + exp(-gamma p)) - 1``) or ``constant``.
        gamma: steepness of the ``ganin`` ramp.
        disc_hidden: width of the domain discriminator's two hidden layers (paper: 1024 on
            Office; a single 100-unit layer on MNIST).
        disc_input: where the discriminator attaches: ``trunk`` (the backbone's
            convolutional output, as in Ganin et al.'s MNIST network and the MNIST-M study:
            "a branch of linear layers with a gradient reversal layer after the
            convolutional feature extractor") or ``features`` (the penultimate layer).
        disc_dropout: dropout after each hidden layer of the discriminator (0.5; 0 gives
            the plain three-layer MLP that e.g. pytorch-adapt's ``Discriminator`` uses).
        disc_layers: hidden layers of the discriminator (2; the paper's MNIST domain
            classifier has 1 of 100 units).
        domain_forward: ``joint`` (source and target in one forward pass, so BatchNorm layers
            see mixed batches) or ``separate`` (one pass per domain: each domain is normalised
            by its own batch statistics in training, as in the widely used PyTorch DANN
            re-implementations that reach about 90% on MNIST -> MNIST-M). Without BatchNorm in
            the backbone both give the same result.
        lr_schedule: ``constant``, ``dann`` (``(1 + 10 p) ** -0.75``, the paper's annealing)
            or ``cosine``.
    """

    trade_off: float = 1.0
    lambda_schedule: str = "ganin"
    gamma: float = 10.0
    disc_hidden: int = 1024
    disc_input: str = "trunk"
    disc_dropout: float = 0.5
    disc_layers: int = 2
    domain_forward: str = "joint"
    lr_schedule: str = "constant"


@METHODS.register(
    "dann",
    summary="DANN: gradient reversal layer + domain discriminator on the features (lambda ramp, lr annealing)",
    paper="Ganin et al., 'Domain-Adversarial Training of Neural Networks', JMLR 2016 (Ganin & Lempitsky, ICML 2015)",
    family="uda",
)
class DANN(UdaMethod):
    """Features are trained to classify the source and to fool a domain discriminator.

    Loss: ``CE(head(f_s), y_s) + trade_off * BCE(D(R_lambda(f)), domain)`` with ``R_lambda``
    the gradient reversal layer (identity forward, ``-lambda_p`` times the gradient
    backward), so one optimizer step minimises the discriminator's loss for ``D`` and
    maximises it for the feature extractor; ``lambda_p`` ramps from 0 to 1.
    The discriminator sees ``backbone.forward_trunk(x)`` (``disc_input='trunk'``) or the
    features ``[B, D]``.
    """

    Hparams = DannHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: DannHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.disc_input not in ("trunk", "features"):
            raise RecipeError(f"disc_input must be trunk or features, got {hparams.disc_input!r}.")
        width = backbone.trunk_features if hparams.disc_input == "trunk" else backbone.num_features
        self.discriminator = DomainDiscriminator(width, hparams.disc_hidden, hparams.disc_dropout, hparams.disc_layers)
        self.opt = optimizer(self.parameters())

    def adversarial_weight(self) -> float:
        h = self.hparams
        return grl_coefficient(self.progress, h.lambda_schedule, h.gamma)

    def dann_losses(self, batch: DomainPair) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Class + weighted domain loss of one pass (shared with two-stage methods).

        Returns:
            ``(loss, features [B + B', D] (source rows first), logged values)``.
        """
        trunk, feats, logits = self.trunk_features_and_logits(batch)
        b = len(batch.source.y)
        cls = F.cross_entropy(logits[:b], batch.source.y)
        lam = self.adversarial_weight()
        d = self.discriminator(grad_reverse(trunk if self.hparams.disc_input == "trunk" else feats, lam))
        dom = domain_loss(d[:b], d[b:])
        loss = cls + self.hparams.trade_off * dom
        return loss, feats, {"cls": cls.item(), "domain": dom.item(),
                             "domain_acc": domain_accuracy(d[:b], d[b:]), "lambda": lam}

    def update(self, batch: DomainPair) -> dict[str, float]:
        """One step; returns ``loss``, ``cls``, ``domain``, ``domain_acc`` and ``lambda``."""
        self.train()
        loss, _, out = self.dann_losses(batch)
        self.step(loss)
        return {"loss": loss.item(), **out}
