"""Matplotlib figures written as PNG files next to results.

Figures are built on :class:`matplotlib.figure.Figure` directly (the Agg renderer, no
``pyplot`` and no global figure state), so they are safe in worker processes and on
machines without a display. Every function writes its PNG atomically (temporary file
in the same folder, then rename) and returns the path.

Accuracies are passed in the unit they should be drawn in; callers decide (the report
draws them in %).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shiftlab.io import atomic_write_bytes

__all__ = [
    "BarPanel",
    "Curve",
    "CurvePanel",
    "bar_panels",
    "bar_with_ci",
    "curve_panels",
    "curves_with_band",
    "embedding_scatter",
    "grouped_bars",
    "image_grid",
    "learning_curves",
    "save_figure",
]

_DPI = 110
_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class BarPanel:
    """One bar chart: a bar per label with a symmetric error bar.

    Attributes:
        title: panel title.
        labels: one label per bar.
        means: bar heights.
        cis: error-bar half-widths (``nan``: no error bar, e.g. a single seed).
        ylabel: y-axis label.
    """

    title: str
    labels: Sequence[str]
    means: Sequence[float]
    cis: Sequence[float]
    ylabel: str = ""


@dataclass(frozen=True)
class Curve:
    """One line with an optional band (e.g. mean ± 95% CI over seeds).

    Attributes:
        label: legend entry.
        x: x values (e.g. epochs).
        mean: y values, one per x.
        low: lower edge of the band (``None``: no band; ``nan`` entries leave gaps).
        high: upper edge of the band.
    """

    label: str
    x: Sequence[float]
    mean: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None


@dataclass(frozen=True)
class CurvePanel:
    """One axes of curves.

    Attributes:
        title: panel title.
        curves: the lines to draw.
        xlabel: x-axis label.
        ylabel: y-axis label.
    """

    title: str
    curves: Sequence[Curve] = field(default_factory=tuple)
    xlabel: str = "epoch"
    ylabel: str = ""


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG and write it atomically to ``path``; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _grid(n: int, ncols: int, cell: tuple[float, float]) -> tuple[Figure, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _draw_bars(ax: Any, panel: BarPanel) -> None:
    means = np.asarray(panel.means, dtype=np.float64)
    cis = np.asarray(panel.cis, dtype=np.float64)
    if means.shape != cis.shape or len(panel.labels) != means.size:
        raise ValueError(
            f"bar panel {panel.title!r}: {len(panel.labels)} labels, {means.size} means and "
            f"{cis.size} CIs must have the same length"
        )
    x = np.arange(means.size)
    colors = [f"C{i % 10}" for i in range(means.size)]
    ax.bar(x, np.nan_to_num(means), color=colors, alpha=0.85, edgecolor="black", linewidth=0.5)
    ok = np.isfinite(cis) & np.isfinite(means)  # no error bar where the CI is unknown (one seed)
    if ok.any():
        ax.errorbar(x[ok], means[ok], yerr=cis[ok], fmt="none", ecolor="black", capsize=4, linewidth=1.2)
    for xi, m, c in zip(x, means, cis, strict=True):
        if math.isfinite(m):
            text = f"{m:.2f}" + (f"\n±{c:.2f}" if math.isfinite(c) else "")
            ax.annotate(text, (xi, m + (c if math.isfinite(c) else 0.0)), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    long = any(len(str(lb)) > 8 for lb in panel.labels) or means.size > 4
    ax.set_xticks(x, [str(lb) for lb in panel.labels], rotation=30 if long else 0,
                  ha="right" if long else "center", fontsize=8)
    ax.set_title(panel.title, fontsize=9)
    ax.set_ylabel(panel.ylabel)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)


def bar_panels(
    panels: Sequence[BarPanel], path: str | os.PathLike[str], title: str | None = None, ncols: int = 3
) -> Path:
    """Several bar charts with CI error bars in one PNG (one panel per metric).

    Args:
        panels: the panels, drawn left to right, top to bottom.
        path: output PNG.
        title: optional figure title.
        ncols: panels per row.

    Returns:
        ``path``.
    """
    if not panels:
        raise ValueError("bar_panels() needs at least one panel")
    width = max(4.0, 0.8 * max(len(p.labels) for p in panels) + 1.5)
    fig, axes = _grid(len(panels), ncols, (width, 3.4))
    for ax, panel in zip(axes, panels, strict=True):
        _draw_bars(ax, panel)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def bar_with_ci(
    labels: Sequence[str],
    means: Sequence[float],
    cis: Sequence[float],
    path: str | os.PathLike[str],
    ylabel: str = "",
    title: str = "",
) -> Path:
    """One bar chart: a bar per label, error bars of half-width ``cis`` (``nan``: none).

    Args:
        labels: bar labels.
        means: bar heights (in the unit to display, e.g. %).
        cis: 95% CI half-widths in the same unit.
        path: output PNG.
        ylabel: y-axis label.
        title: chart title.

    Returns:
        ``path``.
    """
    return bar_panels([BarPanel(title, list(labels), list(means), list(cis), ylabel)], path, ncols=1)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Grouped bar chart: one group of bars per entry of ``groups``, one bar (and colour)
    per series, e.g. the error of each test-time method (series) per corruption (groups).

    Args:
        groups: x-axis group labels.
        series: label -> one value per group (``nan``: no bar), in the unit to display.
        path: output PNG.
        ylabel: y-axis label.
        title: chart title.

    Returns:
        ``path``.
    """
    if not groups or not series:
        raise ValueError("grouped_bars() needs at least one group and one series")
    for label, values in series.items():
        if len(values) != len(groups):
            raise ValueError(f"series {label!r} has {len(values)} values for {len(groups)} groups")
    n = len(series)
    width = 0.8 / n
    x = np.arange(len(groups))
    fig = Figure(figsize=(max(6.0, 0.25 * n * len(groups) + 2.0), 3.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x - 0.4 + (i + 0.5) * width, np.nan_to_num(np.asarray(values, dtype=np.float64)), width,
               label=label, color=f"C{i % 10}", edgecolor="black", linewidth=0.3)
    ax.set_xticks(x, [str(g) for g in groups], rotation=35 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(n, 4), loc="best")
    return save_figure(fig, path)


def _draw_curves(ax: Any, panel: CurvePanel) -> None:
    for i, c in enumerate(panel.curves):
        color = f"C{i % 10}"
        x = np.asarray(c.x, dtype=np.float64)
        y = np.asarray(c.mean, dtype=np.float64)
        ax.plot(x, y, color=color, marker="o", markersize=3, linewidth=1.5, label=c.label)
        if c.low is not None and c.high is not None:
            lo = np.asarray(c.low, dtype=np.float64)
            hi = np.asarray(c.high, dtype=np.float64)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(x, lo, hi, where=ok, color=color, alpha=0.2, linewidth=0)
    if all(float(v).is_integer() for c in panel.curves for v in c.x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    if panel.curves:
        ax.legend(fontsize=7)


def curve_panels(
    panels: Sequence[CurvePanel], path: str | os.PathLike[str], title: str | None = None, ncols: int = 3
) -> Path:
    """Several panels of curves with shaded bands in one PNG.

    Args:
        panels: the panels (e.g. one per metric, one curve per variant).
        path: output PNG.
        title: optional figure title.
        ncols: panels per row.

    Returns:
        ``path``.
    """
    if not panels:
        raise ValueError("curve_panels() needs at least one panel")
    fig, axes = _grid(len(panels), ncols, (4.6, 3.3))
    for ax, panel in zip(axes, panels, strict=True):
        _draw_curves(ax, panel)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def curves_with_band(
    curves: Sequence[Curve],
    path: str | os.PathLike[str],
    xlabel: str = "epoch",
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Curves (e.g. mean over seeds per epoch) with shaded bands (e.g. the 95% CI).

    Args:
        curves: the lines; a curve whose ``low``/``high`` are ``None`` has no band.
        path: output PNG.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: chart title.

    Returns:
        ``path``.
    """
    return curve_panels([CurvePanel(title, list(curves), xlabel, ylabel)], path, ncols=1)


def learning_curves(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Learning curves of one run from its ``results.jsonl`` records.

    Accuracies (metric names ending in ``acc``) are drawn in % in one panel, training
    losses (``train/...``) in another, anything else in a third.

    Args:
        records: ``[{"epoch": int, "metrics": {name: value}}, ...]``.
        path: output PNG.
        title: figure title.

    Returns:
        ``path``.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        ep = r.get("epoch")
        metrics = r.get("metrics")
        if not isinstance(ep, (int, float)) or not isinstance(metrics, Mapping):
            continue
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                xs, ys = series.setdefault(str(k), ([], []))
                xs.append(float(ep))
                ys.append(float(v))
    groups: dict[str, list[Curve]] = {"accuracy (%)": [], "training losses": [], "other": []}
    for k, (xs, ys) in series.items():
        if k.endswith("acc"):
            groups["accuracy (%)"].append(Curve(k, xs, [100.0 * y for y in ys]))
        elif k.startswith("train/"):
            groups["training losses"].append(Curve(k.removeprefix("train/"), xs, ys))
        else:
            groups["other"].append(Curve(k, xs, ys))
    panels = [CurvePanel(name, curves, "epoch", name) for name, curves in groups.items() if curves]
    if not panels:
        panels = [CurvePanel("no evaluations recorded", [])]
    return curve_panels(panels, path, title=title or None, ncols=len(panels))


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().float().numpy()
    return np.asarray(a)


def image_grid(
    images: Any,
    titles: Sequence[str] | None,
    path: str | os.PathLike[str],
    ncols: int = 8,
    title: str | None = None,
) -> Path:
    """A grid of images, e.g. clean vs shifted examples.

    Args:
        images: ``[N, C, H, W]`` float in [0, 1] (``C`` is 1 or 3; ``[N, H, W]`` is taken as
            grey), a torch tensor or numpy array. Values outside [0, 1] are clipped.
        titles: one title per image (``""`` for none), or ``None``.
        path: output PNG.
        ncols: images per row.
        title: optional figure title.

    Returns:
        ``path``.
    """
    arr = _to_numpy(images).astype(np.float64)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] == 0:
        raise ValueError(f"image_grid() expects [N, C, H, W] with C in (1, 3) and N > 0, got shape {arr.shape}")
    n = arr.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"image_grid(): {len(titles)} titles for {n} images")
    arr = np.clip(np.nan_to_num(arr), 0.0, 1.0)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.3 * ncols, 1.45 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        img = arr[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
        if titles is not None and titles[i]:
            ax.set_title(str(titles[i]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def embedding_scatter(
    features_2d: Any,
    domain: Any,
    labels: Any,
    path: str | os.PathLike[str],
    title: str = "",
    domain_names: Mapping[Any, str] | None = None,
) -> Path:
    """Scatter of 2-D embeddings (e.g. t-SNE/PCA of features): colour = class, marker = domain.

    Args:
        features_2d: ``[N, 2]`` float.
        domain: ``[N]`` domain id per point (int or str; e.g. 0 = source, 1 = target).
        labels: ``[N]`` int class per point.
        path: output PNG.
        title: chart title.
        domain_names: optional display names per domain id (e.g. ``{0: "mnist", 1: "mnist_m"}``).

    Returns:
        ``path``.
    """
    xy = _to_numpy(features_2d).astype(np.float64)
    dom = _to_numpy(domain).reshape(-1)
    lab = _to_numpy(labels).reshape(-1)
    if xy.ndim != 2 or xy.shape[1] != 2 or not (len(dom) == len(lab) == xy.shape[0]):
        raise ValueError(
            f"embedding_scatter() expects features [N, 2], domain [N] and labels [N]; got "
            f"{xy.shape}, {dom.shape}, {lab.shape}"
        )
    classes = sorted(set(lab.tolist()))
    color_of = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    domains = sorted(set(dom.tolist()), key=str)
    for j, d in enumerate(domains):
        sel = dom == d
        ax.scatter(xy[sel, 0], xy[sel, 1], c=[color_of[c] for c in lab[sel].tolist()],
                   marker=_MARKERS[j % len(_MARKERS)], s=12, alpha=0.6, linewidths=0)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker=_MARKERS[j % len(_MARKERS)], color="gray",
                      label=str((domain_names or {}).get(d, d))) for j, d in enumerate(domains)]
    if len(classes) <= 10:
        handles += [Line2D([], [], linestyle="", marker="o", color=color_of[c], label=f"class {int(c) if float(c).is_integer() else c}") for c in classes]
    ax.legend(handles=handles, fontsize=7, loc="best", ncols=2 if len(handles) > 6 else 1)
    ax.set_title(title or "embedding (colour: class, marker: domain)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
