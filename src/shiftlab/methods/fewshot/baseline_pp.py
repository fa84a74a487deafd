"""Baseline++: pre-train with a cosine classifier, fine-tune a new one on each support set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Labeled
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class BaselinePPHparams:
    """Hyper-parameters of :class:`BaselinePP` (defaults: Chen et al. 2019).

    Attributes:
        scale: cosine-logit scale; 0 selects Chen et al.'s rule (2 for at most 200
            classes, else 10), applied separately to pre-training and fine-tuning.
        finetune_epochs: passes over the support when fitting the new classifier (100).
        finetune_batch: support images per fine-tuning step (4).
        finetune_lr: SGD learning rate of the new classifier (0.01; momentum 0.9,
            dampening 0.9, weight decay 0.001 as in the paper's code).
        lr_schedule: ``constant`` or ``cosine`` for pre-training.
    """

    scale: float = 0.0
    finetune_epochs: int = 100
    finetune_batch: int = 4
    finetune_lr: float = 0.01
    lr_schedule: str = "constant"


def _scale(scale: float, n_classes: int) -> float:
    return scale if scale > 0 else (2.0 if n_classes <= 200 else 10.0)


class CosineClassifier(nn.Module):
    """``scale * cos(f, w_c)`` logits ``[B, C]`` for features ``[B, D]`` (Chen et al.'s distLinear)."""

    def __init__(self, dim: int, n_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = scale

    def forward(self, f: Tensor) -> Tensor:
        return self.scale * F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T


@METHODS.register(
    "baseline_pp",
    summary="Baseline++: cosine-classifier pre-training on the base classes, new cosine head fit per support set",
    paper="Chen, Liu, Kira, Wang & Huang, 'A Closer Look at Few-shot Classification', ICLR 2019",
    family="fewshot",
)
class BaselinePP(FewShotMethod):
    """Baseline++ (Chen et al. 2019).

    Pre-training is ordinary supervised learning over all meta-training classes
    (``num_classes``) with a cosine classifier; at test time the backbone is frozen and
    a new cosine classifier over the episode's N classes is trained on the support
    features (fixed-seed SGD, so predictions are deterministic).

    Shapes: training batch ``x: [B, C, H, W]``, ``y: [B]`` in ``[0, num_classes)``; an
    episode's query ``[Q, C, H, W]`` -> logits ``[Q, N]``.
    """

    Hparams = BaselinePPHparams
    batch_kind = "labeled"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: BaselinePPHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.lr_schedule = hparams.lr_schedule
        self.classifier = CosineClassifier(backbone.num_features, max(num_classes, 1),
                                           _scale(hparams.scale, num_classes))
        self.opt = optimizer(self.parameters())

    def update(self, batch: Labeled) -> dict[str, float]:
        """One supervised step over the base classes; returns ``loss`` and ``acc``."""
        self.train()
        logits = self.classifier(self.embed(batch.x))
        loss = F.cross_entropy(logits, batch.y)
        self._step(loss)
        return {"loss": loss.item(), "acc": (logits.argmax(1) == batch.y).float().mean().item()}

    def similarity_from_embeddings(self, e1: Tensor, e2: Tensor) -> Tensor:
        return F.cosine_similarity(e1, e2, dim=1)

    def logits_from_embeddings(self, support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
        """Fit a new N-way cosine classifier on ``support: [N*K, D]``; logits ``[Q, N]`` for ``query``."""
        gen = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            head = CosineClassifier(support.shape[1], n_way, _scale(self.hparams.scale, n_way)).to(support.device)
        opt = torch.optim.SGD(head.parameters(), lr=self.hparams.finetune_lr, momentum=0.9, dampening=0.9,
                              weight_decay=1e-3)
        s, y = support.detach(), support_y
        bs = max(1, self.hparams.finetune_batch)
        with torch.enable_grad():
            for _ in range(self.hparams.finetune_epochs):
                order = torch.randperm(len(s), generator=gen)
                for i in range(0, len(s), bs):
                    idx = order[i : i + bs]
                    loss = F.cross_entropy(head(s[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            return head(query)
