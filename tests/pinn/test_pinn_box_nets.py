"""The problem box, the parametrisation (IC exact), forward-mode derivatives."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jvp

from shiftlab.pinn import ACTIVATIONS, Box, NetConfig, SolutionNet, Solver, resolve_system


def _sir_bundle() -> Box:
    return Box.create(resolve_system("sir"), (0, 20), ic={"S": "remainder"}, params={"beta": 0.8, "gamma": 0.2},
                      bundle={"I": [0.1, 0.2], "R": [0.1, 0.2]})


def test_box_dims_expand_and_coords_round_trip() -> None:
    box = _sir_bundle()
    assert box.dims == ("I", "R") and box.k == 2 and box.lows == [0.1, 0.1]
    u = torch.tensor([[0.15, 0.12], [0.1, 0.2]], dtype=torch.float64)
    z0, theta = box.expand(u)
    assert torch.allclose(z0, torch.tensor([[0.73, 0.15, 0.12], [0.7, 0.1, 0.2]], dtype=torch.float64))
    assert torch.allclose(theta, torch.tensor([[0.8, 0.2]] * 2, dtype=torch.float64))
    assert torch.equal(box.coords(z0, theta), u)
    assert box.grid(10).shape == (100, 2)
    assert Box.from_dict(box.system, box.to_dict()) == box


def test_box_errors_name_the_problem() -> None:
    sir = resolve_system("sir")
    with pytest.raises(ValueError, match="'X' is neither a state"):
        Box.create(sir, (0, 1), bundle={"X": [0, 1]})
    with pytest.raises(ValueError, match="unknown name"):
        Box.create(sir, (0, 1), params={"delta": 1.0})
    with pytest.raises(ValueError, match="low <= high"):
        Box.create(sir, (0, 1), bundle={"I": [0.3, 0.2]})
    with pytest.raises(ValueError, match="at most one"):
        Box.create(sir, (0, 1), ic={"S": "remainder", "R": "remainder"})
    with pytest.raises(ValueError, match="t1 > t0"):
        Box.create(sir, (1, 1))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    i0=st.floats(0.0, 0.5),
    r0=st.floats(0.0, 0.5),
    act=st.sampled_from(sorted(ACTIVATIONS)),
)
def test_initial_condition_holds_exactly(seed: int, i0: float, r0: float, act: str) -> None:
    """z(t0) = z0 bit for bit, whatever the weights, inputs or activation (Lagaris 1998)."""
    box = _sir_bundle()
    torch.manual_seed(seed)
    net = SolutionNet(3, box.t_span, box.lows, box.highs, NetConfig(8, 2, act)).double()
    for p in net.parameters():
        p.data.normal_(0, 3)
    u = torch.tensor([[i0, r0]], dtype=torch.float64)
    z0, _ = box.expand(u)
    t0 = torch.zeros(1, 1, dtype=torch.float64)
    assert torch.equal(net(t0, u, z0), z0)
    z, _ = net.value_and_dt(t0, u, z0)
    assert torch.equal(z, z0)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_forward_mode_derivative_matches_torch_func_jvp(act: str) -> None:
    torch.manual_seed(0)
    net = SolutionNet(3, (0, 20), [0.1, 0.1], [0.2, 0.2], NetConfig(12, 3, act)).double()
    t = torch.rand(50, 1, dtype=torch.float64) * 20
    u = 0.1 + 0.1 * torch.rand(50, 2, dtype=torch.float64)
    z0 = torch.rand(50, 3, dtype=torch.float64)
    z, dz = net.value_and_dt(t, u, z0)
    z_ref, dz_ref = jvp(lambda tt: net(tt, u, z0), (t,), (torch.ones_like(t),))
    assert torch.allclose(z, z_ref, atol=1e-13)
    assert torch.allclose(dz, dz_ref, atol=1e-12)


def test_residual_vanishes_for_the_analytic_solution() -> None:
    """Exponential decay x' = -x, x(0) = 1.5: a network with N = -1.5 gives z = 1.5 e^{-t}
    exactly, so the forward-mode residual must vanish to rounding."""
    s = Solver("exponential_decay", (0, 5), ic={"x": 1.5}, params={"k": 1.0}, net=NetConfig(4, 1, "tanh"))
    with torch.no_grad():
        for p in s.net.parameters():
            p.zero_()
        s.net.mlp.layers[-1].bias.fill_(-1.5)
    t = torch.linspace(0, 5, 101, dtype=torch.float64).unsqueeze(1)
    u = torch.zeros(101, 0, dtype=torch.float64)
    assert s.residual(t, u).abs().max() < 1e-14
    exact = s.system.exact(t, torch.full((101, 1), 1.5, dtype=torch.float64), torch.ones(101, 1, dtype=torch.float64), 0.0)
    assert torch.allclose(s.predict(t.squeeze(1)), exact, atol=1e-14)
    # a wrong network has a clearly non-zero residual
    with torch.no_grad():
        s.net.mlp.layers[-1].bias.fill_(-1.0)
    assert s.residual(t, u).abs().max() > 0.1
