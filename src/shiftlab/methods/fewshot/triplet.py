"""Triplet-loss embedding (FaceNet) with nearest-prototype few-shot prediction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.data.episodes import Triplets
from shiftlab.losses.metric import batch_hard_triplet_loss, semihard_triplet_loss, triplet_loss
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.common import FewShotMethod, prototypes, sq_euclidean_logits
from shiftlab.optim import OptimizerFactory

MINING = ("none", "hard", "semihard")


@dataclass(frozen=True)
class TripletHparams:
    """Hyper-parameters of :class:`TripletNet` (defaults: Schroff et al. 2015).

    Attributes:
        margin: the triplet margin alpha (0.2 on unit-norm embeddings in FaceNet).
        mining: ``none`` (the sampled triplets as given), ``hard`` (batch-hard: the farthest
            positive and nearest negative of each anchor among all images of the batch;
            Hermans et al. 2017) or ``semihard`` (FaceNet's semi-hard negatives).
        normalize: L2-normalise embeddings (FaceNet's unit hypersphere).
        lr_schedule: ``constant`` or ``cosine``.
    """

    margin: float = 0.2
    mining: str = "semihard"
    normalize: bool = True
    lr_schedule: str = "constant"


@METHODS.register(
    "triplet",
    summary="Embedding trained with the triplet loss (none/hard/semi-hard mining); nearest-prototype prediction",
    paper="Schroff, Kalenichenko & Philbin, 'FaceNet: A Unified Embedding for Face Recognition and Clustering', CVPR 2015",
    family="fewshot",
)
class TripletNet(FewShotMethod):
    """Triplet network (Schroff et al. 2015), the one-shot document's "Siamese network with triplet loss".

    Trained on :class:`~shiftlab.data.episodes.Triplets` with
    ``max(0, ||f(a) - f(p)||^2 - ||f(a) - f(n)||^2 + margin)``; with mining, every image of
    the batch (anchors, positives, negatives, with their labels) is a candidate. A few-shot
    query is assigned to the nearest class mean of the support embeddings.

    Shapes: triplets ``[B, C, H, W]`` each -> embeddings ``[B, D]``; query ``[Q, C, H, W]`` ->
    logits ``[Q, N]`` (minus squared distances to prototypes).
    """

    Hparams = TripletHparams
    batch_kind = "triplets"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: TripletHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.mining not in MINING:
            raise ValueError(f"triplet: mining {hparams.mining!r}; use one of {', '.join(MINING)}")
        self.lr_schedule = hparams.lr_schedule
        self.opt = optimizer(self.parameters())

    def embed(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> ``[B, D]`` (unit norm when ``normalize``)."""
        e = self.backbone.forward_features(self._prep(x)).float()
        return F.normalize(e, dim=1) if self.hparams.normalize else e

    def logits_from_embeddings(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Minus squared distances ``[Q, N]`` to the class means of the support embeddings."""
        return sq_euclidean_logits(query, prototypes(support, support_y, n_way))

    def update(self, batch: Triplets) -> dict[str, float]:
        """One batch of triplets; returns ``loss`` and ``acc`` (fraction with d(a,p) < d(a,n))."""
        self.train()
        b = len(batch.anchor)
        emb = self.embed(torch.cat([batch.anchor, batch.positive, batch.negative]))
        a, p, n = emb[:b], emb[b : 2 * b], emb[2 * b :]
        m = self.hparams.margin
        if self.hparams.mining == "none":
            loss = triplet_loss(a, p, n, m)
        else:
            labels = torch.cat([batch.anchor_y, batch.anchor_y, batch.negative_y])
            mine = batch_hard_triplet_loss if self.hparams.mining == "hard" else semihard_triplet_loss
            loss = mine(emb, labels, m)
        self._step(loss)
        with torch.no_grad():
            acc = ((a - p).pow(2).sum(1) < (a - n).pow(2).sum(1)).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}
