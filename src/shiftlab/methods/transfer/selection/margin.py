"""``margin``: margin sampling, the samples whose two most probable classes are closest."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from shiftlab.methods.transfer.selection.base import SELECTIONS, ScoreSelection, SelectionContext


@dataclass(frozen=True)
class MarginHparams:
    """``margin`` has no hyper-parameters."""


@SELECTIONS.register(
    "margin",
    summary="smallest gap between the top-2 class probabilities first (margin sampling)",
    paper="Scheffer, Decomain & Wrobel, 'Active hidden Markov models for information extraction', IDA 2001",
)
class MarginSelection(ScoreSelection):
    """Score = ``-(p_(1) - p_(2))``: the smallest top-2 probability margin first."""

    Hparams = MarginHparams

    def scores(self, ctx: SelectionContext) -> Tensor:
        top2 = ctx.probs().topk(2, dim=1).values
        return -(top2[:, 0] - top2[:, 1])
