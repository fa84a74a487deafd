"""Networks whose outputs satisfy the initial condition exactly, with cheap time derivatives.

The trial solution is the Lagaris parametrisation (Lagaris, Likas & Fotiadis 1998,
"Artificial neural networks for solving ordinary and partial differential equations",
IEEE TNN 9(5)) used by the source document and by solution bundles (Flamant,
Protopapas & Sondak 2020)::

    z(t; u) = z0(u) + (1 - exp(-(t - t0))) * N(t, u)          z: [B, n_state]

where ``u`` are the bundle coordinates (initial values and/or parameters that vary,
``[B, k]``; none for a single problem) and ``N`` is an MLP. At ``t = t0`` the factor is 0,
so ``z(t0) = z0`` holds exactly whatever the weights.

Time derivatives are computed in **forward mode**: :meth:`MLP.forward_tangent` pushes the
tangent ``dx/dt`` through the layers next to the values (``dh = W dx`` for a linear
layer, ``da = sigma'(h) dh`` for an activation), which is what ``torch.func.jvp`` does,
without its dispatch overhead. One pass gives ``dN/dt`` for every output, instead of one
reverse pass per output component (as ``torch.autograd.grad`` on each output would need).
The same pass can record per-layer intermediates so that the Levenberg-Marquardt
refinement in :mod:`shiftlab.pinn.solver` can build per-sample Jacobians.

Inputs are scaled to about ``[-1, 1]`` with a fixed affine map taken from the box the
network was first built for (``t`` from ``[t0, t1]``, each bundle coordinate from its
range). The map is part of the network: fine-tuning on a shifted box keeps it, so the
network starts as exactly the function that was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "LayerTrace",
    "NetConfig",
    "SolutionNet",
]


def _tanh(h: Tensor) -> tuple[Tensor, Tensor]:
    a = torch.tanh(h)
    return a, 1 - a * a


def _sigmoid(h: Tensor) -> tuple[Tensor, Tensor]:
    a = torch.sigmoid(h)
    return a, a * (1 - a)


def _sin(h: Tensor) -> tuple[Tensor, Tensor]:
    return torch.sin(h), torch.cos(h)


def _silu(h: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(h)
    return h * s, s * (1 + h * (1 - s))


def _softplus(h: Tensor) -> tuple[Tensor, Tensor]:
    return nn.functional.softplus(h), torch.sigmoid(h)


ACTIVATIONS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "sin": _sin,
    "silu": _silu,
    "softplus": _softplus,
}
"""Activation name -> ``h -> (sigma(h), sigma'(h))``."""


@dataclass(frozen=True)
class NetConfig:
    """The MLP ``N``.

    The defaults are the source document's SIR network (the thesis code's
    ``SIRNetwork(layers=2, hidden=50)``: two hidden layers of 50 sigmoid units). The
    shipped recipes use smaller tanh networks (``tanh(x) = 2 sigmoid(2x) - 1``, the same
    function class): Levenberg-Marquardt's cost grows with the square of the number of
    weights, and 2 x 16 to 2 x 32 networks already reach errors of 1e-5 on these problems.

    Attributes:
        width: units per hidden layer.
        depth: number of hidden layers.
        activation: one of :data:`ACTIVATIONS`.
    """

    width: int = 50
    depth: int = 2
    activation: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"net width and depth must be >= 1, got {self.width}, {self.depth}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerTrace(NamedTuple):
    """What a linear layer saw in :meth:`MLP.forward_tangent` (for per-sample Jacobians).

    Attributes:
        x: layer input, ``[B, in]``.
        dx: its time derivative, ``[B, in]``.
        h: pre-activation output ``W x + b``, ``[B, out]``.
        dh: its time derivative ``W dx``, ``[B, out]``.
    """

    x: Tensor
    dx: Tensor
    h: Tensor
    dh: Tensor


class MLP(nn.Module):
    """``in_dim -> width x depth -> out_dim`` with a configurable activation.

    Args:
        in_dim: input features.
        out_dim: outputs.
        config: width, depth and activation.
    """

    def __init__(self, in_dim: int, out_dim: int, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        sizes = [in_dim] + [config.width] * config.depth + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self._act = ACTIVATIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, in_dim] -> [B, out_dim]``."""
        for layer in self.layers[:-1]:
            x = self._act(layer(x))[0]
        return self.layers[-1](x)

    def forward_tangent(
        self, x: Tensor, dx: Tensor, trace: list[LayerTrace] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Values and directional derivatives in one forward-mode pass.

        Args:
            x: inputs, ``[B, in_dim]``.
            dx: input tangent, ``[B, in_dim]`` or ``[in_dim]`` (broadcast; e.g. ``dx/dt``).
            trace: if a list is given, one :class:`LayerTrace` per linear layer is appended.

        Returns:
            ``(y, dy)``, both ``[B, out_dim]``, with ``dy = (d y / d x) dx``.
        """
        dx = dx.expand_as(x)
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            h = layer(x)
            dh = dx @ layer.weight.T
            if trace is not None:
                trace.append(LayerTrace(x, dx, h, dh))
            if i == n - 1:
                return h, dh
            x, d_act = self._act(h)
            dx = d_act * dh
        raise AssertionError("unreachable")  # pragma: no cover


class SolutionNet(nn.Module):
    """The trial solution ``z(t; u) = z0 + (1 - e^{-(t - t0)}) N(t, u)``.

    Args:
        n_state: state components (outputs of ``N``).
        t_span: ``(t0, t1)``; ``t0`` is where the initial condition holds; the span also
            fixes the input scaling of ``t``.
        coord_lows: lower ends of the bundle ranges (input scaling), ``k`` values.
        coord_highs: upper ends, ``k`` values.
        config: the MLP.
    """

    def __init__(
        self,
        n_state: int,
        t_span: Sequence[float],
        coord_lows: Sequence[float],
        coord_highs: Sequence[float],
        config: NetConfig,
    ) -> None:
        super().__init__()
        t0, t1 = float(t_span[0]), float(t_span[1])
        lo = torch.tensor([t0, *coord_lows], dtype=torch.float64)
        hi = torch.tensor([t1, *coord_highs], dtype=torch.float64)
        self.k = len(coord_lows)
        self.n_state = n_state
        self.t0 = t0
        self.register_buffer("in_center", (lo + hi) / 2)
        self.register_buffer("in_scale", 2 / (hi - lo).clamp_min(1e-12))
        self.mlp = MLP(1 + self.k, n_state, config)

    @property
    def config(self) -> NetConfig:
        return self.mlp.config

    def inputs(self, t: Tensor, u: Tensor) -> Tensor:
        """Scaled network inputs ``[B, 1 + k]`` from ``t: [B, 1]`` and ``u: [B, k]``."""
        return (torch.cat([t, u], 1) - self.in_center) * self.in_scale

    def n(self, t: Tensor, u: Tensor) -> Tensor:
        """The raw network ``N(t, u)``, ``[B, n_state]``."""
        return self.mlp(self.inputs(t, u))

    def forward(self, t: Tensor, u: Tensor, z0: Tensor) -> Tensor:
        """``z(t; u)``.

        Args:
            t: times, ``[B, 1]``.
            u: bundle coordinates, ``[B, k]``.
            z0: initial states, ``[B, n_state]``.

        Returns:
            ``[B, n_state]``.
        """
        g = -torch.expm1(-(t - self.t0))
        return z0 + g * self.n(t, u)

    def value_and_dt(
        self, t: Tensor, u: Tensor, z0: Tensor, trace: list[LayerTrace] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``z`` and ``dz/dt`` (forward mode), both ``[B, n_state]``.

        ``dz/dt = e^{-(t - t0)} N + (1 - e^{-(t - t0)}) dN/dt``.
        """
        x = self.inputs(t, u)
        dx = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        dx[0] = self.in_scale[0]
        n, dn = self.mlp.forward_tangent(x, dx, trace)
        e = torch.exp(-(t - self.t0))
        g = 1 - e
        return z0 + g * n, e * n + g * dn

    def spec(self) -> dict[str, Any]:
        """JSON-safe description (rebuild with :meth:`from_spec`)."""
        lo = self.in_center - 1 / self.in_scale
        hi = self.in_center + 1 / self.in_scale
        return {
            "n_state": self.n_state,
            "t_span": [float(lo[0]), float(hi[0])],
            "t0": self.t0,
            "coord_lows": [float(x) for x in lo[1:]],
            "coord_highs": [float(x) for x in hi[1:]],
            "net": self.config.to_dict(),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SolutionNet:
        net = cls(
            spec["n_state"], spec["t_span"], spec["coord_lows"], spec["coord_highs"], NetConfig(**spec["net"])
        )
        net.t0 = float(spec.get("t0", spec["t_span"][0]))
        return net
