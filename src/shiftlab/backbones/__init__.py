"""Backbones: ``create_backbone(name, ...)`` returns a :class:`Backbone`.

Every backbone factory takes keyword arguments ``in_chans``, ``num_classes`` and
``image_size`` (others are backbone-specific and validated against the factory's
signature, so a typo is an error listing the allowed arguments).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError
from shiftlab.registry import Registry

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")


def backbone_arguments(name: str) -> dict[str, Any]:
    """The factory's keyword arguments and their defaults (``inspect.Parameter.empty`` if none)."""
    sig = inspect.signature(BACKBONES.get(name))
    return {p.name: p.default for p in sig.parameters.values()}


def create_backbone(name: str, **options: Any) -> Backbone:
    """Build a registered backbone.

    Args:
        name: a name from ``shiftlab list backbones``.
        **options: the factory's keyword arguments (``in_chans``, ``num_classes``,
            ``image_size``, ...); unknown ones are an error naming the allowed ones.
    """
    allowed = backbone_arguments(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RecipeError(
            f"Backbone {name!r} has no argument(s) {', '.join(unknown)}. "
            f"Allowed: {', '.join(sorted(allowed))}."
        )
    return BACKBONES.get(name)(**options)


# Registration happens on import of the modules below.
from shiftlab.backbones import resnet_cifar, simple, tv_resnet  # noqa: E402,F401

__all__ = ["BACKBONES", "Backbone", "create_backbone", "backbone_arguments"]
