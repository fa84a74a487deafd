"""Prototypical Networks with Euclidean, cosine or learned (parametric) distance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Episode
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.common import (
    FewShotMethod,
    cosine_logits,
    euclidean_logits,
    prototypes,
    sq_euclidean_logits,
)
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class ProtoNetHparams:
    """Hyper-parameters of :class:`ProtoNet` (defaults: Snell et al. 2017).

    Attributes:
        distance: ``euclidean`` (squared, the paper's), ``l2`` (the Euclidean distance
            itself, not squared: easyfsl's default; softer logits, which trained better in
            short runs here, see the README's few-shot results), ``cosine`` (scaled cosine
            similarity) or ``parametric`` (an MLP scores each (query, prototype) pair:
            ``Linear(2D, D) - ReLU - Dropout - Linear(D, 1)``, ``D`` the embedding width,
            as in the ProtoNet homework document's "parametric function").
        projection: widths of an MLP head on the backbone features (``Linear - ReLU -
            Dropout`` between layers, no activation after the last). Empty: none (the
            paper). The document uses ``(800, 800, 400)`` on Conv-4's 1,600 features.
        dropout: dropout in the projection head and the parametric scorer.
        cosine_scale: initial scale (inverse temperature) of the cosine logits.
        learn_scale: learn the cosine scale.
        parametric_hidden: hidden width of the parametric scorer (0: the embedding width).
        lr_schedule: ``constant`` or ``cosine`` annealing over training.
    """

    distance: str = "euclidean"
    projection: tuple[int, ...] = ()
    dropout: float = 0.0
    cosine_scale: float = 10.0
    learn_scale: bool = True
    parametric_hidden: int = 0
    lr_schedule: str = "constant"


DISTANCES = ("euclidean", "l2", "cosine", "parametric")


@METHODS.register(
    "protonet",
    summary="Prototypical Networks: nearest class mean in a learned embedding (euclidean/l2/cosine/parametric)",
    paper="Snell, Swersky & Zemel, 'Prototypical Networks for Few-shot Learning', NeurIPS 2017",
    family="fewshot",
)
class ProtoNet(FewShotMethod):
    """Prototypical Networks (Snell et al. 2017).

    Each class of an episode is represented by the mean embedding of its support images
    (the prototype, ``[N, D]``); a query's logits are minus its squared Euclidean
    distances to the prototypes (or a scaled cosine, or a learned pair score). Trained
    by cross-entropy over the queries of episodes; the training way may differ from the
    test way (Snell et al. train 60-way, test 5/20-way).

    Shapes: support ``[N*K, C, H, W]`` -> prototypes ``[N, D]``; query ``[Q, C, H, W]`` ->
    logits ``[Q, N]``.
    """

    Hparams = ProtoNetHparams
    batch_kind = "episode"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: ProtoNetHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.distance not in DISTANCES:
            raise ValueError(f"protonet: distance {hparams.distance!r}; use one of {', '.join(DISTANCES)}")
        self.lr_schedule = hparams.lr_schedule
        width = backbone.num_features
        layers: list[nn.Module] = []
        for i, w in enumerate(hparams.projection):
            if i:
                layers += [nn.ReLU(inplace=True), nn.Dropout(hparams.dropout)]
            layers.append(nn.Linear(width, w))
            width = w
        self.projection = nn.Sequential(*layers)
        self.embed_dim = width
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(hparams.cosine_scale)), requires_grad=hparams.learn_scale
        )
        self.scorer: nn.Module | None = None
        if hparams.distance == "parametric":
            hidden = hparams.parametric_hidden or width
            self.scorer = nn.Sequential(
                nn.Linear(2 * width, hidden), nn.ReLU(inplace=True), nn.Dropout(hparams.dropout), nn.Linear(hidden, 1)
            )
        self.opt = optimizer([p for p in self.parameters() if p.requires_grad])

    def embed(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> ``[B, D]`` (backbone features, then the projection head)."""
        return self.projection(self.backbone.forward_features(self._prep(x))).float()

    def logits_from_embeddings(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Logits ``[Q, N]`` from support ``[N*K, D]`` and query ``[Q, D]`` embeddings."""
        protos = prototypes(support, support_y, n_way)
        if self.hparams.distance == "euclidean":
            return sq_euclidean_logits(query, protos)
        if self.hparams.distance == "l2":
            return euclidean_logits(query, protos)
        if self.hparams.distance == "cosine":
            return cosine_logits(query, protos, self.log_scale.exp())
        assert self.scorer is not None
        q, n = query.shape[0], protos.shape[0]
        pairs = torch.cat([query[:, None, :].expand(q, n, -1), protos[None, :, :].expand(q, n, -1)], dim=2)
        return self.scorer(pairs).squeeze(-1)

    def update(self, batch: Episode) -> dict[str, float]:
        """One episode: cross-entropy of the query logits; returns ``loss`` and ``acc``."""
        self.train()
        n_way = int(batch.support_y.max()) + 1
        emb = self.embed(torch.cat([batch.support_x, batch.query_x]))
        ns = len(batch.support_x)
        logits = self.logits_from_embeddings(emb[:ns], batch.support_y, emb[ns:], n_way)
        loss = F.cross_entropy(logits, batch.query_y)
        self._step(loss)
        acc = (logits.argmax(1) == batch.query_y).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}
