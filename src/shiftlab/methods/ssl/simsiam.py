"""SimSiam: a Siamese network with a predictor and a stop-gradient, no negatives, no EMA."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Views
from shiftlab.losses.ssl import simsiam_loss
from shiftlab.methods import METHODS
from shiftlab.methods.ssl.common import SslMethod, mlp_head
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class SimSiamHparams:
    """Hyper-parameters of :class:`SimSiam` (defaults: Chen & He, CVPR 2021, sec. 4 and
    appendix A, ImageNet).

    Attributes:
        projection_dim: output width of the projector (2048).
        projection_hidden: hidden width of the projector (2048).
        projection_layers: linear layers of the projector (3 on ImageNet; 2 in the
            paper's CIFAR-10 experiments). BN after every layer, no ReLU after the last.
        predictor_hidden: bottleneck width of the predictor (512).
        fix_predictor_lr: keep the predictor's learning rate constant while the rest is
            annealed (the paper's finding, sec. 4.2).
        lr_schedule: ``cosine`` (the paper's) or ``constant``.
        warmup: fraction of training with a linear learning-rate warm-up (none).
        joint_forward: both views in one forward pass (see :mod:`shiftlab.methods.ssl.common`).
    """

    projection_dim: int = 2048
    projection_hidden: int = 2048
    projection_layers: int = 3
    predictor_hidden: int = 512
    fix_predictor_lr: bool = True
    lr_schedule: str = "cosine"
    warmup: float = 0.0
    joint_forward: bool = True


@METHODS.register(
    "simsiam",
    summary="SimSiam: Siamese encoder + predictor, symmetric negative cosine with stop-gradient (no negatives, no EMA)",
    paper="Chen & He, 'Exploring Simple Siamese Representation Learning', CVPR 2021",
    family="ssl",
)
class SimSiam(SslMethod):
    """SimSiam (Chen & He 2021).

    Encoder ``f = projector(backbone.forward_features(x))`` shared by both views, predictor
    ``h``; loss :func:`~shiftlab.losses.ssl.simsiam_loss`
    ``D(h(z1), sg(z2)) / 2 + D(h(z2), sg(z1)) / 2`` with ``D`` the negative cosine. The
    stop-gradient is what prevents collapse (the paper's sec. 4.1).

    Shapes: views ``[B, C, H, W]`` -> features ``[B, D]`` -> ``z, p: [B, projection_dim]``.
    """

    Hparams = SimSiamHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: SimSiamHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        h = hparams
        self.projector = mlp_head(backbone.num_features, h.projection_hidden, h.projection_dim,
                                  layers=h.projection_layers, last_bn=True)
        self.predictor = mlp_head(h.projection_dim, h.predictor_hidden, h.projection_dim)
        self.opt = self.optimizer_factory([
            {"params": self.encoder_parameters() + list(self.projector.parameters())},
            {"params": list(self.predictor.parameters()), "fixed_lr": h.fix_predictor_lr},
        ])

    def project(self, x: Tensor) -> Tensor:
        """``z = projector(features(x))``: ``[B, C, H, W] -> [B, projection_dim]``."""
        return self.projector(self.backbone.forward_features(x))

    def loss(self, batch: Views) -> tuple[Tensor, dict[str, float]]:
        """Symmetric SimSiam loss (in ``[-1, 1]``); logs ``z_std``, the per-dimension std of
        the normalised projections (about ``1 / sqrt(dim)`` when healthy, 0 when collapsed)."""
        z1, z2 = self.two_views(self.project, batch)
        p1, p2 = self.two_views(self.predictor, Views(z1, z2))
        z_std = (z1 / z1.norm(dim=1, keepdim=True).clamp_min(1e-12)).std(dim=0).mean()
        return simsiam_loss(p1, p2, z1, z2), {"z_std": z_std.item()}
