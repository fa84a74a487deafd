"""Figures for PINN runs: trajectories against the reference, loss curves, loss heatmaps.

The heatmaps are the source document's "loss trend inside/outside the bundle": the
natural log of the residual MSE of the solution the network gives for each combination
of two bundle coordinates (e.g. ``(I0, R0)`` or ``(beta, gamma)``, the others at the box
centre), over a region that covers the training box and beyond it, with the box outlined.

All figures use :class:`matplotlib.figure.Figure` (no pyplot state) and are written
atomically with :func:`shiftlab.plots.save_figure`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from shiftlab.plots import save_figure

__all__ = ["loss_heatmaps", "plot_heatmap", "plot_loss_curves", "plot_trajectories"]

_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_trajectories(
    t: Any,
    pred: Any,
    ref: Any | None,
    state_names: Sequence[str],
    path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
    suptitle: str = "",
) -> Path:
    """PINN solutions (solid) against the reference (dashed), one panel per problem.

    Args:
        t: times, ``[T]``.
        pred: PINN solutions, ``[T, n]`` or ``[B, T, n]`` (at most 6 panels are drawn).
        ref: reference solutions of the same shape, or ``None``.
        state_names: component names (legend).
        path: output PNG.
        titles: one title per problem.
        suptitle: figure title.
    """
    tt = _np(t)
    p = _np(pred)
    r = None if ref is None else _np(ref)
    if p.ndim == 2:
        p = p[None]
        r = None if r is None else r[None]
    b = min(p.shape[0], 6)
    ncols = min(b, 3)
    nrows = math.ceil(b / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i in range(b):
        ax = axes[i]
        for j, name in enumerate(state_names):
            c = _COLORS[j % len(_COLORS)]
            ax.plot(tt, p[i, :, j], color=c, lw=1.8, label=f"{name} (PINN)")
            if r is not None:
                ax.plot(tt, r[i, :, j], color="k", lw=1.0, ls="--", label="solve_ivp" if j == 0 else None)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=9)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    for ax in axes[b:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)


def plot_loss_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    x: str = "epoch",
    key: str = "ln_loss_val",
    title: str = "",
) -> Path:
    """ln(residual MSE) against epochs (or seconds), one line per run.

    Args:
        curves: label -> history records (``epoch``, ``elapsed_s``, ``phase``, ``ln_loss_val``).
        path: output PNG.
        x: ``epoch`` or ``elapsed_s``.
        key: which loss to draw (``ln_loss_val``: held-out points; ``ln_loss``: training points).
        title: chart title.
    """
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, (label, recs) in enumerate(curves.items()):
        xs = [r[x] for r in recs]
        ys = [r[key] for r in recs]
        c = _COLORS[i % len(_COLORS)]
        ax.plot(xs, ys, color=c, lw=1.6, label=label)
        switch = next((r for r in recs if r.get("phase") in ("lbfgs", "lm")), None)
        if switch is not None:
            ax.axvline(switch[x], color=c, ls=":", lw=1.0)
    ax.set_xlabel("seconds" if x == "elapsed_s" else "epoch (Adam epochs, then refinement steps)")
    ax.set_ylabel("ln(residual MSE)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_heatmap(
    xs: Any,
    ys: Any,
    values: Any,
    path: str | os.PathLike[str],
    xlabel: str,
    ylabel: str,
    box: tuple[float, float, float, float] | None = None,
    title: str = "",
    cbar_label: str = "ln(residual MSE)",
) -> Path:
    """A heatmap of ``values[iy, ix]`` with the training box outlined.

    Args:
        xs: x grid, ``[nx]``.
        ys: y grid, ``[ny]``.
        values: ``[ny, nx]``.
        path: output PNG.
        xlabel: x label.
        ylabel: y label.
        box: ``(x_low, x_high, y_low, y_high)`` to outline, or ``None``.
        title: chart title.
        cbar_label: colour bar label.
    """
    fig = Figure(figsize=(5.2, 4.3))
    ax = fig.subplots()
    _draw_heatmap(fig, ax, _np(xs), _np(ys), _np(values), xlabel, ylabel, box, title, cbar_label)
    return save_figure(fig, path)


def _draw_heatmap(
    fig: Figure, ax: Any, xs: np.ndarray, ys: np.ndarray, v: np.ndarray, xlabel: str, ylabel: str,
    box: tuple[float, float, float, float] | None, title: str, cbar_label: str,
) -> None:
    mesh = ax.pcolormesh(xs, ys, v, shading="nearest", cmap="viridis")
    cb = fig.colorbar(mesh, ax=ax)
    cb.set_label(cbar_label)
    if box is not None:
        x0, x1, y0, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=2.0, ls="--"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)


def loss_heatmaps(
    solver: Any,
    path: str | os.PathLike[str],
    pairs: Sequence[tuple[str, str]] | None = None,
    resolution: int = 25,
    extend: float = 1.0,
    n_t: int = 200,
) -> tuple[Path | None, dict[str, Any]]:
    """The source document's heatmaps of ln(residual MSE) over pairs of bundle coordinates.

    Args:
        solver: a trained :class:`~shiftlab.pinn.solver.Solver` with bundle dimensions.
        path: output PNG (one panel per pair).
        pairs: coordinate pairs; default ``(I, R)`` and ``(beta, gamma)`` where available,
            else the first two bundle dimensions.
        resolution: grid points per axis.
        extend: the grid covers each range widened by ``extend`` times its length on both
            sides (clipped at 0, since these are rates and fractions).
        n_t: time points per problem for the residual.

    Returns:
        The PNG path (``None`` when the box has fewer than two dimensions) and the data:
        ``{"I-R": {"x": [...], "y": [...], "ln_loss": [[...]], "inside_mean": ..,
        "outside_mean": ..}, ...}``.
    """
    box = solver.box
    dims = list(box.dims)
    if pairs is None:
        pairs = [p for p in (("I", "R"), ("beta", "gamma")) if p[0] in dims and p[1] in dims]
        if not pairs and len(dims) >= 2:
            pairs = [(dims[0], dims[1])]
    pairs = [p for p in pairs if p[0] in dims and p[1] in dims]
    if not pairs:
        return None, {}
    fig = Figure(figsize=(5.4 * len(pairs), 4.4))
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    data: dict[str, Any] = {}
    center = box.center(solver.dtype)
    for ax, (a, b) in zip(axes, pairs, strict=True):
        ia, ib = dims.index(a), dims.index(b)
        (alo, ahi), (blo, bhi) = (box.lows[ia], box.highs[ia]), (box.lows[ib], box.highs[ib])
        xs = np.linspace(max(0.0, alo - extend * (ahi - alo)), ahi + extend * (ahi - alo), resolution)
        ys = np.linspace(max(0.0, blo - extend * (bhi - blo)), bhi + extend * (bhi - blo), resolution)
        gx, gy = np.meshgrid(xs, ys)
        u = center.repeat(gx.size, 1)
        u[:, ia] = torch.as_tensor(gx.ravel(), dtype=solver.dtype)
        u[:, ib] = torch.as_tensor(gy.ravel(), dtype=solver.dtype)
        vals = solver.ln_loss_per_problem(u, n_t=n_t).cpu().numpy().reshape(gx.shape)
        inside = (gx >= alo) & (gx <= ahi) & (gy >= blo) & (gy <= bhi)
        data[f"{a}-{b}"] = {
            "x": xs.tolist(),
            "y": ys.tolist(),
            "ln_loss": vals.tolist(),
            "inside_mean": float(vals[inside].mean()) if inside.any() else None,
            "outside_mean": float(vals[~inside].mean()) if (~inside).any() else None,
        }
        lab = {"I": "I(0)", "R": "R(0)", "S": "S(0)", "E": "E(0)"}
        _draw_heatmap(
            fig, ax, xs, ys, vals, lab.get(a, a), lab.get(b, b), (alo, ahi, blo, bhi),
            f"ln(residual MSE) over ({a}, {b}); box dashed", "ln(residual MSE)",
        )
    return save_figure(fig, path), data
