"""``differential``: the differential approach of the seed document, as we read it.

The document's slide shows the target training set, the network pre-trained on the source,
a "training B" step and the validation set, and reports that the selected subset does well on
the training set but worse than random on validation. Our reading:

1. draw a random **probe** subset ``B`` of the pool (``probe_fraction`` of it);
2. fine-tune a copy of the current model briefly on ``B`` (``ctx.brief_finetune``: the run's
   fine-tuning settings for ``probe_epochs`` epochs);
3. score every pool sample by how much its loss changes between the current model and the
   probe model, ``loss_before - loss_after``;
4. take the samples whose loss **drops most** (``direction: most``: what the target domain
   teaches quickly) or least (``least``: what brief fine-tuning does not fix).

Samples inside ``B`` are scored like the others (their drop is the largest, since the probe
trained on them); ``exclude_probe: true`` ranks them last instead. The probe's cost (its
fine-tuning and two scoring passes) is part of the selection time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from shiftlab.errors import ShiftlabError
from shiftlab.methods.transfer.selection.base import (
    SELECTIONS,
    SelectionContext,
    SelectionStrategy,
    rank_top,
    rank_top_balanced,
)


@dataclass(frozen=True)
class DifferentialHparams:
    """Attributes:
    probe_fraction: size of the random probe subset ``B`` as a fraction of the pool.
    probe_epochs: epochs of the brief fine-tuning on ``B``.
    direction: ``most`` (largest loss drop first) or ``least``.
    exclude_probe: rank the probe's own samples last.
    """

    probe_fraction: float = 0.1
    probe_epochs: int = 1
    direction: Literal["most", "least"] = "most"
    exclude_probe: bool = False


@SELECTIONS.register(
    "differential",
    summary="largest loss change after a brief probe fine-tune on a random subset (differential approach)",
    paper="Paticchio & Scarlatti, M.Sc. thesis, Politecnico di Milano, 2020 (differential approach)",
)
class DifferentialSelection(SelectionStrategy):
    """Rank by ``loss(current) - loss(probe)``, the probe fine-tuned briefly on a random subset."""

    Hparams = DifferentialHparams

    def select(self, ctx: SelectionContext, k: int, generator: torch.Generator) -> Tensor:
        h = self.hparams
        if h.direction not in ("most", "least"):
            raise ValueError(f"differential.direction must be most or least, got {h.direction!r}")
        if not 0 < h.probe_fraction <= 1:
            raise ValueError(f"differential.probe_fraction must be in (0, 1], got {h.probe_fraction}")
        if ctx.brief_finetune is None:
            raise ShiftlabError("the differential strategy needs ctx.brief_finetune (the probe fine-tuning)")
        n = len(ctx.pool)
        probe = torch.randperm(n, generator=generator)[: max(1, round(h.probe_fraction * n))]
        before = ctx.losses()
        probe_model = ctx.brief_finetune(ctx.model, probe, int(torch.randint(2**31 - 1, (1,), generator=generator)))
        after = ctx.losses(probe_model)
        drop = before - after
        score = drop if h.direction == "most" else -drop
        if h.exclude_probe:
            score = score.clone()
            score[probe] = float("-inf")
        if ctx.class_balanced:
            return rank_top_balanced(score, ctx.pool.y, k, generator)
        return rank_top(score, k, generator)
