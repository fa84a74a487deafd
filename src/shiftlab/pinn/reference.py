"""Reference solutions from ``scipy.integrate.solve_ivp`` and error metrics.

All trajectories of a batch are integrated in **one** ``solve_ivp`` call (the states are
stacked into one vector and the system's torch right-hand side is evaluated on the whole
batch at once), with tight tolerances (``rtol=1e-10``, ``atol=1e-12``, DOP853 by default),
so a 10 x 10 grid of problems costs about as much as one problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

from shiftlab.pinn.systems import OdeSystem

__all__ = ["reference_solution", "trajectory_errors"]


def reference_solution(
    system: OdeSystem,
    t: Any,
    z0: Any,
    theta: Any,
    t0: float | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> np.ndarray:
    """Solve ``dz/dt = f(t, z, theta)`` numerically for one or many problems.

    Args:
        system: the ODE system.
        t: output times, ``[T]``, sorted ascending, all ``>= t0``.
        z0: initial states at ``t0``, ``[n_state]`` or ``[B, n_state]``.
        theta: parameters, ``[n_params]`` or ``[B, n_params]``.
        t0: initial time (default ``t[0]``).
        rtol: relative tolerance.
        atol: absolute tolerance.
        method: ``solve_ivp`` method (``DOP853``; ``Radau`` for stiff systems).

    Returns:
        ``[T, n_state]`` for one problem, ``[B, T, n_state]`` for a batch (float64).

    Raises:
        RuntimeError: the integrator failed.
    """
    t_eval = np.asarray(t, dtype=np.float64).reshape(-1)
    z0_a = np.asarray(z0, dtype=np.float64)
    th_a = np.asarray(theta, dtype=np.float64)
    batched = z0_a.ndim == 2 or th_a.ndim == 2
    z0_a = z0_a.reshape(-1, system.n_state)
    th_a = th_a.reshape(-1, system.n_params)
    b = max(z0_a.shape[0], th_a.shape[0])
    z0_a = np.broadcast_to(z0_a, (b, system.n_state))
    th_t = torch.from_numpy(np.array(np.broadcast_to(th_a, (b, system.n_params)), dtype=np.float64))
    start = float(t_eval[0]) if t0 is None else float(t0)
    n = system.n_state

    def rhs(tt: float, y: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.array(y, dtype=np.float64).reshape(b, n))
        with torch.no_grad():
            dz = system.f(torch.full((b, 1), tt, dtype=torch.float64), z, th_t)
        return dz.numpy().reshape(-1)

    sol = solve_ivp(
        rhs, (start, float(t_eval[-1])), z0_a.reshape(-1), method=method, t_eval=t_eval, rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed for {system.name}: {sol.message}")
    out = sol.y.reshape(b, n, -1).transpose(0, 2, 1)
    return out if batched else out[0]


def trajectory_errors(pred: Any, ref: Any) -> dict[str, np.ndarray]:
    """Per-trajectory error metrics.

    Args:
        pred: predictions, ``[T, n]`` or ``[B, T, n]``.
        ref: reference, same shape.

    Returns:
        ``max_abs``: max over times and components of ``|pred - ref|``, ``[B]`` (or a 0-d
        array for one trajectory); ``rel_l2``: ``||pred - ref||_2 / ||ref||_2`` over times
        and components, same shape.
    """
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    r = np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} != reference shape {r.shape}")
    diff = p.astype(np.float64) - r
    axes = (-2, -1)
    max_abs = np.abs(diff).max(axis=axes)
    rel = np.sqrt((diff**2).sum(axis=axes)) / np.maximum(np.sqrt((r**2).sum(axis=axes)), 1e-300)
    return {"max_abs": max_abs, "rel_l2": rel}
