"""Pieces shared by the domain-adaptation methods: gradient reversal, domain
discriminators, Ganin et al.'s schedules, and the adversarial method base.

Every UDA method takes a :class:`~shiftlab.batches.DomainPair` in ``update``: a labelled
source batch ``source.x: [B, C, H, W]``, ``source.y: [B]`` and unlabelled target images
``target_x: [B', C, H, W]``. Target labels never reach a method.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import DomainPair
from shiftlab.errors import RecipeError
from shiftlab.methods.base import TrainableMethod
from shiftlab.optim import OptimizerFactory

__all__ = [
    "DomainDiscriminator",
    "GradientReversal",
    "UdaMethod",
    "grad_reverse",
    "grl_coefficient",
]


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Identity forward; multiplies the gradient by ``-coeff`` backward (Ganin & Lempitsky 2015)."""
    return _ReverseGrad.apply(x, float(coeff))


class GradientReversal(nn.Module):
    """The gradient reversal layer ``R_lambda`` as a module; set :attr:`coeff` to change lambda."""

    def __init__(self, coeff: float = 1.0) -> None:
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.coeff)


def grl_coefficient(progress: float, schedule: str, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """Adversarial weight lambda at training ``progress`` in [0, 1].

    Args:
        progress: fraction of training done.
        schedule: ``ganin`` (``2 / (1 + exp(-gamma p)) - 1``, Ganin et al. JMLR 2016, sec. 5.2.2)
            or ``constant``.
        gamma: steepness of the ``ganin`` ramp (10 in the paper).
        max_value: the value lambda ramps up to.
    """
    if schedule == "constant":
        return max_value
    if schedule == "ganin":
        p = min(max(progress, 0.0), 1.0)
        return max_value * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
    raise ValueError(f"unknown lambda schedule {schedule!r}; use ganin or constant")


class DomainDiscriminator(nn.Module):
    """MLP ``in_features -> hidden (x layers) -> 1`` (ReLU, dropout) giving a domain logit.

    ``layers=2`` (the default) is the ``in -> hidden -> hidden -> 1`` discriminator of Ganin
    et al.'s Office experiments; ``layers=1`` is their MNIST domain classifier
    (``in -> 100 -> 1``).

    Shapes: ``[B, in_features] -> [B]`` (logit of "comes from the source").
    """

    def __init__(self, in_features: int, hidden: int, dropout: float = 0.5, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise RecipeError(f"The domain discriminator needs at least one hidden layer, got layers={layers}.")
        mods: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*mods, nn.Linear(width, 1))

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f).squeeze(1)


def domain_loss(logits_src: Tensor, logits_tgt: Tensor, w_src: Tensor | None = None,
                w_tgt: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of a discriminator (source = 1, target = 0), optionally weighted
    per sample (each domain's weights normalised to mean 1); ``[B], [B'] -> scalar``."""
    def norm(w: Tensor | None) -> Tensor | None:
        return None if w is None else w / w.mean().clamp_min(1e-12)

    ls = F.binary_cross_entropy_with_logits(logits_src, torch.ones_like(logits_src), weight=norm(w_src))
    lt = F.binary_cross_entropy_with_logits(logits_tgt, torch.zeros_like(logits_tgt), weight=norm(w_tgt))
    return 0.5 * (ls + lt)


def domain_accuracy(logits_src: Tensor, logits_tgt: Tensor) -> float:
    """Fraction of source and target samples the discriminator assigns to their domain."""
    with torch.no_grad():
        right = (logits_src > 0).sum() + (logits_tgt <= 0).sum()
        return float(right) / (len(logits_src) + len(logits_tgt))


class UdaMethod(TrainableMethod):
    """Base of the UDA methods: a backbone (features + head) trained on
    :class:`~shiftlab.batches.DomainPair` batches; prediction is the backbone's logits."""

    family: ClassVar[str] = "uda"
    batch_kind: ClassVar[str] = "domain_pair"

    def __init__(self, backbone: Backbone, num_classes: int, hparams: Any, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.lr_schedule = getattr(hparams, "lr_schedule", "constant")
        self.domain_forward = getattr(hparams, "domain_forward", "joint")
        if self.domain_forward not in ("joint", "separate"):
            raise RecipeError(f"domain_forward must be joint or separate, got {self.domain_forward!r}.")

    def features_and_logits(self, batch: DomainPair) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One pass over source and target together.

        Returns:
            ``(f_src [B, D], f_tgt [B', D], logits_src [B, C], logits_tgt [B', C])``.
        """
        _, f, logits = self.trunk_features_and_logits(batch)
        b = len(batch.source.x)
        return f[:b], f[b:], logits[:b], logits[b:]

    def trunk_features_and_logits(self, batch: DomainPair) -> tuple[Tensor, Tensor, Tensor]:
        """The pass over source and target (one joint pass, or one per domain when the
        method's ``domain_forward`` is ``separate``), keeping every stage.

        Returns:
            ``(trunk [B + B', trunk_features], features [B + B', D], logits [B + B', C])``,
            source rows first (the trunk is e.g. the flattened convolutions).
        """
        if self.domain_forward == "separate":
            # one pass per domain: BatchNorm layers normalise each domain by its own batch
            # statistics during training (their running averages mix both domains)
            parts = [self._trunk_features_logits(x) for x in (batch.source.x, batch.target_x)]
            t, f, logits = (torch.cat(z) for z in zip(*parts, strict=True))
            return t, f, logits
        return self._trunk_features_logits(torch.cat([batch.source.x, batch.target_x]))

    def _trunk_features_logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self.backbone.forward_trunk(x)
        f = self.backbone.features_from_trunk(t)
        return t, f, self.backbone.head(f)

    def step(self, loss: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
