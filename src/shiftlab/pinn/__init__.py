"""Physics-informed neural networks for ODEs: single problems, solution bundles, transfer.

Implements the differential-equation half of the source document (Paticchio &
Scarlatti, "Improving domain-specific transfer learning applications for image
recognition and differential equations"): the Lagaris parametrisation
``z(t) = z0 + (1 - e^{-(t - t0)}) N(t, z0, theta)`` (Lagaris, Likas & Fotiadis 1998),
bundles of initial conditions and parameters (Flamant, Protopapas & Sondak 2020), and
fine-tuning to perturbed problems and shifted bundles.

Example:
    >>> from shiftlab.pinn import Solver, NetConfig, TrainConfig
    >>> s = Solver("sir", (0, 20), ic={"S": 0.8, "I": 0.2, "R": 0.0},
    ...            params={"beta": 0.8, "gamma": 0.2}, net=NetConfig(16, 2, "tanh"))
    >>> history = s.fit(TrainConfig(epochs=200, refine="lm", refine_steps=50))  # doctest: +SKIP
"""

from shiftlab.pinn.box import REMAINDER, Box
from shiftlab.pinn.nets import ACTIVATIONS, MLP, NetConfig, SolutionNet
from shiftlab.pinn.reference import reference_solution, trajectory_errors
from shiftlab.pinn.solver import SAMPLERS, BundleSolver, History, Solver, TrainConfig, sample_points
from shiftlab.pinn.systems import SYSTEMS, OdeSystem, get_system, make_system, resolve_system

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "REMAINDER",
    "SAMPLERS",
    "SYSTEMS",
    "Box",
    "BundleSolver",
    "History",
    "NetConfig",
    "OdeSystem",
    "SolutionNet",
    "Solver",
    "TrainConfig",
    "get_system",
    "make_system",
    "reference_solution",
    "resolve_system",
    "sample_points",
    "trajectory_errors",
]
