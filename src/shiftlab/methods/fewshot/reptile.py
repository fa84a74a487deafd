"""Reptile: first-order meta-learning by moving the initialisation towards task-adapted weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Episode
from shiftlab.losses.metric import semihard_triplet_loss
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.adapt import HEAD_INITS, Features, TaskNet, interpolate_, task_head
from shiftlab.methods.fewshot.common import FewShotMethod, prototypes, sq_euclidean_logits
from shiftlab.optim import OptimizerFactory

INNER_LOSSES = ("ce", "triplet")


@dataclass(frozen=True)
class ReptileHparams:
    """Hyper-parameters of :class:`Reptile` (defaults: Nichol et al. 2018, Omniglot).

    Attributes:
        inner_steps: inner optimisation steps per training task (5). The one-shot document
            runs 30 inner epochs.
        eval_inner_steps: inner steps at meta-test time on the support (50).
        inner_lr: learning rate of the inner Adam (1e-3; betas (0, 0.999) as Nichol et al.).
        inner_batch: images per inner step (0: the whole task each step; Nichol et al. use 10).
        meta_step: epsilon, the outer interpolation step at the start (1.0).
        meta_step_final: epsilon at the end of training, annealed linearly (0.0). The
            document uses a constant 0.01 (set both to 0.01).
        meta_batch: tasks averaged per meta-step (5).
        head_init: task head: ``zero``, ``proto`` or ``learned`` (see
            :func:`~shiftlab.methods.fewshot.adapt.task_head`).
        way: width of the ``learned`` head.
        inner_loss: ``ce`` (N-way cross-entropy, Nichol et al.) or ``triplet`` (the one-shot
            document's Siamese triplet network meta-trained with Reptile: semi-hard triplet
            loss on L2-normalised features, nearest-prototype prediction).
        margin: triplet margin (``inner_loss=triplet``).
    """

    inner_steps: int = 5
    eval_inner_steps: int = 50
    inner_lr: float = 1e-3
    inner_batch: int = 0
    meta_step: float = 1.0
    meta_step_final: float = 0.0
    meta_batch: int = 5
    head_init: str = "zero"
    way: int = 5
    inner_loss: str = "ce"
    margin: float = 0.2


@METHODS.register(
    "reptile",
    summary="Reptile: first-order meta-learning, theta += eps * (adapted - theta), around any backbone",
    paper="Nichol, Achiam & Schulman, 'On First-Order Meta-Learning Algorithms' (Reptile), arXiv:1803.02999, 2018",
    family="fewshot",
)
class Reptile(FewShotMethod):
    """Reptile (Nichol et al. 2018).

    For each task of a meta-batch, copy the weights, train the copy with Adam for
    ``inner_steps`` on the task's images (support and query of a training episode), and
    move the weights towards the mean of the adapted copies:
    ``theta <- theta + eps * mean_i(phi_i - theta)``. At test time the copy is trained on the
    support only (``eval_inner_steps``) and predicts the queries. BatchNorm uses batch
    statistics (Nichol et al.'s transductive setting).

    Shapes: support ``[N*K, C, H, W]``, query ``[Q, C, H, W]`` -> logits ``[Q, N]``.
    """

    Hparams = ReptileHparams
    batch_kind = "episode"
    embeds_independently = False

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: ReptileHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.head_init not in HEAD_INITS:
            raise ValueError(f"reptile: head_init {hparams.head_init!r}; use one of {', '.join(HEAD_INITS)}")
        if hparams.inner_loss not in INNER_LOSSES:
            raise ValueError(f"reptile: inner_loss {hparams.inner_loss!r}; use one of {', '.join(INNER_LOSSES)}")
        self.features = Features(backbone)
        self.net = TaskNet(self.features)
        self.head = nn.Linear(backbone.num_features, hparams.way) if hparams.head_init == "learned" else None
        self._fast: tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None, dict[str, Tensor], Tensor, Tensor] | None = None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """None: the inner Adam is new for every task and the outer step is an interpolation."""
        return {}

    @property
    def episodes_per_update(self) -> int:
        return self.hparams.meta_batch

    def _features(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        f = self.net.feats(params, buffers, x)
        return F.normalize(f, dim=1) if self.hparams.inner_loss == "triplet" else f

    def _inner(
        self, x: Tensor, y: Tensor, n_way: int, steps: int, buffers: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None, float]:
        """Train a copy of the weights on ``(x, y)``; returns fast params, head and the last loss."""
        x = self._prep(x)
        params = {k: v.detach().clone().requires_grad_() for k, v in self.net.params().items()}
        leaves = list(params.values())
        head: tuple[Tensor, Tensor] | None = None
        if self.hparams.inner_loss == "ce":
            with torch.no_grad():
                feats = self._features(params, {k: v.clone() for k, v in buffers.items()}, x)
                w, b = task_head(self.hparams.head_init, feats, y, n_way, self.head)
            head = (w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_())
            leaves += list(head)
        opt = torch.optim.Adam(leaves, lr=self.hparams.inner_lr, betas=(0.0, 0.999))
        bs = self.hparams.inner_batch
        loss_value = float("nan")
        order = torch.randperm(len(x)) if bs else None
        pos = 0
        for _ in range(steps):
            if order is not None and bs < len(x):
                if pos + bs > len(x):
                    order, pos = torch.randperm(len(x)), 0
                idx = order[pos : pos + bs]
                pos += bs
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y
            feats = self._features(params, buffers, xb)
            if head is not None:
                loss = F.cross_entropy(F.linear(feats, head[0], head[1]), yb)
            else:
                loss = semihard_triplet_loss(feats, yb, self.hparams.margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()
        return params, head, loss_value

    def update(self, batch: Episode | Sequence[Episode]) -> dict[str, float]:
        """One meta-step over a list of episodes (or one); returns the mean last inner ``loss`` and ``meta_step``."""
        self.train()
        episodes = [batch] if isinstance(batch, Episode) else list(batch)
        theta = [p.detach().clone() for p in self.parameters()]
        names = [n for n, _ in self.named_parameters()]
        deltas = [torch.zeros_like(p) for p in theta]
        buffers = self.net.buffers(copy=False)
        losses = []
        for ep in episodes:
            x = torch.cat([ep.support_x, ep.query_x])
            y = torch.cat([ep.support_y, ep.query_y])
            n_way = int(y.max()) + 1
            params, head, loss = self._inner(x, y, n_way, self.hparams.inner_steps, buffers)
            losses.append(loss)
            fast = dict(params)  # keys "backbone.*", as in self.named_parameters()
            if head is not None and self.head is not None:
                w = self.head.weight.detach().clone()
                b = self.head.bias.detach().clone()
                w[:n_way], b[:n_way] = head[0].detach(), head[1].detach()
                fast["head.weight"], fast["head.bias"] = w, b
            for i, n in enumerate(names):
                if n in fast:
                    deltas[i] += fast[n].detach() - theta[i]
        eps = self.hparams.meta_step + (self.hparams.meta_step_final - self.hparams.meta_step) * self.progress
        interpolate_(self, [d / len(episodes) for d in deltas], eps)
        return {"loss": sum(losses) / len(losses), "meta_step": eps}

    def fit_support(self, support_x: Tensor, support_y: Tensor) -> None:
        """Train a copy on the support for ``eval_inner_steps``; the model is unchanged."""
        self.train()
        buffers = self.net.buffers(copy=True)
        n_way = int(support_y.max()) + 1
        with torch.enable_grad():
            params, head, _ = self._inner(support_x, support_y, n_way, self.hparams.eval_inner_steps, buffers)
        fast = {k: v.detach() for k, v in params.items()}
        det_head = None if head is None else (head[0].detach(), head[1].detach())
        self._fast = (fast, det_head, buffers, support_x, support_y)

    @torch.no_grad()
    def predict(self, query_x: Tensor) -> Tensor:
        """Logits ``[Q, N]`` of the adapted copy from the last :meth:`fit_support`."""
        if self._fast is None:
            raise RuntimeError("call fit_support(support_x, support_y) before predict(query_x)")
        params, head, buffers, sx, sy = self._fast
        self.train()
        if head is not None:
            return F.linear(self._features(params, buffers, self._prep(query_x)), head[0], head[1])
        n_way = int(sy.max()) + 1
        feats = self._features(params, buffers, self._prep(torch.cat([sx, query_x])))
        return sq_euclidean_logits(feats[len(sx) :], prototypes(feats[: len(sx)], sy, n_way))
