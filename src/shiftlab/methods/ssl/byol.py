"""BYOL: Bootstrap Your Own Latent (online network regresses an EMA target network)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Views
from shiftlab.losses.ssl import byol_symmetric_loss
from shiftlab.methods import METHODS
from shiftlab.methods.ssl.common import SslMethod, cosine_momentum, ema_update_, mlp_head
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class ByolHparams:
    """Hyper-parameters of :class:`BYOL` (defaults: Grill et al., NeurIPS 2020, sec. 3.3 and
    appendix J).

    Attributes:
        projection_dim: output width of the projector and predictor (256).
        projection_hidden: hidden width of the projector (4096).
        predictor_hidden: hidden width of the predictor (4096).
        base_momentum: ``tau_base`` of the target EMA (0.996), raised to 1 by a cosine
            schedule over training (:func:`~shiftlab.methods.ssl.common.cosine_momentum`).
        lr_schedule: ``cosine`` (the paper's decay) or ``constant``.
        warmup: fraction of training with a linear learning-rate warm-up (10 of 1000
            epochs in the paper: 0.01).
        joint_forward: both views in one forward pass (BatchNorm statistics over both
            views); ``False``: one pass per view as the reference code. See
            :mod:`shiftlab.methods.ssl.common`.
    """

    projection_dim: int = 256
    projection_hidden: int = 4096
    predictor_hidden: int = 4096
    base_momentum: float = 0.996
    lr_schedule: str = "cosine"
    warmup: float = 0.01
    joint_forward: bool = True


class _Projected(nn.Module):
    """``projector(backbone.forward_features(x))``: ``[B, C, H, W] -> [B, projection_dim]``."""

    def __init__(self, backbone: Backbone, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone.forward_features(x))


@METHODS.register(
    "byol",
    summary="BYOL: online net (projector + predictor) regresses an EMA target net; symmetric 2-2cos loss, cosine tau",
    paper="Grill et al., 'Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning', NeurIPS 2020",
    family="ssl",
)
class BYOL(SslMethod):
    """BYOL (Grill et al. 2020).

    Online network: ``backbone.forward_features -> projector -> predictor``; target
    network: a copy of ``backbone -> projector`` whose parameters are never trained by
    gradients (``requires_grad=False``, forward under ``torch.no_grad``) and follow the
    online ones by an exponential moving average after every step,
    ``xi <- tau xi + (1 - tau) theta``, with ``tau = cosine_momentum(base_momentum,
    progress)`` (``progress`` from :meth:`set_progress`, so a resumed run continues the
    schedule). Loss: :func:`~shiftlab.losses.ssl.byol_symmetric_loss`, each view's
    prediction against the target projection of the other view.

    Both networks run in training mode (BatchNorm with batch statistics, as in the paper).
    The target backbone has no classification head.

    Shapes: views ``[B, C, H, W]`` -> features ``[B, D]`` -> projections and predictions
    ``[B, projection_dim]``.
    """

    Hparams = ByolHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: ByolHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        h = hparams
        self.projector = mlp_head(backbone.num_features, h.projection_hidden, h.projection_dim)
        self.predictor = mlp_head(h.projection_dim, h.predictor_hidden, h.projection_dim)
        target_backbone = copy.deepcopy(backbone)
        target_backbone.reset_head(0)
        self.target = _Projected(target_backbone, copy.deepcopy(self.projector))
        self.target.requires_grad_(False)
        self.tau = cosine_momentum(h.base_momentum, 0.0)
        online = self.encoder_parameters() + list(self.projector.parameters()) + list(self.predictor.parameters())
        self.opt = self.optimizer_factory(online)

    def ema_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        """``(target parameters, matching online parameters)``, in one order."""
        online = dict(self.backbone.named_parameters())
        online.update({f"projector.{k}": v for k, v in self.projector.named_parameters()})
        target = dict(self.target.backbone.named_parameters())
        target.update({f"projector.{k}": v for k, v in self.target.projector.named_parameters()})
        return list(target.values()), [online[k] for k in target]

    def online(self, x: Tensor) -> Tensor:
        """Online predictions ``predictor(projector(features(x)))``: ``[B, projection_dim]``."""
        return self.predictor(self.projector(self.backbone.forward_features(x)))

    def loss(self, batch: Views) -> tuple[Tensor, dict[str, float]]:
        """Symmetric BYOL loss of ``batch`` (in ``[0, 8]``); the target runs under ``no_grad``."""
        p1, p2 = self.two_views(self.online, batch)
        with torch.no_grad():
            z1, z2 = self.two_views(self.target, batch)
        return byol_symmetric_loss(p1, p2, z1, z2), {}

    def after_step(self) -> dict[str, float]:
        """The target's EMA step with ``tau`` at the current progress."""
        self.tau = cosine_momentum(self.hparams.base_momentum, self.progress)
        target, online = self.ema_pairs()
        ema_update_(target, online, self.tau)
        return {"tau": self.tau}
