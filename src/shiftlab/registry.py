"""One small registry class; one registry instance per kind (datasets, backbones, ...).

A registry maps a name to a factory (a function or a class) plus a one-line summary and,
optionally, a citation. It holds no global mutable state beyond the module-level
registry instances themselves, which are filled at import time only.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a name is not in a registry; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object.

    Attributes:
        name: the registry key.
        obj: the registered factory (function or class).
        summary: one line for ``shiftlab list``.
        paper: citation of the paper the entry comes from ("" when none).
        tags: free-form labels (e.g. the method family).
    """

    name: str
    obj: T
    summary: str
    paper: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "paper": self.paper, **self.tags}


class Registry(Generic[T]):
    """A named collection of factories.

    Example:
        >>> BACKBONES = Registry("backbone")
        >>> @BACKBONES.register("mlp", summary="a multi-layer perceptron")
        ... def mlp(in_features: int = 784) -> object: ...
        >>> BACKBONES.names()
        ['mlp']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, summary: str, paper: str = "", **tags: str
    ) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name is an error."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, obj, summary, paper, dict(tags))
            return obj

        return deco

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: "
                f"{', '.join(self.names())}. (`shiftlab list {self.kind}s` shows them.)"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
