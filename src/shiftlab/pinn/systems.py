"""Ordinary differential equation systems ``dz/dt = f(t, z, theta)`` for the PINN solvers.

A system is an :class:`OdeSystem`: named state components, named parameters and a
right-hand side written in torch and vectorised over a batch of problems::

    f(t: [B, 1], z: [B, n_state], theta: [B, n_params]) -> dz/dt: [B, n_state]

Built-in systems live in the :data:`SYSTEMS` registry (``sir``, ``seir``,
``lotka_volterra``, ``damped_oscillator``, ``exponential_decay``). A user system is any
torch-traceable Python function with that signature plus the names of its state and
parameters (:func:`make_system`); recipes name it as ``"package.module:function"``
(:func:`resolve_system`).

The SIR model and its initial conditions/parameters are those of the source document
(Paticchio & Scarlatti, "Improving domain-specific transfer learning applications for
image recognition and differential equations", M.Sc. thesis, Politecnico di Milano,
advised by M. Brambilla and P. Protopapas): S, I, R are population fractions,
``S' = -beta S I``, ``I' = beta S I - gamma I``, ``R' = gamma I``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from shiftlab.errors import RecipeError
from shiftlab.registry import Registry

__all__ = [
    "SYSTEMS",
    "OdeSystem",
    "RhsFn",
    "get_system",
    "make_system",
    "resolve_system",
]

RhsFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``f(t [B, 1], z [B, n_state], theta [B, n_params]) -> dz/dt [B, n_state]``."""


@dataclass(frozen=True)
class OdeSystem:
    """An ODE system ``dz/dt = f(t, z, theta)`` with named state and parameters.

    Attributes:
        name: system name (a registry key or ``module:function``).
        state: names of the state components, in order (``("S", "I", "R")``).
        params: names of the parameters, in order (``("beta", "gamma")``).
        rhs: the right-hand side ``f(t [B, 1], z [B, n], theta [B, p]) -> [B, n]``; it must
            be written with torch operations (differentiable, batched over ``B``).
        defaults: default parameter values (used when a recipe gives none).
        default_ic: default initial state.
        exact: optional closed-form solution ``exact(t [B, 1], z0 [B, n], theta [B, p],
            t0) -> z(t) [B, n]`` (used by tests).
        description: one line for ``shiftlab list``.
    """

    name: str
    state: tuple[str, ...]
    params: tuple[str, ...]
    rhs: RhsFn
    defaults: Mapping[str, float] = field(default_factory=dict)
    default_ic: Mapping[str, float] = field(default_factory=dict)
    exact: Callable[[Tensor, Tensor, Tensor, float], Tensor] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.state:
            raise ValueError(f"system {self.name!r} needs at least one state component")
        names = list(self.state) + list(self.params)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"system {self.name!r}: state and parameter names must be distinct; repeated: {dup}"
            )

    @property
    def n_state(self) -> int:
        return len(self.state)

    @property
    def n_params(self) -> int:
        return len(self.params)

    def f(self, t: Tensor, z: Tensor, theta: Tensor) -> Tensor:
        """Evaluate ``dz/dt``.

        Args:
            t: times, ``[B, 1]``.
            z: states, ``[B, n_state]``.
            theta: parameters, ``[B, n_params]`` (``[B, 0]`` when the system has none).

        Returns:
            ``dz/dt``, ``[B, n_state]``.
        """
        out = self.rhs(t, z, theta)
        if out.shape != z.shape:
            raise ValueError(
                f"system {self.name!r}: f returned shape {tuple(out.shape)}, expected {tuple(z.shape)} "
                "(one derivative per state component and batch row)"
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "state": list(self.state), "params": list(self.params)}


def _cols(x: Tensor) -> list[Tensor]:
    return [x[:, i : i + 1] for i in range(x.shape[1])]


# ----------------------------------------------------------------------------- built-ins


def _sir_rhs(t: Tensor, z: Tensor, theta: Tensor) -> Tensor:
    s, i, _ = _cols(z)
    beta, gamma = _cols(theta)
    infection = beta * s * i
    recovery = gamma * i
    return torch.cat([-infection, infection - recovery, recovery], dim=1)


def _seir_rhs(t: Tensor, z: Tensor, theta: Tensor) -> Tensor:
    s, e, i, _ = _cols(z)
    beta, sigma, gamma = _cols(theta)
    infection = beta * s * i
    onset = sigma * e
    recovery = gamma * i
    return torch.cat([-infection, infection - onset, onset - recovery, recovery], dim=1)


def _lotka_volterra_rhs(t: Tensor, z: Tensor, theta: Tensor) -> Tensor:
    x, y = _cols(z)
    alpha, beta, delta, gamma = _cols(theta)
    return torch.cat([alpha * x - beta * x * y, delta * x * y - gamma * y], dim=1)


def _damped_oscillator_rhs(t: Tensor, z: Tensor, theta: Tensor) -> Tensor:
    x, v = _cols(z)
    omega, zeta = _cols(theta)
    return torch.cat([v, -2.0 * zeta * omega * v - omega * omega * x], dim=1)


def _exponential_decay_rhs(t: Tensor, z: Tensor, theta: Tensor) -> Tensor:
    return -theta[:, :1] * z


def _exponential_decay_exact(t: Tensor, z0: Tensor, theta: Tensor, t0: float) -> Tensor:
    return z0 * torch.exp(-theta[:, :1] * (t - t0))


def _damped_oscillator_exact(t: Tensor, z0: Tensor, theta: Tensor, t0: float) -> Tensor:
    """Closed form for the under-damped case ``0 <= zeta < 1``."""
    x0, v0 = _cols(z0)
    omega, zeta = _cols(theta)
    if bool((zeta >= 1).any()):
        raise ValueError("the closed form implemented here is for the under-damped case zeta < 1")
    wd = omega * torch.sqrt(1 - zeta * zeta)
    s = t - t0
    decay = torch.exp(-zeta * omega * s)
    a = x0
    b = (v0 + zeta * omega * x0) / wd
    x = decay * (a * torch.cos(wd * s) + b * torch.sin(wd * s))
    dx = -zeta * omega * x + decay * wd * (-a * torch.sin(wd * s) + b * torch.cos(wd * s))
    return torch.cat([x, dx], dim=1)


SYSTEMS: Registry[Callable[[], OdeSystem]] = Registry("system")


@SYSTEMS.register(
    "sir",
    summary="SIR epidemic model on population fractions: S' = -bSI, I' = bSI - gI, R' = gI",
    paper="Kermack & McKendrick 1927; the source document's PINN example",
)
def sir() -> OdeSystem:
    return OdeSystem(
        "sir", ("S", "I", "R"), ("beta", "gamma"), _sir_rhs,
        defaults={"beta": 0.8, "gamma": 0.2}, default_ic={"S": 0.8, "I": 0.2, "R": 0.0},
        description="SIR epidemic model (population fractions)",
    )


@SYSTEMS.register(
    "seir",
    summary="SEIR epidemic model: S' = -bSI, E' = bSI - sE, I' = sE - gI, R' = gI",
    paper="Anderson & May 1991",
)
def seir() -> OdeSystem:
    return OdeSystem(
        "seir", ("S", "E", "I", "R"), ("beta", "sigma", "gamma"), _seir_rhs,
        defaults={"beta": 0.8, "sigma": 0.5, "gamma": 0.2},
        default_ic={"S": 0.8, "E": 0.1, "I": 0.1, "R": 0.0},
        description="SEIR epidemic model (population fractions)",
    )


@SYSTEMS.register(
    "lotka_volterra",
    summary="predator-prey: x' = ax - bxy, y' = dxy - gy",
    paper="Lotka 1925; Volterra 1926",
)
def lotka_volterra() -> OdeSystem:
    return OdeSystem(
        "lotka_volterra", ("x", "y"), ("alpha", "beta", "delta", "gamma"), _lotka_volterra_rhs,
        defaults={"alpha": 1.0, "beta": 1.0, "delta": 1.0, "gamma": 1.0},
        default_ic={"x": 1.5, "y": 1.0},
        description="Lotka-Volterra predator-prey model",
    )


@SYSTEMS.register(
    "damped_oscillator",
    summary="damped harmonic oscillator: x' = v, v' = -2 zeta omega v - omega^2 x",
)
def damped_oscillator() -> OdeSystem:
    return OdeSystem(
        "damped_oscillator", ("x", "v"), ("omega", "zeta"), _damped_oscillator_rhs,
        defaults={"omega": 1.0, "zeta": 0.1}, default_ic={"x": 1.0, "v": 0.0},
        exact=_damped_oscillator_exact,
        description="damped harmonic oscillator (closed form for zeta < 1)",
    )


@SYSTEMS.register("exponential_decay", summary="x' = -k x (closed form x0 exp(-k t))")
def exponential_decay() -> OdeSystem:
    return OdeSystem(
        "exponential_decay", ("x",), ("k",), _exponential_decay_rhs,
        defaults={"k": 1.0}, default_ic={"x": 1.0}, exact=_exponential_decay_exact,
        description="exponential decay (closed form)",
    )


# ----------------------------------------------------------------------------- user systems


def make_system(
    rhs: RhsFn,
    state: Sequence[str],
    params: Sequence[str] = (),
    name: str | None = None,
    defaults: Mapping[str, float] | None = None,
    default_ic: Mapping[str, float] | None = None,
) -> OdeSystem:
    """Wrap a user function ``f(t [B, 1], z [B, n], theta [B, p]) -> [B, n]`` as a system.

    Example:
        >>> def logistic(t, z, theta):
        ...     return theta[:, :1] * z * (1 - z)
        >>> sys = make_system(logistic, state=["x"], params=["r"])
        >>> sys.f(torch.zeros(2, 1), torch.full((2, 1), 0.5), torch.ones(2, 1)).shape
        torch.Size([2, 1])
    """
    if not callable(rhs):
        raise TypeError(f"rhs must be callable, got {type(rhs).__name__}")
    return OdeSystem(
        name or getattr(rhs, "__name__", "user"),
        tuple(str(s) for s in state),
        tuple(str(p) for p in params),
        rhs,
        defaults=dict(defaults or {}),
        default_ic=dict(default_ic or {}),
        description="user-defined system",
    )


def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"system {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(
            f"system {spec!r}: cannot import module {module_name!r} ({exc}). Is it on PYTHONPATH?"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RecipeError(f"system {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def resolve_system(
    spec: str | OdeSystem,
    state: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
) -> OdeSystem:
    """A system from a registry name, an :class:`OdeSystem`, or ``"module:function"``.

    ``"module:function"`` names either an :class:`OdeSystem` object, a zero-argument
    factory returning one, or (when ``state`` is given) a right-hand side ``f(t, z,
    theta)`` whose state and parameter names are ``state`` and ``params``.

    Raises:
        RecipeError: unknown name, import failure, or an object of the wrong kind.
    """
    if isinstance(spec, OdeSystem):
        return spec
    if ":" not in spec:
        if spec not in SYSTEMS:
            try:
                SYSTEMS.entry(spec)
            except KeyError as exc:
                raise RecipeError(str(exc)) from None
        return SYSTEMS.get(spec)()
    obj = _import_object(spec)
    if isinstance(obj, OdeSystem):
        return obj
    if not callable(obj):
        raise RecipeError(f"system {spec!r} is a {type(obj).__name__}, not a function or OdeSystem")
    if state:
        return make_system(obj, state, params or (), name=spec)
    try:
        required = [
            p for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        required = []
    if required:
        raise RecipeError(
            f"system {spec!r} looks like a right-hand side f(t, z, theta): give its 'state' (and "
            "'params') names, e.g. system: {name: 'mymodule:f', state: [x, v], params: [k]}"
        )
    made = obj()
    if not isinstance(made, OdeSystem):
        raise RecipeError(
            f"system {spec!r}: without 'state' names it must be an OdeSystem or a factory returning "
            f"one (got {type(made).__name__}); give 'state' and 'params' to use a plain f(t, z, theta)"
        )
    return made


def get_system(name: str) -> OdeSystem:
    """A built-in system by registry name (see :data:`SYSTEMS`)."""
    return SYSTEMS.get(name)()
