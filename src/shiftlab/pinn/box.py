"""The set of problems a solver answers: time span, initial conditions and parameters.

A :class:`Box` fixes the time span ``[t0, t1]`` and, for every state component and
parameter of a system, either a value, a range ``(low, high)`` (a *bundle* dimension,
Flamant, Protopapas & Sondak 2020, "Solving differential equations using neural network
solution bundles") or, for one state component, ``"remainder"`` (one minus the sum of
the other components, e.g. ``S0 = 1 - I0 - R0`` as in the source document's bundles).

The bundle dimensions, in order (state components first, then parameters), are the
extra inputs ``u`` of the network; :meth:`Box.expand` turns ``u: [B, k]`` into full
initial states ``z0: [B, n_state]`` and parameters ``theta: [B, n_params]``. A box with no
range is a single problem (``k = 0``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from shiftlab.pinn.systems import OdeSystem

__all__ = ["REMAINDER", "Box", "Spec"]

REMAINDER = "remainder"
Spec = float | tuple[float, float] | str
"""A value, a ``(low, high)`` range, or ``"remainder"`` (state components only)."""


def _spec(value: Any, what: str, allow_remainder: bool) -> Spec:
    if isinstance(value, str):
        if value == REMAINDER and allow_remainder:
            return REMAINDER
        allowed = "a number, [low, high]" + (" or 'remainder'" if allow_remainder else "")
        raise ValueError(f"{what}: expected {allowed}, got {value!r}")
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{what}: a range is [low, high], got {list(value)}")
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"{what}: range [low, high] needs finite low <= high, got {list(value)}")
        return lo if lo == hi else (lo, hi)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number or [low, high], got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what}: must be finite, got {v}")
    return v


@dataclass(frozen=True)
class Box:
    """A time span and a value or range for every initial state component and parameter.

    Build it with :meth:`create`. Attributes:
        system: the ODE system.
        t_span: ``(t0, t1)``.
        ic: state name -> value, ``(low, high)`` or ``"remainder"``.
        params: parameter name -> value or ``(low, high)``.
    """

    system: OdeSystem
    t_span: tuple[float, float]
    ic: Mapping[str, Spec]
    params: Mapping[str, Spec]

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        system: OdeSystem,
        t_span: Sequence[float] = (0.0, 1.0),
        ic: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        bundle: Mapping[str, Any] | None = None,
    ) -> Box:
        """Validate and complete a box.

        Args:
            system: the ODE system.
            t_span: ``(t0, t1)`` with ``t1 > t0``.
            ic: initial values by state name (a number, ``[low, high]`` or ``"remainder"``);
                missing components take the system's ``default_ic``.
            params: parameter values by name (a number or ``[low, high]``); missing ones
                take the system's ``defaults``.
            bundle: ranges by state or parameter name; they override ``ic``/``params``.

        Raises:
            ValueError: unknown names, missing values, bad ranges, more than one remainder.
        """
        t0, t1 = (float(x) for x in t_span)
        if not t1 > t0:
            raise ValueError(f"t_span: need t1 > t0, got {[t0, t1]}")
        ic = dict(ic or {})
        params = dict(params or {})
        for name, rng in (bundle or {}).items():
            if name in system.state:
                ic[name] = rng
            elif name in system.params:
                params[name] = rng
            else:
                raise ValueError(
                    f"bundle: {name!r} is neither a state component {list(system.state)} "
                    f"nor a parameter {list(system.params)} of system {system.name!r}"
                )
        for what, given, names in (("ic", ic, system.state), ("params", params, system.params)):
            unknown = [k for k in given if k not in names]
            if unknown:
                raise ValueError(f"{what}: unknown name(s) {unknown}; system {system.name!r} has {list(names)}")
        ic_out: dict[str, Spec] = {}
        for s in system.state:
            v = ic.get(s, system.default_ic.get(s))
            if v is None:
                raise ValueError(f"ic: no initial value for state {s!r} (and the system has no default)")
            ic_out[s] = _spec(v, f"ic.{s}", allow_remainder=True)
        if sum(v == REMAINDER for v in ic_out.values()) > 1:
            raise ValueError("ic: at most one state component can be 'remainder'")
        p_out: dict[str, Spec] = {}
        for p in system.params:
            v = params.get(p, system.defaults.get(p))
            if v is None:
                raise ValueError(f"params: no value for parameter {p!r} (and the system has no default)")
            p_out[p] = _spec(v, f"params.{p}", allow_remainder=False)
        return cls(system, (t0, t1), ic_out, p_out)

    def replace(
        self,
        t_span: Sequence[float] | None = None,
        ic: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        bundle: Mapping[str, Any] | None = None,
    ) -> Box:
        """A copy with some values/ranges replaced (e.g. a transfer target)."""
        return Box.create(
            self.system,
            t_span if t_span is not None else self.t_span,
            {**self.ic, **(ic or {})},
            {**self.params, **(params or {})},
            bundle,
        )

    # ------------------------------------------------------------------ bundle dims
    @property
    def dims(self) -> tuple[str, ...]:
        """Names of the bundle dimensions (state components first, then parameters)."""
        return tuple(k for k, v in self.ic.items() if isinstance(v, tuple)) + tuple(
            k for k, v in self.params.items() if isinstance(v, tuple)
        )

    @property
    def k(self) -> int:
        return len(self.dims)

    @property
    def is_bundle(self) -> bool:
        return self.k > 0

    def _spec_of(self, name: str) -> Spec:
        return self.ic[name] if name in self.ic else self.params[name]

    @property
    def lows(self) -> list[float]:
        return [self._spec_of(d)[0] for d in self.dims]  # type: ignore[index]

    @property
    def highs(self) -> list[float]:
        return [self._spec_of(d)[1] for d in self.dims]  # type: ignore[index]

    def structure(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What must match for a solver to move between boxes: bundle dims and remainders."""
        return self.dims, tuple(k for k, v in self.ic.items() if v == REMAINDER)

    def center(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The box centre in bundle coordinates, ``[k]``."""
        return torch.tensor([(lo + hi) / 2 for lo, hi in zip(self.lows, self.highs, strict=True)], dtype=dtype)

    def grid(self, n: int | Sequence[int], dtype: torch.dtype = torch.float64) -> Tensor:
        """A tensor grid over the box (edges included), ``[prod(n), k]`` (``[1, 0]`` if no dims)."""
        if self.k == 0:
            return torch.zeros(1, 0, dtype=dtype)
        ns = [n] * self.k if isinstance(n, int) else list(n)
        axes = [torch.linspace(lo, hi, m, dtype=dtype) for lo, hi, m in zip(self.lows, self.highs, ns, strict=True)]
        return torch.tensor(list(itertools.product(*[a.tolist() for a in axes])), dtype=dtype)

    # ------------------------------------------------------------------ coordinates
    def expand(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Bundle coordinates to full initial states and parameters.

        Args:
            u: bundle coordinates, ``[B, k]`` (``k = 0`` for a single problem).

        Returns:
            ``z0: [B, n_state]`` and ``theta: [B, n_params]``.
        """
        b = u.shape[0]
        col = {d: u[:, i] for i, d in enumerate(self.dims)}

        def value(name: str, spec: Spec) -> Tensor:
            if isinstance(spec, tuple):
                return col[name]
            return torch.full((b,), float(spec), dtype=u.dtype, device=u.device)  # type: ignore[arg-type]

        z_cols: dict[str, Tensor] = {}
        rest = None
        for s, spec in self.ic.items():
            if spec == REMAINDER:
                rest = s
                continue
            z_cols[s] = value(s, spec)
        if rest is not None:
            others = [z_cols[s] for s in self.ic if s != rest]
            z_cols[rest] = 1.0 - (torch.stack(others, 1).sum(1) if others else torch.zeros(b, dtype=u.dtype))
        z0 = torch.stack([z_cols[s] for s in self.system.state], 1)
        if self.system.n_params:
            theta = torch.stack([value(p, spec) for p, spec in self.params.items()], 1)
        else:
            theta = u.new_zeros(b, 0)
        return z0, theta

    def coords(self, z0: Tensor, theta: Tensor) -> Tensor:
        """Full initial states and parameters to bundle coordinates.

        Args:
            z0: ``[B, n_state]``.
            theta: ``[B, n_params]``.

        Returns:
            ``u: [B, k]``.
        """
        cols = []
        for d in self.dims:
            if d in self.ic:
                cols.append(z0[:, self.system.state.index(d)])
            else:
                cols.append(theta[:, self.system.params.index(d)])
        if not cols:
            return z0.new_zeros(z0.shape[0], 0)
        return torch.stack(cols, 1)

    def defaults(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """The box centre's initial state ``[n_state]`` and parameters ``[n_params]``."""
        z0, theta = self.expand(self.center(dtype).unsqueeze(0))
        return z0[0], theta[0]

    def contains(self, u: Tensor, tol: float = 1e-12) -> Tensor:
        """Which rows of ``u: [B, k]`` lie in the box, ``[B]`` bool."""
        if self.k == 0:
            return torch.ones(u.shape[0], dtype=torch.bool)
        lo = torch.tensor(self.lows, dtype=u.dtype) - tol
        hi = torch.tensor(self.highs, dtype=u.dtype) + tol
        return ((u >= lo) & (u <= hi)).all(1)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        def plain(v: Spec) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {
            "t_span": list(self.t_span),
            "ic": {k: plain(v) for k, v in self.ic.items()},
            "params": {k: plain(v) for k, v in self.params.items()},
        }

    @classmethod
    def from_dict(cls, system: OdeSystem, d: Mapping[str, Any]) -> Box:
        return cls.create(system, d["t_span"], d.get("ic"), d.get("params"))

    def describe(self) -> str:
        def fmt(v: Spec) -> str:
            return f"[{v[0]:g}, {v[1]:g}]" if isinstance(v, tuple) else (v if isinstance(v, str) else f"{v:g}")

        parts = [f"{k}0={fmt(v)}" for k, v in self.ic.items()] + [f"{k}={fmt(v)}" for k, v in self.params.items()]
        return f"{self.system.name} t in [{self.t_span[0]:g}, {self.t_span[1]:g}], " + ", ".join(parts)
