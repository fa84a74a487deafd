"""Training, the Levenberg-Marquardt Jacobian, references, save/load, transfer."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import jacrev, vmap

from shiftlab.pinn import (
    BundleSolver,
    NetConfig,
    Solver,
    TrainConfig,
    reference_solution,
    resolve_system,
    sample_points,
    trajectory_errors,
)

SIR = {"ic": {"S": 0.8, "I": 0.2, "R": 0.0}, "params": {"beta": 0.8, "gamma": 0.2}}


def _ic_bundle(seed: int = 0, width: int = 8) -> BundleSolver:
    return BundleSolver("sir", (0, 20), ic={"S": "remainder"}, params={"beta": 0.8, "gamma": 0.2},
                        bundle={"I": [0.1, 0.2], "R": [0.1, 0.2]}, net=NetConfig(width, 2, "tanh"), seed=seed)


def test_small_sir_solve_reaches_stated_error_within_cpu_budget() -> None:
    """The document's SIR problem: max abs error <= 1e-3 vs solve_ivp within 60 s of CPU time."""
    s = Solver("sir", (0, 20), **SIR, net=NetConfig(16, 2, "tanh"), seed=0)
    cpu0 = time.process_time()
    hist = s.fit(TrainConfig(points=2000, epochs=200, refine="lm", refine_steps=60, target_ln_loss=-18.0))
    cpu = time.process_time() - cpu0
    t = np.linspace(0, 20, 501)
    ref = reference_solution(s.system, t, [0.8, 0.2, 0.0], [0.8, 0.2])
    err = trajectory_errors(s.predict(t), ref)
    assert float(err["max_abs"]) <= 1e-3, (float(err["max_abs"]), hist.final_ln_loss)
    assert hist.final_ln_loss <= -18.0
    assert cpu <= 60.0
    # the loss went down, and the history is consistent
    lns = [r["ln_loss_val"] for r in hist.records]
    assert lns[-1] < lns[0] - 10
    assert [r["phase"] for r in hist.records][0] == "init" and hist.records[-1]["phase"] == "lm"
    assert all(b["elapsed_s"] >= a["elapsed_s"] for a, b in zip(hist.records, hist.records[1:], strict=False))


def test_lm_jacobian_matches_torch_func() -> None:
    s = _ic_bundle(width=6)
    t, u = sample_points(s.box, 40, "lhs", torch.Generator().manual_seed(0))
    r, jac = s._jacobian(t, u)
    params = dict(s.net.named_parameters())
    names = list(params)

    def residual_single(p: dict[str, torch.Tensor], tt: torch.Tensor, uu: torch.Tensor) -> torch.Tensor:
        z0, theta = s.box.expand(uu[None])
        x = s.net.inputs(tt[None], uu[None])
        h, dh = x, torch.zeros_like(x)
        dh[:, 0] = s.net.in_scale[0]
        layers = len(s.net.mlp.layers)
        for i in range(layers):
            w, b = p[f"mlp.layers.{i}.weight"], p[f"mlp.layers.{i}.bias"]
            h, dh = h @ w.T + b, dh @ w.T
            if i < layers - 1:
                a = torch.tanh(h)
                h, dh = a, (1 - a * a) * dh
        e = torch.exp(-tt[None])
        z = z0 + (1 - e) * h
        dz = e * h + (1 - e) * dh
        return (dz - s.system.f(tt[None], z, theta))[0]

    jac_ref = vmap(jacrev(residual_single), in_dims=(None, 0, 0))(params, t, u)  # {name: [B, 3, *shape]}
    flat = torch.cat([jac_ref[n].reshape(t.shape[0], 3, -1) for n in names], 2).reshape(-1, s.n_weights)
    assert torch.allclose(jac, flat, atol=1e-12, rtol=1e-10)
    assert torch.allclose(r, s.residual(t, u).reshape(-1).detach())


def test_samplers_cover_the_box() -> None:
    s = _ic_bundle()
    gen = torch.Generator().manual_seed(0)
    for sampler in ("grid", "uniform", "stratified", "lhs"):
        t, u = sample_points(s.box, 1000, sampler, gen)
        assert t.shape[1] == 1 and u.shape[1] == 2 and t.shape[0] == u.shape[0]
        assert float(t.min()) >= 0 and float(t.max()) <= 20
        assert bool(s.box.contains(u).all())
    t, u = sample_points(s.box, 100, "lhs", gen)
    # Latin hypercube: exactly one point per stratum along every axis
    for col in (t[:, 0] / 20, (u[:, 0] - 0.1) / 0.1, (u[:, 1] - 0.1) / 0.1):
        assert sorted((col * 100).floor().long().tolist()) == list(range(100))
    t, u = sample_points(s.box, 1000, "lhs", gen, margin=0.1)
    assert float(u.min()) < 0.1 and float(u.max()) > 0.2 and float(t.max()) > 20 and float(t.min()) >= 0


def test_lbfgs_and_adam_only_schedules_lower_the_loss() -> None:
    s = Solver("exponential_decay", (0, 2), ic={"x": 1.0}, params={"k": 1.0}, net=NetConfig(8, 1, "tanh"))
    h1 = s.fit(TrainConfig(points=100, epochs=100, lr=1e-2, refine="lbfgs", refine_steps=50, log_every=20))
    assert h1.final_ln_loss < h1.records[0]["ln_loss_val"] - 8
    assert h1.records[-1]["phase"] == "lbfgs"
    err = (s.predict(torch.linspace(0, 2, 50)) - torch.exp(-torch.linspace(0, 2, 50, dtype=torch.float64))[:, None]).abs().max()
    assert float(err) < 1e-3


def test_save_load_gives_identical_predictions(tmp_path: Path) -> None:
    s = _ic_bundle(seed=3)
    s.fit(TrainConfig(points=300, epochs=30, refine="lm", refine_steps=3))
    path = s.save(tmp_path / "solver")
    assert path.suffix == ".json" and (tmp_path / "solver.safetensors").exists()
    loaded = BundleSolver.load(tmp_path / "solver")
    assert isinstance(loaded, BundleSolver) and loaded.box == s.box
    t = torch.linspace(0, 20, 33)
    z0 = torch.tensor([[0.7, 0.15, 0.15], [0.65, 0.17, 0.18]])
    assert torch.equal(loaded.predict(t, z0, [0.8, 0.2]), s.predict(t, z0, [0.8, 0.2]))
    assert Solver.load(path).net.spec() == s.net.spec()


def test_bundle_answers_every_problem_of_its_box() -> None:
    s = _ic_bundle(width=12)
    s.fit(TrainConfig(points=600, sampler="lhs", epochs=100, refine="lm", refine_steps=25, margin=0.1))
    u = s.box.grid(3)
    z0, theta = s.box.expand(u)
    t = np.linspace(0, 20, 101)
    ref = reference_solution(s.system, t, z0.numpy(), theta.numpy())
    err = trajectory_errors(s.predict(t, z0, theta), ref)["max_abs"]
    assert err.shape == (9,) and float(err.max()) < 1e-2
    # batched prediction equals one-at-a-time prediction
    one = s.predict(t, z0[4], theta[4])
    assert torch.allclose(one, s.predict(t, z0, theta)[4])


def test_fine_tune_transfers_and_checks_structure() -> None:
    s = Solver("sir", (0, 20), **SIR, net=NetConfig(8, 2, "tanh"))
    s.fit(TrainConfig(points=200, epochs=100, lr=1e-2, refine="none"))
    before = dict((k, v.clone()) for k, v in s.net.state_dict().items())
    tuned = s.copy()
    hist = tuned.fine_tune(ic={"S": 0.7, "I": 0.3}, train=TrainConfig(points=200, epochs=20, refine="none", log_every=5))
    assert tuned.box.ic["I"] == 0.3 and s.box.ic["I"] == 0.2  # the copy moved, the source did not
    assert all(torch.equal(v, s.net.state_dict()[k]) for k, v in before.items())
    assert hist.epochs == 20 and len(hist.records) == 5
    with pytest.raises(ValueError, match="must match"):
        s.copy().fine_tune(bundle={"I": [0.1, 0.2]})


def test_divergence_is_a_training_error() -> None:
    from shiftlab.errors import TrainingError

    s = Solver("exponential_decay", (0, 2), ic={"x": 1.0}, params={"k": 1.0}, net=NetConfig(4, 1, "tanh"))
    with torch.no_grad():
        s.net.mlp.layers[0].weight.fill_(math.nan)
    with pytest.raises(TrainingError, match="residual became"):
        s.fit(TrainConfig(points=10, epochs=2, refine="none", log_every=1))


def test_reference_matches_closed_forms() -> None:
    decay = resolve_system("exponential_decay")
    t = np.linspace(0, 3, 31)
    ref = reference_solution(decay, t, [[1.0], [2.0]], [[0.5], [1.5]])
    exact = np.stack([np.exp(-0.5 * t), 2 * np.exp(-1.5 * t)])[..., None]
    assert np.abs(ref - exact).max() < 1e-9
    osc = resolve_system("damped_oscillator")
    ref = reference_solution(osc, t, [1.0, 0.0], [2.0, 0.1])
    tt = torch.as_tensor(t).unsqueeze(1)
    f64 = torch.float64
    ex = osc.exact(tt, torch.tensor([[1.0, 0.0]], dtype=f64).expand(31, 2),
                   torch.tensor([[2.0, 0.1]], dtype=f64).expand(31, 2), 0.0)
    assert np.abs(ref - ex.numpy()).max() < 1e-9
    err = trajectory_errors(ref + 1e-3, ref)
    assert abs(float(err["max_abs"]) - 1e-3) < 1e-12
