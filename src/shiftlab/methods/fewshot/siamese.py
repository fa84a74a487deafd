"""Siamese networks for one-shot recognition: a same/different pair classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.data.episodes import Pairs
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class SiameseHparams:
    """Hyper-parameters of :class:`SiameseNet` (Koch et al. 2015).

    Attributes:
        embed_dim: width of a ``Linear - sigmoid`` layer on the backbone features (Koch et
            al. use 4,096); 0: the backbone features themselves.
        aggregate: how the scores of a class's K support images combine into its logit:
            ``max`` (Koch et al.'s nearest-example rule) or ``mean``.
        lr_schedule: ``constant`` or ``cosine``.
    """

    embed_dim: int = 0
    aggregate: str = "max"
    lr_schedule: str = "constant"


@METHODS.register(
    "siamese",
    summary="Siamese pair classifier (same/different, weighted L1 of twin embeddings); 1-NN few-shot rule",
    paper="Koch, Zemel & Salakhutdinov, 'Siamese Neural Networks for One-shot Image Recognition', ICML DL Workshop 2015",
    family="fewshot",
)
class SiameseNet(FewShotMethod):
    """Siamese network (Koch et al. 2015).

    Both images go through the same backbone (twin weights); the pair score is
    ``w . |h(x1) - h(x2)| + b`` (a logit of "same class"), trained with binary
    cross-entropy on balanced same/different :class:`~shiftlab.data.episodes.Pairs`.
    A query is classified by the support image with the highest score (``max`` over the
    class's shots).

    Shapes: pairs ``x1, x2: [B, C, H, W]`` -> logits ``[B]``; an episode's query
    ``[Q, C, H, W]`` -> class logits ``[Q, N]``.
    """

    Hparams = SiameseHparams
    batch_kind = "pairs"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: SiameseHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.aggregate not in ("max", "mean"):
            raise ValueError(f"siamese: aggregate {hparams.aggregate!r}; use max or mean")
        self.lr_schedule = hparams.lr_schedule
        width = backbone.num_features
        self.embed_head: nn.Module = nn.Identity()
        if hparams.embed_dim:
            self.embed_head = nn.Sequential(nn.Linear(width, hparams.embed_dim), nn.Sigmoid())
            width = hparams.embed_dim
        self.pair_head = nn.Linear(width, 1)
        self.opt = optimizer(self.parameters())

    def embed(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> twin embedding ``[B, D]``."""
        return self.embed_head(self.backbone.forward_features(self._prep(x))).float()

    def pair_logits(self, e1: Tensor, e2: Tensor) -> Tensor:
        """Same-class logits for embeddings ``e1: [..., D]`` and ``e2: [..., D]`` -> ``[...]``."""
        return self.pair_head((e1 - e2).abs()).squeeze(-1)

    def similarity_from_embeddings(self, e1: Tensor, e2: Tensor) -> Tensor:
        """Probability ``[B]`` that the two images share a class."""
        return torch.sigmoid(self.pair_logits(e1, e2))

    def logits_from_embeddings(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Class logits ``[Q, N]``: the best (or mean) pair logit over each class's support images."""
        scores = self.pair_logits(query[:, None, :], support[None, :, :])  # [Q, N*K]
        index = support_y[None, :].expand_as(scores)
        out = torch.full((len(query), n_way), float("-inf") if self.hparams.aggregate == "max" else 0.0,
                         dtype=scores.dtype, device=scores.device)
        if self.hparams.aggregate == "max":
            return out.scatter_reduce(1, index, scores, reduce="amax", include_self=True)
        return out.scatter_reduce(1, index, scores, reduce="mean", include_self=False)

    def update(self, batch: Pairs) -> dict[str, float]:
        """One batch of pairs: binary cross-entropy; returns ``loss`` and ``acc`` (at logit 0)."""
        self.train()
        emb = self.embed(torch.cat([batch.x1, batch.x2]))
        logits = self.pair_logits(emb[: len(batch.x1)], emb[len(batch.x1) :])
        loss = F.binary_cross_entropy_with_logits(logits, batch.same)
        self._step(loss)
        acc = ((logits > 0).float() == batch.same).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}
