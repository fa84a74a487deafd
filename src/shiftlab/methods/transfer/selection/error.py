"""``error``: the error-driven approach of the seed document.

Take the samples the current model gets wrong first, then those it gets right with the
highest loss: score = ``[misclassified] + loss / (1 + max loss)`` so that every
misclassified sample ranks above every correct one, each group by its cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from shiftlab.methods.transfer.selection.base import SELECTIONS, ScoreSelection, SelectionContext


@dataclass(frozen=True)
class ErrorHparams:
    """Attributes:
    wrong_first: rank every misclassified sample above every correct one (else: loss only).
    """

    wrong_first: bool = True


@SELECTIONS.register(
    "error",
    summary="misclassified samples first, then the highest cross-entropy (error-driven)",
    paper="Paticchio & Scarlatti, M.Sc. thesis, Politecnico di Milano, 2020 (error-driven approach)",
)
class ErrorSelection(ScoreSelection):
    """Score = (misclassified) + normalised per-sample loss of the current model."""

    Hparams = ErrorHparams

    def scores(self, ctx: SelectionContext) -> Tensor:
        loss = ctx.losses()
        if not self.hparams.wrong_first:
            return loss
        wrong = (ctx.logits().argmax(1) != ctx.pool.y).to(loss.dtype)
        return wrong + loss / (1.0 + loss.max())
