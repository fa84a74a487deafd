"""``entropy_most`` / ``entropy_least``: the entropy-driven approach of the seed document.

Rank the pool by the current model's predictive entropy ``H(p) = -sum_c p_c log p_c`` and take
the most uncertain (``entropy_most``: uncertainty sampling, Lewis & Gale 1994) or the most
confident (``entropy_least``) samples. Paticchio & Scarlatti compared both with a random
subset of the same size on CIFAR-10 (25%) and USPS (50%, also re-selected every 5 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from shiftlab.methods.transfer.selection.base import SELECTIONS, ScoreSelection, SelectionContext

_PAPER = (
    "Paticchio & Scarlatti, M.Sc. thesis, Politecnico di Milano, 2020 (entropy-driven approach); "
    "Lewis & Gale, 'A sequential algorithm for training text classifiers', SIGIR 1994"
)


@dataclass(frozen=True)
class EntropyHparams:
    """The entropy strategies have no hyper-parameters."""


@SELECTIONS.register("entropy_most", summary="the samples of highest predictive entropy (most uncertain)",
                     paper=_PAPER)
class EntropyMost(ScoreSelection):
    """Score = predictive entropy of the current model; the highest first."""

    Hparams = EntropyHparams

    def scores(self, ctx: SelectionContext) -> Tensor:
        return ctx.entropy()


@SELECTIONS.register("entropy_least", summary="the samples of lowest predictive entropy (most confident)",
                     paper=_PAPER)
class EntropyLeast(ScoreSelection):
    """Score = minus the predictive entropy of the current model; the most confident first."""

    Hparams = EntropyHparams

    def scores(self, ctx: SelectionContext) -> Tensor:
        return -ctx.entropy()
