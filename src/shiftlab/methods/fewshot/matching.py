"""Matching Networks (without full-context embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Episode
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class MatchingHparams:
    """Hyper-parameters of :class:`MatchingNet`.

    Attributes:
        scale: inverse temperature of the cosine attention (Vinyals et al. use the raw
            cosine, i.e. 1.0; a larger scale trains much faster with BatchNorm backbones).
        lr_schedule: ``constant`` or ``cosine``.
    """

    scale: float = 10.0
    lr_schedule: str = "constant"


@METHODS.register(
    "matching",
    summary="Matching Networks: softmax attention over cosine similarities to every support image",
    paper="Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, 'Matching Networks for One Shot Learning', NeurIPS 2016",
    family="fewshot",
)
class MatchingNet(FewShotMethod):
    """Matching Networks (Vinyals et al. 2016), with the same embedding for support and query.

    ``p(y | q) = sum_i a(q, s_i) 1[y_i = y]`` with ``a = softmax_i(scale * cos(f(q), f(s_i)))``;
    trained by the negative log-likelihood of the query labels. The optional full-context
    embeddings (bidirectional LSTM over the support, attention LSTM over the query) are
    not implemented: Vinyals et al. report they matter little on Omniglot.

    Shapes: support ``[N*K, C, H, W]``, query ``[Q, C, H, W]`` -> log-probabilities ``[Q, N]``.
    """

    Hparams = MatchingHparams
    batch_kind = "episode"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: MatchingHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.lr_schedule = hparams.lr_schedule
        self.opt = optimizer(self.parameters())

    def logits_from_embeddings(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Log-probabilities ``[Q, N]`` (usable as logits) from embeddings."""
        att = (self.hparams.scale * F.normalize(query, dim=1) @ F.normalize(support, dim=1).T).softmax(1)
        probs = att @ F.one_hot(support_y, n_way).to(att.dtype)
        return probs.clamp_min(1e-8).log()

    def similarity_from_embeddings(self, e1: Tensor, e2: Tensor) -> Tensor:
        """Cosine similarity ``[B]`` (the metric the attention uses)."""
        return F.cosine_similarity(e1, e2, dim=1)

    def update(self, batch: Episode) -> dict[str, float]:
        """One episode: NLL of the query labels; returns ``loss`` and ``acc``."""
        self.train()
        n_way = int(batch.support_y.max()) + 1
        emb = self.embed(torch.cat([batch.support_x, batch.query_x]))
        ns = len(batch.support_x)
        logp = self.logits_from_embeddings(emb[:ns], batch.support_y, emb[ns:], n_way)
        loss = F.nll_loss(logp, batch.query_y)
        self._step(loss)
        return {"loss": loss.item(), "acc": (logp.argmax(1) == batch.query_y).float().mean().item()}
