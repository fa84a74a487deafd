"""Methods: ``create_method(name, backbone=..., num_classes=...)``.

One method = one file = one registered class with a frozen ``Hparams`` dataclass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pydantic

from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError
from shiftlab.methods.base import FewShotClassifier, Method, TestTimeMethod, TrainableMethod
from shiftlab.optim import OptimizerFactory
from shiftlab.registry import Registry, UnknownNameError

METHODS: Registry[type[Method]] = Registry("method")


def hparam_fields(name: str) -> dict[str, Any]:
    """The method's hyper-parameters and defaults."""
    cls = METHODS.get(name)
    return {f.name: f.default for f in dataclasses.fields(cls.Hparams)}


def make_hparams(name: str, values: dict[str, Any] | None = None) -> Any:
    """Validate ``values`` against method ``name``'s ``Hparams`` dataclass (types included).

    Raises:
        RecipeError: naming the unknown method (and the known ones), or the unknown key or
            wrong type and the allowed keys.
    """
    try:
        cls = METHODS.get(name)
    except UnknownNameError as exc:
        raise RecipeError(f"method: {exc}") from None
    return build_dataclass(cls.Hparams, values, f"method.hparams: {name!r}", "method.hparams.")


def build_dataclass(cls: type, values: dict[str, Any] | None, owner: str, key_prefix: str) -> Any:
    """``cls(**values)`` for a frozen hyper-parameter dataclass, each value validated (and
    coerced) against its type hint.

    Args:
        cls: the dataclass.
        values: field values (missing ones keep their defaults).
        owner: how an unknown-key message names the owner (``"method.hparams: 'tent'"``).
        key_prefix: prefix of a key in a wrong-type message (``"method.hparams."``).

    Raises:
        RecipeError: naming the unknown key or wrong type and the allowed keys.
    """
    values = dict(values or {})
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        listing = ", ".join(f"{k} (default {f.default!r})" for k, f in allowed.items()) or "none"
        raise RecipeError(f"{owner} has no hyper-parameter(s) {', '.join(unknown)}. Allowed: {listing}.")
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, val in values.items():
        try:
            out[key] = pydantic.TypeAdapter(hints[key]).validate_python(val, strict=False)
        except pydantic.ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise RecipeError(
                f"{key_prefix}{key}: {val!r} is not a valid {_type_name(hints[key])} ({msg})."
            ) from None
    return cls(**out)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    if isinstance(tp, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def create_method(
    name: str,
    *,
    backbone: Backbone,
    num_classes: int,
    hparams: Any = None,
    optimizer: OptimizerFactory | None = None,
) -> Method:
    """Build a registered method.

    Args:
        name: a name from ``shiftlab list methods``.
        backbone: the network (see :func:`shiftlab.create_backbone`).
        num_classes: number of classes.
        hparams: the method's ``Hparams`` instance or a dict validated into one.
        optimizer: optimizer factory (default Adam, lr 1e-3) for trainable methods; for
            test-time methods, of the adapted parameters (default: the paper's, see the
            method's ``Hparams``).
    """
    cls = METHODS.get(name)
    if not isinstance(hparams, cls.Hparams):
        hparams = make_hparams(name, hparams)
    if issubclass(cls, TrainableMethod):
        return cls(backbone, num_classes, hparams, optimizer or OptimizerFactory())
    if issubclass(cls, TestTimeMethod):  # None: the method's own (paper's) optimizer
        return cls(backbone, num_classes, hparams, optimizer)
    return cls(backbone, num_classes, hparams)


# Registration happens on import of the method modules.
from shiftlab.methods import erm, fewshot, ssl, transfer, tta, uda  # noqa: E402,F401

__all__ = [
    "METHODS",
    "Method",
    "TrainableMethod",
    "TestTimeMethod",
    "FewShotClassifier",
    "create_method",
    "make_hparams",
    "hparam_fields",
]
