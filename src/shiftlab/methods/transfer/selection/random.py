"""``random``: a uniformly random subset (the baseline every strategy is compared with)."""

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
class RandomHparams:
    """``random`` has no hyper-parameters."""


@SELECTIONS.register(
    "random",
    summary="a uniformly random subset without replacement (the baseline)",
    paper="the baseline of every data-selection study, e.g. Paticchio & Scarlatti, M.Sc. thesis, 2020",
)
class RandomSelection(SelectionStrategy):
    """``k`` indices drawn uniformly without replacement from the pool."""

    Hparams = RandomHparams
    model_free = True

    def select(self, ctx: SelectionContext, k: int, generator: torch.Generator) -> Tensor:
        _check_k(k, len(ctx.pool))
        return torch.randperm(len(ctx.pool), generator=generator)[:k]
