"""Contract tests over every registered ODE system, and user-defined systems."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shiftlab.errors import RecipeError
from shiftlab.pinn import SYSTEMS, Box, OdeSystem, make_system, reference_solution, resolve_system


@pytest.mark.parametrize("name", SYSTEMS.names())
def test_every_system_is_batched_and_finite(name: str) -> None:
    system = resolve_system(name)
    assert isinstance(system, OdeSystem) and system.name == name
    box = Box.create(system, (0.0, 2.0))  # defaults fill every value
    b = 7
    z = torch.rand(b, system.n_state, dtype=torch.float64)
    theta = torch.rand(b, system.n_params, dtype=torch.float64) + 0.1
    t = torch.rand(b, 1, dtype=torch.float64)
    dz = system.f(t, z, theta)
    assert dz.shape == (b, system.n_state) and torch.isfinite(dz).all()
    # rows are independent problems: evaluating one row alone gives the same derivative
    assert torch.allclose(system.f(t[2:3], z[2:3], theta[2:3]), dz[2:3])
    z0, th = box.defaults()
    ref = reference_solution(system, np.linspace(0, 2, 5), z0.numpy(), th.numpy())
    assert ref.shape == (5, system.n_state) and np.isfinite(ref).all()


def test_sir_conserves_population() -> None:
    sir = resolve_system("sir")
    z = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    dz = sir.f(torch.zeros(1, 1), z, torch.tensor([[0.8, 0.2]], dtype=torch.float64))
    assert abs(float(dz.sum())) < 1e-15
    assert torch.allclose(dz, torch.tensor([[-0.112, 0.072, 0.04]], dtype=torch.float64))


def test_make_system_from_a_function() -> None:
    def logistic(t: torch.Tensor, z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return theta[:, :1] * z * (1 - z)

    sys_ = make_system(logistic, state=["x"], params=["r"])
    assert sys_.state == ("x",) and sys_.params == ("r",) and sys_.name == "logistic"
    out = sys_.f(torch.zeros(3, 1), torch.full((3, 1), 0.5), torch.ones(3, 1))
    assert torch.allclose(out, torch.full((3, 1), 0.25))


def test_module_function_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_odes.py").write_text(
        textwrap.dedent(
            """
            import torch
            from shiftlab.pinn import make_system

            def growth(t, z, theta):
                return theta[:, :1] * z

            def factory():
                return make_system(growth, state=["x"], params=["k"], name="growth")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_odes", raising=False)
    a = resolve_system("my_odes:growth", state=["x"], params=["k"])
    b = resolve_system("my_odes:factory")
    assert a.state == b.state == ("x",)
    with pytest.raises(RecipeError, match="state"):
        resolve_system("my_odes:growth")  # a bare f needs its state names
    with pytest.raises(RecipeError, match="cannot import"):
        resolve_system("no_such_module_xyz:f", state=["x"])
    with pytest.raises(RecipeError, match="Unknown system 'sri'"):
        resolve_system("sri")


def test_names_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        make_system(lambda t, z, th: z, state=["a"], params=["a"])
