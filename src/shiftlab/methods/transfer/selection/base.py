"""The data-selection contract: choose ``k`` of the ``N`` labelled target images to fine-tune on.

A strategy is a registered class with a frozen ``Hparams`` dataclass and one method::

    select(ctx: SelectionContext, k: int, generator: torch.Generator) -> Tensor  # [k] int64

returning ``k`` distinct indices into ``ctx.pool`` (in rank order: the strategy's first
choice first). Everything a strategy may look at comes through the context: the current
model's logits, features and per-sample losses on the pool (computed once per selection
round, batched, in eval mode, by an inference-optimised trace on CPU) and a ``brief_finetune`` collaborator
(the differential strategy's probe). Ties in a score are broken by a random order drawn
from ``generator``, so a strategy is deterministic per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.backbones.inference import InferenceBackend, inference_forward
from shiftlab.data.tensors import TensorData
from shiftlab.registry import Registry

__all__ = ["SELECTIONS", "ScoreSelection", "SelectionContext", "SelectionStrategy", "rank_top", "rank_top_balanced"]

#: ``brief_finetune(model, indices, seed) -> a fine-tuned copy of model`` (the probe).
BriefFinetune = Callable[[Backbone, Tensor, int], Backbone]


@dataclass
class SelectionContext:
    """What a strategy sees when it selects.

    Attributes:
        model: the current model (the pre-trained one at the first selection, the
            fine-tuned one when re-selecting).
        pool: the labelled target training pool, ``x: [N, C, H, W]``, ``y: [N]``.
        brief_finetune: fine-tunes a copy of a model briefly on some pool indices.
        device: where scoring runs.
        batch_size: images per scoring forward pass.
        backend: how scoring passes run (:func:`shiftlab.backbones.inference.inference_forward`:
            ``auto``, an inference-optimised trace on CPU, or ``eager``).
        backend_used: what the last scoring pass ran (``jit``/``eager``; ``none`` before one).
        class_balanced: score strategies take their top picks within each class, with
            per-class quotas proportional to the pool's class frequencies (largest
            remainders), instead of over the whole pool.
    """

    model: Backbone
    pool: TensorData
    brief_finetune: BriefFinetune | None = None
    device: torch.device | str = "cpu"
    batch_size: int = 128
    class_balanced: bool = False
    backend: InferenceBackend = "auto"
    backend_used: str = "none"
    _cache: dict[tuple[int, str], Tensor] = field(default_factory=dict, repr=False)

    def _forward(self, model: Backbone) -> tuple[Tensor, Tensor]:
        key = (id(model), "logits")
        if key not in self._cache:
            run = inference_forward(model, self.backend)
            feats, logits = [], []
            for i in range(0, len(self.pool), self.batch_size):
                xb = self.pool.float_x(slice(i, i + self.batch_size)).to(self.device)
                f, z = run(xb)
                feats.append(f.float().cpu())
                logits.append(z.float().cpu())
            self.backend_used = run.backend
            self._cache[key] = torch.cat(logits)
            self._cache[(id(model), "features")] = torch.cat(feats)
        return self._cache[key], self._cache[(id(model), "features")]

    def logits(self, model: Backbone | None = None) -> Tensor:
        """``[N, num_classes]`` logits of ``model`` (default: the current model) on the pool."""
        return self._forward(model or self.model)[0]

    def features(self, model: Backbone | None = None) -> Tensor:
        """``[N, D]`` features (``forward_features``) of ``model`` on the pool."""
        return self._forward(model or self.model)[1]

    def probs(self, model: Backbone | None = None) -> Tensor:
        """``[N, num_classes]`` softmax probabilities."""
        return self.logits(model).softmax(1)

    def losses(self, model: Backbone | None = None) -> Tensor:
        """``[N]`` per-sample cross-entropy against the pool's labels."""
        return F.cross_entropy(self.logits(model), self.pool.y, reduction="none")

    def entropy(self, model: Backbone | None = None) -> Tensor:
        """``[N]`` predictive entropy (nats)."""
        logp = self.logits(model).log_softmax(1)
        return -(logp.exp() * logp).sum(1)


def rank_top(scores: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices of the ``k`` highest ``scores`` (``[N]``), highest first, ties in random order.

    Returns:
        ``[k]`` int64 distinct indices.
    """
    n = int(scores.shape[0])
    _check_k(k, n)
    perm = torch.randperm(n, generator=generator)
    order = torch.argsort(scores[perm].double(), descending=True, stable=True)
    return perm[order[:k]].to(torch.int64)


def rank_top_balanced(scores: Tensor, y: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Like :func:`rank_top`, within each class of ``y`` (``[N]`` int64): class ``c`` gets
    ``k * n_c / N`` picks (largest remainders; ties by a random class order), each class's
    highest scores first; the result is ordered by score.

    Returns:
        ``[k]`` int64 distinct indices.
    """
    n = int(scores.shape[0])
    _check_k(k, n)
    classes, counts = torch.unique(y, return_counts=True)
    exact = counts.double() * k / n
    quota = exact.floor().long()
    rest = k - int(quota.sum())
    if rest:
        jitter = torch.rand(len(classes), generator=generator, dtype=torch.float64) * 1e-9
        quota[torch.argsort(exact - quota + jitter, descending=True)[:rest]] += 1
    picks = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        if q:
            members = torch.nonzero(y == c).flatten()
            picks.append(members[rank_top(scores[members], q, generator)])
    out = torch.cat(picks)
    return out[torch.argsort(scores[out].double(), descending=True, stable=True)].to(torch.int64)


def _check_k(k: int, n: int) -> None:
    if not 0 < k <= n:
        raise ValueError(f"cannot select {k} of {n} images: k must be in 1..{n}")


class SelectionStrategy:
    """Base of every strategy (see the module doc).

    Attributes:
        Hparams: the frozen hyper-parameter dataclass.
        model_free: True when the strategy ignores the model (``random``).
    """

    Hparams: ClassVar[type]
    model_free: ClassVar[bool] = False

    def __init__(self, hparams: Any) -> None:
        self.hparams = hparams

    def select(self, ctx: SelectionContext, k: int, generator: torch.Generator) -> Tensor:
        """``k`` distinct pool indices ``[k]`` int64, first choice first."""
        raise NotImplementedError


class ScoreSelection(SelectionStrategy):
    """A strategy that ranks the pool by a score and takes the ``k`` highest."""

    def scores(self, ctx: SelectionContext) -> Tensor:
        """``[N]`` float: higher is picked first."""
        raise NotImplementedError

    def select(self, ctx: SelectionContext, k: int, generator: torch.Generator) -> Tensor:
        if ctx.class_balanced:
            return rank_top_balanced(self.scores(ctx), ctx.pool.y, k, generator)
        return rank_top(self.scores(ctx), k, generator)


SELECTIONS: Registry[type[SelectionStrategy]] = Registry("selection")
