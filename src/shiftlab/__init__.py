"""shiftlab: deep learning when data shifts or labels are scarce.

Public API (imported lazily, so ``import shiftlab`` is cheap)::

    from shiftlab import load_dataset, create_backbone, create_method, load_recipe
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": "shiftlab.data.sources",
    "create_backbone": "shiftlab.backbones",
    "create_method": "shiftlab.methods",
    "load_recipe": "shiftlab.config",
    "Recipe": "shiftlab.config",
    "Experiment": "shiftlab.experiment.run",
    "RunOptions": "shiftlab.experiment.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shiftlab' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
