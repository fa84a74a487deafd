"""Source only: ``erm`` on the labelled source, evaluated on the target (the UDA baseline)."""

from __future__ import annotations

from shiftlab.methods import METHODS
from shiftlab.methods.erm import ERM


@METHODS.register(
    "source_only",
    summary="Source only: supervised training on the source labels, no adaptation (the UDA baseline)",
    paper="Ganin et al., 'Domain-Adversarial Training of Neural Networks', JMLR 2016 (the 'source only' rows)",
    family="uda",
)
class SourceOnly(ERM):
    """:class:`~shiftlab.methods.erm.ERM` under its domain-adaptation name: trains on the
    labelled source batches only and never sees the target."""

    family = "uda"
