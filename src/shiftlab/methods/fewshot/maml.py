"""Model-Agnostic Meta-Learning, second-order or first-order, through ``torch.func``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Episode
from shiftlab.methods import METHODS
from shiftlab.methods.fewshot.adapt import HEAD_INITS, Features, TaskNet, task_head
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class MamlHparams:
    """Hyper-parameters of :class:`MAML` (defaults: Finn et al. 2017, Omniglot 5-way).

    Attributes:
        inner_lr: alpha, the inner SGD step size (0.4 for Omniglot).
        inner_steps: inner SGD steps during meta-training (1 for Omniglot).
        eval_inner_steps: inner steps at meta-test time (3 for Omniglot).
        first_order: drop second derivatives (FOMAML).
        meta_batch: tasks per meta-update (32 for Omniglot 5-way).
        head_init: ``zero``, ``proto`` (Proto-MAML) or ``learned`` (Finn et al.'s N-way head).
        way: width of the ``learned`` head (ignored otherwise).
        lr_schedule: ``constant`` or ``cosine`` (meta learning rate).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    first_order: bool = False
    meta_batch: int = 32
    head_init: str = "zero"
    way: int = 5
    lr_schedule: str = "constant"


@METHODS.register(
    "maml",
    summary="MAML: meta-learn an initialisation adapted by a few SGD steps (second- or first-order)",
    paper="Finn, Abbeel & Levine, 'Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks', ICML 2017",
    family="fewshot",
)
class MAML(FewShotMethod):
    """MAML (Finn et al. 2017) around any backbone, with a task head on its features.

    For each task: ``phi = theta - alpha * grad L_support(theta)`` (``inner_steps`` times),
    then the meta-loss is the query loss at ``phi``, averaged over ``meta_batch`` tasks,
    and ``theta`` takes one step of the meta-optimizer. Second-order gradients flow
    through the inner updates (``create_graph=True``) unless ``first_order``. Fast weights
    live in dicts used with :func:`torch.func.functional_call`; BatchNorm uses batch
    statistics (transductive, as in the paper's code).

    Shapes: support ``[N*K, C, H, W]``, query ``[Q, C, H, W]`` -> logits ``[Q, N]``.
    """

    Hparams = MamlHparams
    batch_kind = "episode"
    embeds_independently = False

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: MamlHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.head_init not in HEAD_INITS:
            raise ValueError(f"maml: head_init {hparams.head_init!r}; use one of {', '.join(HEAD_INITS)}")
        self.lr_schedule = hparams.lr_schedule
        self.features = Features(backbone)
        self.net = TaskNet(self.features)
        self.head = nn.Linear(backbone.num_features, hparams.way) if hparams.head_init == "learned" else None
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.opt = optimizer(self.parameters())
        self._fast: tuple[dict[str, Tensor], tuple[Tensor, Tensor], dict[str, Tensor]] | None = None

    @property
    def episodes_per_update(self) -> int:
        return self.hparams.meta_batch

    def adapt(
        self, support_x: Tensor, support_y: Tensor, n_way: int, steps: int, create_graph: bool,
        buffers: dict[str, Tensor],
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        """Inner loop: fast weights (backbone params and head) after ``steps`` SGD steps on the support."""
        params = self.net.params()
        x = self._prep(support_x)
        feats = self.net.feats(params, buffers, x)
        head = _differentiable(task_head(self.hparams.head_init, feats, support_y, n_way, self.head))
        names = list(params)
        for step in range(steps):
            if step:
                feats = self.net.feats(params, buffers, x)
            loss = F.cross_entropy(F.linear(feats, head[0], head[1]), support_y)
            tensors = [params[k] for k in names] + [head[0], head[1]]
            grads = torch.autograd.grad(loss, tensors, create_graph=create_graph, allow_unused=True)
            lr = self.hparams.inner_lr
            new = [t - lr * g if g is not None else t for t, g in zip(tensors, grads, strict=True)]
            params = dict(zip(names, new[: len(names)], strict=True))
            head = (new[-2], new[-1])
        return params, head

    def update(self, batch: Episode | Sequence[Episode]) -> dict[str, float]:
        """One meta-update over a list of episodes (or one); returns ``loss`` and ``acc`` on the queries."""
        self.train()
        episodes = [batch] if isinstance(batch, Episode) else list(batch)
        buffers = self.net.buffers(copy=False)
        total = torch.zeros(())
        correct, count = 0, 0
        for ep in episodes:
            n_way = int(ep.support_y.max()) + 1
            params, head = self._adapt_train(ep, n_way, buffers)
            logits = self.net.logits(params, buffers, head, self._prep(ep.query_x))
            total = total + F.cross_entropy(logits, ep.query_y)
            correct += int((logits.argmax(1) == ep.query_y).sum())
            count += len(ep.query_y)
        loss = total / len(episodes)
        self._step(loss)
        return {"loss": loss.item(), "acc": correct / max(count, 1)}

    def _adapt_train(
        self, ep: Episode, n_way: int, buffers: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        with torch.enable_grad():
            return self.adapt(ep.support_x, ep.support_y, n_way, self.hparams.inner_steps,
                              create_graph=not self.hparams.first_order, buffers=buffers)

    def fit_support(self, support_x: Tensor, support_y: Tensor) -> None:
        """Adapt a copy of the weights to the support (``eval_inner_steps`` steps); the model is unchanged."""
        self.train()  # batch statistics (transductive BatchNorm), on copied buffers
        buffers = self.net.buffers(copy=True)
        n_way = int(support_y.max()) + 1
        with torch.enable_grad():
            params, head = self.adapt(support_x, support_y, n_way, self.hparams.eval_inner_steps, False, buffers)
        self._fast = ({k: v.detach() for k, v in params.items()}, (head[0].detach(), head[1].detach()), buffers)

    @torch.no_grad()
    def predict(self, query_x: Tensor) -> Tensor:
        """Logits ``[Q, N]`` of the adapted weights from the last :meth:`fit_support`."""
        if self._fast is None:
            raise RuntimeError("call fit_support(support_x, support_y) before predict(query_x)")
        params, head, buffers = self._fast
        self.train()
        return self.net.logits(params, buffers, head, self._prep(query_x))


def _differentiable(head: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """A constant (zero) head becomes a leaf that requires grad, so the inner loop can adapt it."""
    return tuple(t if t.requires_grad else t.detach().requires_grad_() for t in head)  # type: ignore[return-value]
