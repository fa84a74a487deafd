"""``el2n``: the error L2-norm score of Paul, Ganguli & Dziugaite (NeurIPS 2021).

EL2N = ``|| softmax(f(x)) - onehot(y) ||_2``: large for hard or mislabelled examples. The paper
averages it over several networks early in training; here it is the current model's (the
pre-trained one at the first selection), which is what one has when fine-tuning. ``keep``
chooses the highest scores (the paper's pruning keeps hard examples) or the lowest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from shiftlab.methods.transfer.selection.base import SELECTIONS, ScoreSelection, SelectionContext


@dataclass(frozen=True)
class El2nHparams:
    """Attributes:
    keep: ``hardest`` (highest EL2N first, the paper's) or ``easiest``.
    """

    keep: Literal["hardest", "easiest"] = "hardest"


@SELECTIONS.register(
    "el2n",
    summary="highest error L2 norm ||p - onehot(y)|| first (data-diet pruning score)",
    paper="Paul, Ganguli & Dziugaite, 'Deep Learning on a Data Diet: Finding Important Examples Early "
    "in Training', NeurIPS 2021",
)
class El2nSelection(ScoreSelection):
    """Score = EL2N of the current model (negated when ``keep == "easiest"``)."""

    Hparams = El2nHparams

    def scores(self, ctx: SelectionContext) -> Tensor:
        if self.hparams.keep not in ("hardest", "easiest"):
            raise ValueError(f"el2n.keep must be hardest or easiest, got {self.hparams.keep!r}")
        p = ctx.probs()
        s = (p - F.one_hot(ctx.pool.y, p.shape[1]).to(p.dtype)).norm(dim=1)
        return s if self.hparams.keep == "hardest" else -s
