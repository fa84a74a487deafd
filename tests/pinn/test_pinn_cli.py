"""``shiftlab pinn solve`` and ``shiftlab pinn eval`` on a saved IC-bundle solver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shiftlab.pinn import NetConfig, TrainConfig, get_system
from shiftlab.pinn.reference import reference_solution
from shiftlab.pinn.run import parse_assignments
from shiftlab.pinn.solver import BundleSolver


@pytest.fixture(scope="module")
def saved_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SIR bundle over I0, R0 in [0.1, 0.2] (S0 = 1 - I0 - R0), t in [0, 5], briefly trained."""
    torch.manual_seed(0)
    solver = BundleSolver("sir", (0.0, 5.0), ic={"S": "remainder"}, params={"beta": 0.8, "gamma": 0.2},
                          bundle={"I": (0.1, 0.2), "R": (0.1, 0.2)}, net=NetConfig(width=16, depth=2), seed=0)
    solver.fit(TrainConfig(points=400, epochs=150, sampler="lhs", refine="lm", refine_steps=25, log_every=50))
    return solver.save(tmp_path_factory.mktemp("pinn") / "solver")


def test_parse_assignments_values_ranges_and_errors() -> None:
    assert parse_assignments(["I=0.25,R=0.1", "beta=0.5:0.9"], "--ic") == {"I": 0.25, "R": 0.1, "beta": [0.5, 0.9]}
    with pytest.raises(Exception, match="NAME=VALUE"):
        parse_assignments(["I0.25"], "--ic")


def test_pinn_solve_answers_a_query_in_the_box_without_retraining(
    cli, saved_bundle: Path
) -> None:
    code, out, err = cli(["pinn", "solve", str(saved_bundle), "--ic", "I=0.15,R=0.12", "--t", "0:5:6", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["inside_box"] and res["z0"]["S"] == pytest.approx(1 - 0.15 - 0.12)
    assert res["t"] == pytest.approx([0, 1, 2, 3, 4, 5])
    z = torch.tensor(res["z"])
    ref = torch.as_tensor(reference_solution(get_system("sir"), res["t"], [0.73, 0.15, 0.12], [0.8, 0.2]),
                          dtype=z.dtype).reshape(z.shape)
    assert torch.allclose(z[0], torch.tensor([0.73, 0.15, 0.12], dtype=z.dtype), atol=1e-12)  # IC exact
    assert (z - ref).abs().max() < 5e-3, (z - ref).abs().max()
    # outside the box: still answered, with a warning naming the box
    code, out, err = cli(["pinn", "solve", str(saved_bundle), "--ic", "I=0.4"])
    assert code == 0 and "extrapolation" in err and "I0=[0.1, 0.2]" in err


def test_pinn_eval_reports_errors_on_the_box_and_on_a_shifted_box(
    cli, saved_bundle: Path, tmp_path: Path
) -> None:
    code, out, err = cli(["pinn", "eval", str(saved_bundle), "--grid", "3", "--json"])
    assert code == 0, err
    inside = json.loads(out)
    assert inside["n_problems"] == 9 and inside["max_abs_error"] < 5e-3
    png = tmp_path / "shifted.png"
    code, out, err = cli(["pinn", "eval", str(saved_bundle), "--ic", "I=0.3:0.4", "--grid", "2", "--png", str(png),
                           "--json"])
    assert code == 0, err
    shifted = json.loads(out)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert shifted["max_abs_error"] > inside["max_abs_error"]  # outside the training box it is worse
    code, _, err = cli(["pinn", "eval", str(saved_bundle), "--ic", "Q=0.3"])
    assert code != 0 and "Q" in err
