"""Aggregate run folders into tables (mean ± 95% CI) and plots; render benchmark JSON.

``shiftlab report RUNS`` walks ``RUNS`` for run folders
(``<recipe>/<variant>/seed-<k>/``, see :mod:`shiftlab.experiment.run`), reads each
finished run's ``metrics.json`` and groups them by ``(recipe, variant)`` and metric:

* over **seeds**: mean, sample std and the Student-t 95% CI of the mean
  (:func:`shiftlab.stats.summarize`);
* over **episodes** for few-shot metrics (``metrics.json`` has
  ``"episodes": {metric: [per-episode accuracy, ...]}``): the episodes of all seeds are
  pooled and the CI is taken over episodes, as the few-shot papers report it.

A folder without ``metrics.json`` is an unfinished run (still running, killed or failed);
a ``metrics.json`` that cannot be read is corrupt. Neither stops the report: both are
skipped, counted, and named in the warnings. Backup folders left by ``--overwrite``
(``seed-<k>.old-<time>``) are ignored.

The report writes, atomically, ``report.md`` (the table), ``report.png`` (a bar per
variant with 95% CI error bars, one panel per metric) and ``curves.png`` (learning
curves from ``results.jsonl``: the mean over seeds per epoch with a 95% CI band).

Benchmark scripts write their results with :func:`write_benchmark` (machine, versions
and date filled in) and :func:`render_benchmark` turns such a file into Markdown; a whole
folder of them (``shiftlab report benchmarks/results``) is one page of
:mod:`shiftlab.experiment.bench_report`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from shiftlab.errors import ShiftlabError
from shiftlab.io import atomic_write_text
from shiftlab.stats import NA, Summary, fmt_g, fmt_num, summarize

log = logging.getLogger(__name__)

__all__ = [
    "Collected",
    "ReportResult",
    "Row",
    "RunRecord",
    "Table",
    "aggregate",
    "collect",
    "curve_summaries",
    "is_accuracy",
    "machine_info",
    "package_version",
    "render_benchmark",
    "render_benchmark_doc",
    "report",
    "scan",
    "to_markdown",
    "write_benchmark",
]

RUN_MARKERS = ("metrics.json", "config.yaml", "results.jsonl", "checkpoint.json")
_SEED_DIR = re.compile(r"^seed-(\d+)$")
_BACKUP_DIR = re.compile(r"\.old-")
MAX_PANELS = 12
MAX_LISTED = 10


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as read from its ``metrics.json``.

    Attributes:
        path: the run folder.
        recipe: recipe name.
        variant: the variant label (its ``--set`` overrides, ``default`` when none).
        seed: the seed (``None`` when neither ``metrics.json`` nor the folder name tells).
        method: method name, when recorded.
        metrics: final metrics, name -> value (accuracies as fractions in [0, 1]).
        episodes: few-shot per-episode values, name -> values.
        selection: the model selection rule, in words.
        seconds: training wall-clock time, when recorded.
        overrides: the ``--set`` overrides that define the variant.
    """

    path: Path
    recipe: str
    variant: str
    seed: int | None
    method: str | None
    metrics: dict[str, float]
    episodes: dict[str, tuple[float, ...]] = field(default_factory=dict)
    selection: str = ""
    seconds: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Collected:
    """Everything :func:`scan` found under a runs folder.

    Attributes:
        root: the folder that was scanned.
        records: finished runs, sorted by (recipe, variant, seed, path).
        unfinished: run folders without ``metrics.json``.
        corrupt: ``(run folder, reason)`` for each unreadable ``metrics.json``.
        backups: ``seed-<k>.old-<time>`` folders that were ignored.
        warnings: human-readable problems (also logged).
    """

    root: Path
    records: list[RunRecord]
    unfinished: list[Path]
    corrupt: list[tuple[Path, str]]
    backups: list[Path]
    warnings: list[str]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
        return str(rel) if str(rel) != "." else str(path)
    except ValueError:
        return str(path)


def _read_config(run: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _label(overrides: Mapping[str, Any]) -> str:
    # Same label as shiftlab.config.variant_label, for metrics.json files that lack "variant".
    ov = {k: v for k, v in sorted(overrides.items()) if k != "seeds"}
    return ",".join(f"{k}={v}" for k, v in ov.items()) or "default"


def _parse_run(run: Path, root: Path, problems: list[str]) -> RunRecord:
    """Read one run folder's ``metrics.json``; raises ``ValueError`` when it is corrupt."""
    text = (run / "metrics.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    raw = data.get("metrics")
    if not isinstance(raw, dict):
        raise ValueError('no "metrics" object')
    where = _rel(run, root)
    metrics: dict[str, float] = {}
    for k, v in raw.items():
        if _is_number(v):
            metrics[str(k)] = float(v)
        else:
            problems.append(f"{where}: ignored metric {k!r} (value {v!r} is not a number)")
    episodes: dict[str, tuple[float, ...]] = {}
    raw_eps = data.get("episodes") or {}
    if not isinstance(raw_eps, dict):
        problems.append(f"{where}: ignored \"episodes\" (not an object of lists)")
        raw_eps = {}
    for k, v in raw_eps.items():
        if isinstance(v, list) and v and all(_is_number(e) for e in v):
            episodes[str(k)] = tuple(float(e) for e in v)
        else:
            problems.append(f"{where}: ignored episodes of {k!r} (not a non-empty list of numbers)")
    if not metrics and not episodes:
        raise ValueError("no numeric metrics")

    cfg: dict[str, Any] | None = None

    def config() -> dict[str, Any]:
        nonlocal cfg
        if cfg is None:
            cfg = _read_config(run)
        return cfg

    overrides = data.get("overrides")
    if not isinstance(overrides, dict):
        overrides = config().get("overrides") if isinstance(config().get("overrides"), dict) else {}
    recipe = data.get("recipe") or config().get("name") or (run.parent.parent.name if run != root else run.name)
    variant = data.get("variant") or (_label(overrides) if overrides else None)
    if not variant:
        variant = run.parent.name if run != root else "default"
    seed = data.get("seed")
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        m = _SEED_DIR.match(run.name)
        seed = int(m.group(1)) if m else None
    method = data.get("method")
    if isinstance(method, dict):
        method = method.get("name")
    selection = data.get("selection")
    if not isinstance(selection, str) or not selection:
        c = config()
        selection = c.get("selection_rule") or c.get("selection") or ""
    seconds = data.get("seconds")
    return RunRecord(
        path=run,
        recipe=str(recipe),
        variant=str(variant),
        seed=seed,
        method=str(method) if method is not None else None,
        metrics=metrics,
        episodes=episodes,
        selection=str(selection),
        seconds=float(seconds) if _is_number(seconds) else None,
        overrides=dict(overrides),
    )


def _listing(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def scan(runs_dir: str | os.PathLike[str]) -> Collected:
    """Find the run folders under ``runs_dir`` and read the finished ones.

    A folder is a run folder when it holds one of ``metrics.json``, ``config.yaml``,
    ``results.jsonl``, ``checkpoint.json`` or is named ``seed-<k>``; folders below a run
    folder are not searched. Unfinished and corrupt runs are skipped and reported in
    ``warnings``; no single bad file stops the scan.

    Args:
        runs_dir: a runs root, a recipe's folder, a variant's folder or one run folder.

    Returns:
        What was found.

    Raises:
        ShiftlabError: if ``runs_dir`` is not a folder.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ShiftlabError(f"{root} is not a folder of runs (expected runs/<recipe>/<variant>/seed-<k>/).")
    records: list[RunRecord] = []
    unfinished: list[Path] = []
    corrupt: list[tuple[Path, str]] = []
    backups: list[Path] = []
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if _BACKUP_DIR.search(d):
                backups.append(here / d)
                continue
            keep.append(d)
        dirnames[:] = keep
        files = set(filenames)
        if not (files.intersection(RUN_MARKERS) or _SEED_DIR.match(here.name)):
            continue
        dirnames[:] = []  # a run folder's subfolders (tb/, ...) are not runs
        if "metrics.json" not in files:
            unfinished.append(here)
            continue
        try:
            records.append(_parse_run(here, root, problems))
        except json.JSONDecodeError as exc:
            corrupt.append((here, f"invalid JSON: {exc}"))
        except UnicodeDecodeError as exc:
            corrupt.append((here, f"not UTF-8 text: {exc}"))
        except ValueError as exc:
            corrupt.append((here, str(exc)))
        except (OSError, TypeError, AttributeError, KeyError) as exc:
            corrupt.append((here, f"{type(exc).__name__}: {exc}"))

    warnings: list[str] = []
    if unfinished:
        warnings.append(
            f"{len(unfinished)} unfinished run(s) skipped (no metrics.json: still running, killed or "
            f"failed): {_listing([_rel(p, root) for p in unfinished])}. A killed run continues with "
            "`shiftlab run ... --resume`."
        )
    for p, reason in corrupt:
        warnings.append(
            f"corrupt metrics.json skipped in {_rel(p, root)} ({reason}); rerun that seed with "
            "`--overwrite` or delete the folder."
        )
    warnings.extend(problems)
    for w in warnings:
        log.warning("%s", w)
    records.sort(key=lambda r: (r.recipe, r.variant, r.seed if r.seed is not None else -1, str(r.path)))
    return Collected(root, records, unfinished, corrupt, backups, warnings)


def collect(runs_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """The finished runs under ``runs_dir`` (unfinished/corrupt ones are logged and skipped).

    Use :func:`scan` to also get the unfinished and corrupt folders and the warnings.
    """
    return scan(runs_dir).records


# ----------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Row:
    """One line of the table: a metric of one variant of one recipe, over seeds or episodes.

    Attributes:
        recipe: recipe name.
        variant: variant label.
        metric: metric name (``.../acc`` metrics are fractions, displayed in %).
        summary: mean, std, 95% CI and ``n`` over ``over``.
        over: ``"seeds"`` or ``"episodes"``.
        seeds: the seeds that contributed.
        selection: model selection rule(s), in words.
    """

    recipe: str
    variant: str
    metric: str
    summary: Summary
    over: str
    seeds: tuple[int, ...]
    selection: str

    @property
    def is_accuracy(self) -> bool:
        """Whether the metric is an accuracy (name ends with ``acc``), shown in %."""
        return is_accuracy(self.metric)


@dataclass(frozen=True)
class Table:
    """The aggregated results.

    Attributes:
        rows: sorted by recipe, variant, then metric (evaluation metrics before ``train/...``).
        seconds: wall-clock seconds per run, per ``(recipe, variant)``.
        warnings: problems found while aggregating (e.g. a seed recorded twice).
    """

    rows: list[Row]
    seconds: dict[tuple[str, str], Summary] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def is_accuracy(metric: str) -> bool:
    """Metric names ending with ``acc`` are accuracies, and those ending with ``/err``
    error rates (test-time adaptation runs): fractions in [0, 1], shown in %."""
    return metric.endswith("acc") or metric.endswith("/err")


def _unit(metric: str) -> str:
    return "error (%)" if metric.endswith("/err") else "accuracy (%)"


def _metric_order(metric: str) -> tuple[int, str]:
    # TTA runs: the per-method means before the per-shift detail (``per_shift/...``)
    late = metric.startswith(("source_val/", "per_shift/"))
    return (2 if metric.startswith("train/") else 1 if late else 0, metric)


def _dedupe(records: Iterable[RunRecord], warnings: list[str]) -> list[RunRecord]:
    seen: dict[tuple[str, str, int], RunRecord] = {}
    out: list[RunRecord] = []
    for r in records:
        if r.seed is not None:
            key = (r.recipe, r.variant, r.seed)
            if key in seen:
                warnings.append(
                    f"seed {r.seed} of {r.recipe} / {r.variant} appears twice ({seen[key].path} and "
                    f"{r.path}); only the first is counted."
                )
                continue
            seen[key] = r
        out.append(r)
    return out


def aggregate(records: Iterable[RunRecord]) -> Table:
    """Group runs by ``(recipe, variant)`` and metric and summarize each group.

    Metrics with per-episode values are summarized over the pooled episodes of all
    seeds (``over="episodes"``); every other metric over seeds (``over="seeds"``).

    Args:
        records: finished runs, e.g. from :func:`collect`.

    Returns:
        The :class:`Table`.
    """
    warnings: list[str] = []
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in _dedupe(records, warnings):
        groups[(r.recipe, r.variant)].append(r)
    rows: list[Row] = []
    seconds: dict[tuple[str, str], Summary] = {}
    for (recipe, variant), runs in sorted(groups.items()):
        selection = "; ".join(dict.fromkeys(r.selection for r in runs if r.selection)) or NA
        names = {m for r in runs for m in r.metrics} | {m for r in runs for m in r.episodes}
        for metric in sorted(names, key=_metric_order):
            with_eps = [r for r in runs if metric in r.episodes]
            if with_eps:
                if len(with_eps) < len(runs):
                    missing = sorted(str(r.seed) for r in runs if metric not in r.episodes)
                    warnings.append(
                        f"{recipe} / {variant}: {metric} has per-episode values for {len(with_eps)} of "
                        f"{len(runs)} runs (seeds without: {', '.join(missing)}); the CI uses those "
                        f"{len(with_eps)} only."
                    )
                values = [e for r in with_eps for e in r.episodes[metric]]
                used, over = with_eps, "episodes"
            else:
                used = [r for r in runs if metric in r.metrics]
                values = [r.metrics[metric] for r in used]
                over = "seeds"
            rows.append(Row(
                recipe=recipe,
                variant=variant,
                metric=metric,
                summary=summarize(values),
                over=over,
                seeds=tuple(sorted(r.seed for r in used if r.seed is not None)),
                selection=selection,
            ))
        secs = [r.seconds for r in runs if r.seconds is not None]
        if secs:
            seconds[(recipe, variant)] = summarize(secs)
    return Table(rows, seconds, warnings)


# ----------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _formatter(mean: float, acc: bool) -> Callable[[float], str]:
    """Accuracies: % with 2 decimals. Other metrics: 4 significant digits of the mean, and the
    same number of decimals for its std and CI (scientific notation outside [1e-3, 1e4))."""
    if acc:
        return lambda x: fmt_num(x, 2, 100.0)
    if not math.isfinite(mean) or mean == 0.0:
        return lambda x: fmt_g(x, 4)
    mag = math.floor(math.log10(abs(mean)))
    if -3 <= mag < 4:
        decimals = max(0, 3 - mag)
        return lambda x: fmt_num(x, decimals)
    return lambda x: NA if not math.isfinite(x) else f"{x:.3e}"


def _fmt_value(x: float, acc: bool) -> str:
    return _formatter(x, acc)(x)


def _n_cell(row: Row) -> str:
    s = row.summary
    if row.over == "episodes":
        return f"{s.n} episodes ({len(row.seeds)} seed{'s' if len(row.seeds) != 1 else ''})"
    return f"{s.n} seed{'s' if s.n != 1 else ''}"


def to_markdown(table: Table) -> str:
    """The table as Markdown.

    Columns: recipe, variant, metric, mean, std, 95% CI (the half-width: mean ± this),
    n (seeds, or episodes for few-shot metrics), selection rule. Accuracies (metric name
    ending with ``acc``) are in % with 2 decimals; other metrics have 4 significant
    digits. With a single seed, std and CI are unknown and shown as ``n/a``.
    """
    body = []
    for r in table.rows:
        s, acc = r.summary, r.is_accuracy
        fmt = _formatter(s.mean, acc)
        body.append([
            r.recipe,
            r.variant,
            f"{r.metric} (%)" if acc else r.metric,
            fmt(s.mean),
            fmt(s.std) if s.n > 1 else NA,
            f"± {fmt(s.ci95)}" if math.isfinite(s.ci95) else NA,
            _n_cell(r),
            r.selection,
        ])
    return _md_table(
        ["recipe", "variant", "metric", "mean", "std", "95% CI", "n", "selection rule"],
        body,
        ["l", "l", "l", "r", "r", "r", "r", "l"],
    )


def _seconds_markdown(table: Table) -> str:
    body = [[rec, var, fmt_num(s.mean, 1), f"± {fmt_num(s.ci95, 1)}" if math.isfinite(s.ci95) else NA, str(s.n)]
            for (rec, var), s in sorted(table.seconds.items())]
    return _md_table(["recipe", "variant", "seconds per run", "95% CI", "runs"], body, ["l", "l", "r", "r", "r"])


# ----------------------------------------------------------------------------- plots


def _plotted_metrics(rows: Sequence[Row]) -> list[tuple[str, str]]:
    keys = list(dict.fromkeys((r.recipe, r.metric) for r in rows))
    evals = [k for k in keys if not k[1].startswith("train/")]
    return evals or keys


def _bar_panels(table: Table, notes: list[str]) -> list[Any]:
    from shiftlab.plots import BarPanel

    keys = _plotted_metrics(table.rows)
    if len(keys) > MAX_PANELS:
        notes.append(f"report.png shows the first {MAX_PANELS} of {len(keys)} metrics; report.md has them all.")
        keys = keys[:MAX_PANELS]
    multi = len({k[0] for k in keys}) > 1
    panels = []
    for recipe, metric in keys:
        rows = [r for r in table.rows if r.recipe == recipe and r.metric == metric]
        scale = 100.0 if is_accuracy(metric) else 1.0
        panels.append(BarPanel(
            title=f"{recipe}: {metric}" if multi else metric,
            labels=[r.variant for r in rows],
            means=[scale * r.summary.mean for r in rows],
            cis=[scale * r.summary.ci95 for r in rows],
            ylabel=(_unit(metric) if scale == 100.0 else metric) + (" ± 95% CI" if len(rows) else ""),
        ))
    return panels


def _read_results(path: Path, problems: list[str], root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bad = 0
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"could not read {_rel(path, root)} ({exc}); its learning curve is left out.")
        return out
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict) and _is_number(obj.get("epoch")) and isinstance(obj.get("metrics"), dict):
            out.append(obj)
        else:
            bad += 1
    if bad:
        problems.append(f"{_rel(path, root)}: {bad} unreadable line(s) ignored in the learning curves.")
    return out


def curve_summaries(
    records: Sequence[RunRecord], metrics: Sequence[tuple[str, str]] | None = None,
    root: Path | None = None, problems: list[str] | None = None,
) -> dict[tuple[str, str], dict[str, dict[float, Summary]]]:
    """Mean and 95% CI over seeds per epoch, from each run's ``results.jsonl``.

    Args:
        records: finished runs.
        metrics: ``(recipe, metric)`` pairs to keep (``None``: all).
        root: folder that paths in messages are relative to.
        problems: list that unreadable files/lines are reported into.

    Returns:
        ``{(recipe, metric): {variant: {epoch: Summary over seeds}}}``.
    """
    keep = set(metrics) if metrics is not None else None
    problems = problems if problems is not None else []
    root = root or Path(".")
    acc: dict[tuple[str, str], dict[str, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        path = r.path / "results.jsonl"
        if not path.is_file():
            continue
        for obj in _read_results(path, problems, root):
            for metric, v in obj["metrics"].items():
                if _is_number(v) and (keep is None or (r.recipe, metric) in keep):
                    acc[(r.recipe, metric)][r.variant][float(obj["epoch"])].append(float(v))
    return {k: {var: {ep: summarize(vals) for ep, vals in sorted(eps.items())} for var, eps in sorted(by.items())}
            for k, by in acc.items()}


def _curve_panels(records: Sequence[RunRecord], table: Table, root: Path, problems: list[str],
                  notes: list[str]) -> list[Any]:
    from shiftlab.plots import Curve, CurvePanel

    keys = _plotted_metrics(table.rows)
    losses = [(rec, "train/loss") for rec in dict.fromkeys(k[0] for k in keys)]
    curves = curve_summaries(records, keys + losses, root, problems)
    wanted = [k for k in keys + losses if k in curves]
    if len(wanted) > MAX_PANELS:
        notes.append(f"curves.png shows the first {MAX_PANELS} of {len(wanted)} metrics.")
        wanted = wanted[:MAX_PANELS]
    multi = len({k[0] for k in wanted}) > 1
    panels = []
    for recipe, metric in wanted:
        scale = 100.0 if is_accuracy(metric) else 1.0
        lines = []
        for variant, per_epoch in curves[(recipe, metric)].items():
            eps = list(per_epoch)
            s = list(per_epoch.values())
            lines.append(Curve(variant, eps, [scale * x.mean for x in s],
                               [scale * x.low for x in s], [scale * x.high for x in s]))
        panels.append(CurvePanel(f"{recipe}: {metric}" if multi else metric, lines, "epoch",
                                 (_unit(metric) if scale == 100.0 else metric) + ", mean ± 95% CI"))
    return panels


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` produced.

    Attributes:
        markdown: the text of ``report.md``.
        table: the aggregated table.
        warnings: unfinished/corrupt runs and other problems (also in ``report.md``).
        files: the files written.
        n_finished: runs aggregated.
        n_unfinished: run folders without ``metrics.json``.
        n_corrupt: unreadable ``metrics.json`` files.
    """

    markdown: str
    table: Table
    warnings: list[str]
    files: list[Path]
    n_finished: int
    n_unfinished: int
    n_corrupt: int


def report(runs_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> ReportResult:
    """Aggregate the runs under ``runs_dir`` into ``report.md``, ``report.png`` and ``curves.png``.

    Args:
        runs_dir: a runs folder (any level of ``runs/<recipe>/<variant>/seed-<k>/``).
        out_dir: where to write (default: ``runs_dir``).

    Returns:
        The :class:`ReportResult`.

    Raises:
        ShiftlabError: if ``runs_dir`` is not a folder or holds no finished run.
    """
    found = scan(runs_dir)
    root = found.root
    if not found.records:
        detail = " ".join(found.warnings)
        raise ShiftlabError(
            f"No finished run (a folder with metrics.json) under {root}. "
            + (detail or "Run `shiftlab run RECIPE` or `shiftlab sweep RECIPE` first.")
        )
    table = aggregate(found.records)
    warnings = list(found.warnings) + table.warnings
    for w in table.warnings:
        log.warning("%s", w)
    notes: list[str] = []
    if found.backups:
        notes.append(f"{len(found.backups)} backup folder(s) left by --overwrite (*.old-*) were ignored.")

    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    plot_problems: list[str] = []
    try:
        from shiftlab.plots import bar_panels, curve_panels

        files.append(bar_panels(_bar_panels(table, notes), out / "report.png",
                                title="mean ± 95% CI (Student t over seeds; episodes for few-shot)"))
        panels = _curve_panels(found.records, table, root, plot_problems, notes)
        if panels:
            files.append(curve_panels(panels, out / "curves.png", title="learning curves: mean over seeds ± 95% CI"))
        else:
            notes.append("no results.jsonl with evaluations was found, so there is no curves.png.")
    except (ValueError, OSError, RuntimeError) as exc:  # a plot must never lose the table
        warnings.append(f"could not draw the plots: {type(exc).__name__}: {exc}")
        log.warning("could not draw the plots: %s", exc)
    warnings.extend(plot_problems)

    recipes = {r.recipe for r in found.records}
    variants = {(r.recipe, r.variant) for r in found.records}
    lines = [
        f"# shiftlab report: {root.name or root}",
        "",
        f"{len(found.records)} finished run(s): {len(recipes)} recipe(s), {len(variants)} variant(s)."
        + (f" Skipped: {len(found.unfinished)} unfinished, {len(found.corrupt)} corrupt (see Warnings)."
           if found.unfinished or found.corrupt else ""),
        "Mean ± 95% confidence interval of the mean (Student t; over seeds, or over the pooled test "
        "episodes for few-shot metrics). Accuracies and error rates in %.",
        "",
        to_markdown(table),
    ]
    if table.seconds:
        lines += ["", "## Run time", "", _seconds_markdown(table)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    markdown = "\n".join(lines) + "\n"
    files.insert(0, atomic_write_text(out / "report.md", markdown))
    return ReportResult(markdown, table, warnings, files, len(found.records), len(found.unfinished),
                        len(found.corrupt))


# ----------------------------------------------------------------------------- benchmarks

BENCHMARK_ROW_KEYS = ("task", "method", "metric", "mean", "ci95", "n", "seconds")


def package_version(name: str) -> str | None:
    """Installed version of a distribution (``None`` when absent).

    For ``shiftlab`` itself, falls back to ``shiftlab.__version__`` (e.g. when run from a
    source tree that is not installed).
    """
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "shiftlab":
            from shiftlab import __version__

            return __version__
        return None


def _cpu_model() -> str:
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm", "i386"):
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or "unknown"


def machine_info() -> dict[str, Any]:
    """The machine a benchmark ran on: platform, CPU, cores, Python, torch threads, GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch_threads"] = None
    return info


def _clean(v: Any) -> Any:
    """JSON-safe scalar: numpy/torch scalars -> Python, non-finite floats -> ``None``."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def merge_rows(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], Any],
) -> list[dict[str, Any]]:
    """The rows of an existing benchmark JSON that ``rows`` does not replace, then ``rows``.

    Benchmarks that are run piece by piece (one task, method or part per invocation) keep
    what earlier invocations measured: a row of ``path`` is dropped only when a new row has
    the same ``key(row)``.

    Args:
        path: the benchmark JSON (absent: nothing to keep).
        rows: the rows this invocation measured.
        key: what identifies a row, e.g. ``lambda r: (r["task_key"], r["method"])``.

    Raises:
        ValueError: if ``path`` exists but is not a benchmark JSON (it is left untouched).
    """
    p = Path(path)
    new = [dict(r) for r in rows]
    if not p.is_file():
        return new
    try:
        earlier = json.loads(p.read_text(encoding="utf-8")).get("rows", [])
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{p} is not a benchmark JSON ({exc}); move it away or pass another --out") from exc
    replaced = {key(r) for r in new}
    return [dict(r) for r in earlier if key(r) not in replaced] + new


def write_benchmark(
    path: str | os.PathLike[str],
    name: str,
    command: str,
    rows: Sequence[Mapping[str, Any]],
    ratios: Mapping[str, Mapping[str, Any]] | None = None,
    notes: str = "",
    extra_versions: Mapping[str, str | None] | None = None,
) -> Path:
    """Write a benchmark result JSON (date, machine and versions filled in), atomically.

    Args:
        path: output file, e.g. ``benchmarks/results/fewshot_easyfsl.json``.
        name: benchmark name.
        command: the command line that reproduces it.
        rows: one per (task, method, metric): ``task``, ``method``, ``metric`` (required),
            ``mean``, ``ci95`` (half-width), ``n``, ``seconds`` (``None`` when unknown); extra
            keys are kept. Accuracies (metric names ending with ``acc``) are fractions in [0, 1].
        ratios: timings measured side by side, ``{what: {"ours_s", "peer_s", "ratio", "note"}}``.
            ``ratio`` is ``peer_s / ours_s`` (> 1: shiftlab is faster) and is computed when absent.
        notes: free text (what differs between the two sides, caveats).
        extra_versions: versions of peer libraries (they live in their own virtual
            environments, so the script reports them), e.g. ``{"easyfsl": "1.5.0"}``.

    Returns:
        ``path``.

    Raises:
        ValueError: if a row lacks a required key, an accuracy is not a fraction, or a
            given ratio is not ``peer_s / ours_s``.
    """
    clean_rows = []
    for i, row in enumerate(rows):
        missing = [k for k in ("task", "method", "metric") if k not in row]
        if missing:
            raise ValueError(f"benchmark row {i} lacks {', '.join(missing)}: {dict(row)}")
        r = {k: _clean(row.get(k)) for k in BENCHMARK_ROW_KEYS}
        r.update({str(k): _clean(v) for k, v in row.items() if k not in BENCHMARK_ROW_KEYS})
        if is_accuracy(str(r["metric"])) and _is_number(r["mean"]) and not 0.0 <= r["mean"] <= 1.0:
            raise ValueError(
                f"benchmark row {i}: {r['metric']} = {r['mean']} is not a fraction in [0, 1] "
                "(accuracies are stored as fractions and shown in %)"
            )
        clean_rows.append(r)
    clean_ratios: dict[str, dict[str, Any]] = {}
    for what, spec in (ratios or {}).items():
        d = {str(k): _clean(v) for k, v in spec.items()}
        ours, peer = d.get("ours_s"), d.get("peer_s")
        if _is_number(ours) and _is_number(peer) and ours > 0:
            expected = peer / ours
            if d.get("ratio") is None:
                d["ratio"] = expected
            elif not math.isclose(float(d["ratio"]), expected, rel_tol=0.02):
                raise ValueError(
                    f"ratio {what!r} is {d['ratio']}, but peer_s / ours_s = {expected:.4g}; "
                    "ratios are defined as peer time over our time (> 1: shiftlab is faster)"
                )
        d.setdefault("ratio", None)
        d.setdefault("note", "")
        clean_ratios[str(what)] = d
    versions: dict[str, Any] = {p: package_version(p) for p in ("shiftlab", "torch", "torchvision", "numpy")}
    versions.update({str(k): v for k, v in (extra_versions or {}).items()})
    doc = {
        "name": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": _clean(machine_info()),
        "versions": versions,
        "rows": clean_rows,
        "ratios": clean_ratios,
        "notes": notes,
    }
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def render_benchmark(json_path: str | os.PathLike[str]) -> str:
    """Render a benchmark result JSON (see :func:`write_benchmark`) as Markdown.

    Raises:
        ShiftlabError: if the file cannot be read or is not a benchmark result.
    """
    p = Path(json_path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShiftlabError(f"Cannot read the benchmark result {p}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("rows", []), list):
        raise ShiftlabError(f"{p} is not a benchmark result (expected an object with a \"rows\" list).")
    return render_benchmark_doc(doc, p.stem)


def render_benchmark_doc(doc: Mapping[str, Any], default_name: str = "benchmark") -> str:
    """Render an already parsed benchmark result (the object :func:`write_benchmark` writes).

    Args:
        doc: the JSON object; ``rows`` (a list) and ``ratios`` are optional.
        default_name: the title when ``doc`` has no ``name``.
    """
    lines = [f"## Benchmark: {doc.get('name', default_name)}", ""]
    if doc.get("date"):
        lines.append(f"- date: {doc['date']}")
    if doc.get("command"):
        lines.append(f"- command: `{doc['command']}`")
    machine = doc.get("machine") or {}
    if isinstance(machine, dict) and machine:
        lines.append("- machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items() if v is not None))
    versions = doc.get("versions") or {}
    if isinstance(versions, dict) and versions:
        lines.append("- versions: " + ", ".join(f"{k} {v if v is not None else '(absent)'}" for k, v in versions.items()))
    rows = [r for r in doc.get("rows", []) if isinstance(r, dict)]
    if rows:
        extra = list(dict.fromkeys(k for r in rows for k in r if k not in BENCHMARK_ROW_KEYS))
        body = []
        for r in rows:
            acc = is_accuracy(str(r.get("metric", "")))
            mean = r.get("mean")
            fmt = _formatter(float(mean) if _is_number(mean) else math.nan, acc)
            body.append([
                str(r.get("task", "")), str(r.get("method", "")),
                f"{r.get('metric', '')} (%)" if acc else str(r.get("metric", "")),
                fmt(float(mean)) if _is_number(mean) else NA,
                f"± {fmt(float(r['ci95']))}" if _is_number(r.get("ci95")) else NA,
                str(r["n"]) if r.get("n") is not None else NA,
                fmt_num(r["seconds"], 1) if _is_number(r.get("seconds")) else NA,
                *[str(r.get(k, "")) for k in extra],
            ])
        lines += ["", _md_table(
            ["task", "method", "metric", "mean", "95% CI", "n", "seconds", *extra], body,
            ["l", "l", "l", "r", "r", "r", "r", *["l"] * len(extra)])]
    ratios = doc.get("ratios") or {}
    if isinstance(ratios, dict) and ratios:
        body = []
        for what, d in ratios.items():
            d = d if isinstance(d, dict) else {}
            ratio = d.get("ratio")
            body.append([
                str(what),
                fmt_g(d["ours_s"], 4) if _is_number(d.get("ours_s")) else NA,
                fmt_g(d["peer_s"], 4) if _is_number(d.get("peer_s")) else NA,
                f"{ratio:.2f}×" if _is_number(ratio) else NA,
                str(d.get("note", "") or ""),
            ])
        lines += ["", "Timings measured side by side (speed-up = peer time / our time; > 1: shiftlab is faster):",
                  "", _md_table(["what", "ours (s)", "peer (s)", "speed-up", "note"], body, ["l", "r", "r", "r", "l"])]
    if doc.get("notes"):
        lines += ["", str(doc["notes"])]
    return "\n".join(lines) + "\n"
