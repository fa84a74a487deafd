"""Data-selection strategies for fine-tuning: which fraction of the labelled target set to train on.

``create_selection(name, hparams)`` builds a registered strategy; ``shiftlab list
selections`` lists them with their papers. One strategy per file (``entropy_most`` and
``entropy_least`` share theirs: one score, two directions). The contract is in
:mod:`~shiftlab.methods.transfer.selection.base`.
"""

from __future__ import annotations

from typing import Any

from shiftlab.methods.transfer.selection.base import (
    SELECTIONS,
    ScoreSelection,
    SelectionContext,
    SelectionStrategy,
    rank_top,
)


def make_selection_hparams(name: str, values: dict[str, Any] | None = None) -> Any:
    """Validate ``values`` against strategy ``name``'s ``Hparams``.

    Raises:
        RecipeError: an unknown key (naming the allowed ones) or a wrong type.
    """
    from shiftlab.methods import build_dataclass

    return build_dataclass(SELECTIONS.get(name).Hparams, values, f"selection {name!r}", f"selection {name}: ")


def create_selection(name: str, hparams: Any = None) -> SelectionStrategy:
    """Build the registered strategy ``name`` with ``hparams`` (an ``Hparams`` or a dict)."""
    cls = SELECTIONS.get(name)
    if not isinstance(hparams, cls.Hparams):
        hparams = make_selection_hparams(name, hparams)
    return cls(hparams)


from shiftlab.methods.transfer.selection import (  # noqa: E402,F401  (registration)
    differential,
    el2n,
    entropy,
    error,
    kcenter,
    margin,
    random,
)

__all__ = [
    "SELECTIONS",
    "ScoreSelection",
    "SelectionContext",
    "SelectionStrategy",
    "create_selection",
    "make_selection_hparams",
    "rank_top",
]
