"""``kcenter``: the greedy k-center coreset of Sener & Savarese (ICLR 2018) on model features.

Start from one random sample, then repeatedly add the sample farthest (Euclidean, in the
current model's ``forward_features`` space) from everything chosen so far: a 2-approximation
of the k-center problem that covers the pool's feature space. ``O(k N D)`` in torch, with the
``N`` running minimum distances updated in one vectorised step per pick.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shiftlab.methods.transfer.selection.base import (
    SELECTIONS,
    SelectionContext,
    SelectionStrategy,
    _check_k,
)


@dataclass(frozen=True)
class KCenterHparams:
    """Attributes:
    normalize: L2-normalise the features first (cosine geometry).
    """

    normalize: bool = False


@SELECTIONS.register(
    "kcenter",
    summary="greedy k-center coreset on the model's features (covers feature space)",
    paper="Sener & Savarese, 'Active Learning for Convolutional Neural Networks: A Core-Set Approach', ICLR 2018",
)
class KCenterSelection(SelectionStrategy):
    """Greedy farthest-point selection on ``ctx.features()``."""

    Hparams = KCenterHparams

    def select(self, ctx: SelectionContext, k: int, generator: torch.Generator) -> Tensor:
        feats = ctx.features().to(torch.float32)
        n = int(feats.shape[0])
        _check_k(k, n)
        if self.hparams.normalize:
            feats = torch.nn.functional.normalize(feats, dim=1)
        sq = (feats * feats).sum(1)
        first = int(torch.randint(n, (1,), generator=generator))
        chosen = torch.empty(k, dtype=torch.int64)
        mind = torch.full((n,), float("inf"))
        cur = first
        for i in range(k):
            chosen[i] = cur
            d = sq - 2.0 * (feats @ feats[cur]) + sq[cur]
            torch.minimum(mind, d.clamp_min_(0.0), out=mind)
            mind[cur] = -1.0  # never picked again (chosen points have distance 0 anyway)
            if i + 1 < k:
                cur = int(torch.argmax(mind))
                if mind[cur] <= 0:  # duplicates exhausted the distinct points: fill at random
                    rest = torch.nonzero(mind >= 0).flatten()
                    rest = rest[torch.randperm(len(rest), generator=generator)]
                    chosen[i + 1 :] = rest[: k - i - 1]
                    break
        return chosen
