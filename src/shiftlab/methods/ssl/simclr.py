"""SimCLR: contrastive learning of two views with the NT-Xent loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Views
from shiftlab.losses.ssl import nt_xent_loss
from shiftlab.methods import METHODS
from shiftlab.methods.ssl.common import SslMethod, mlp_head
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class SimClrHparams:
    """Hyper-parameters of :class:`SimCLR` (defaults: Chen et al., ICML 2020).

    Attributes:
        projection_dim: output width of the projection head ``g`` (128, sec. 4.2).
        projection_hidden: hidden width of ``g`` (0: the backbone's feature width, as the
            paper's ``W(2) ReLU(W(1) h)`` with ``W(1)`` square).
        temperature: tau of NT-Xent (0.5, the paper's CIFAR-10 setting, appendix B.9;
            large-batch ImageNet training uses 0.1).
        lr_schedule: ``cosine`` (the paper's decay) or ``constant``.
        warmup: fraction of training with a linear learning-rate warm-up (10 of 100
            epochs in the paper: 0.1).
        joint_forward: both views in one forward pass (the reference implementation
            concatenates them; see :mod:`shiftlab.methods.ssl.common`).
    """

    projection_dim: int = 128
    projection_hidden: int = 0
    temperature: float = 0.5
    lr_schedule: str = "cosine"
    warmup: float = 0.1
    joint_forward: bool = True


@METHODS.register(
    "simclr",
    summary="SimCLR: encoder + MLP projection head, NT-Xent contrastive loss with temperature over 2B views",
    paper="Chen, Kornblith, Norouzi & Hinton, 'A Simple Framework for Contrastive Learning of Visual Representations', ICML 2020",
    family="ssl",
)
class SimCLR(SslMethod):
    """SimCLR (Chen et al. 2020).

    ``z = g(backbone.forward_features(x))`` with the projection head ``g = Linear - BN -
    ReLU - Linear``; loss :func:`~shiftlab.losses.ssl.nt_xent_loss` over the ``2B`` views of
    a batch (the other ``2B - 2`` views are the negatives).

    Shapes: views ``[B, C, H, W]`` -> features ``[B, D]`` -> ``z: [B, projection_dim]``.
    """

    Hparams = SimClrHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: SimClrHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        h = hparams
        if h.temperature <= 0:
            raise ValueError(f"simclr: temperature must be > 0, got {h.temperature}")
        hidden = h.projection_hidden or backbone.num_features
        self.projector = mlp_head(backbone.num_features, hidden, h.projection_dim)
        self.opt = self.optimizer_factory(self.encoder_parameters() + list(self.projector.parameters()))

    def project(self, x: Tensor) -> Tensor:
        """``z = g(features(x))``: ``[B, C, H, W] -> [B, projection_dim]``."""
        return self.projector(self.backbone.forward_features(x))

    def loss(self, batch: Views) -> tuple[Tensor, dict[str, float]]:
        """NT-Xent of the two views' projections; logs the top-1 accuracy of finding the
        positive among the ``2B - 1`` candidates (``pos_acc``)."""
        z1, z2 = self.two_views(self.project, batch)
        loss = nt_xent_loss(z1, z2, self.hparams.temperature)
        with torch.no_grad():
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            sim = (z @ z.T).fill_diagonal_(-2.0)
            b = z1.shape[0]
            target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
            pos_acc = (sim.argmax(dim=1) == target).float().mean()
        return loss, {"pos_acc": pos_acc.item()}
