"""shiftlab report: aggregation over seeds/episodes, tolerance to bad runs, plots, benchmarks."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shiftlab import plots
from shiftlab.errors import ShiftlabError
from shiftlab.experiment.report import (
    aggregate,
    collect,
    merge_rows,
    render_benchmark,
    report,
    scan,
    write_benchmark,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECIPE = "uda-toy"
DANN = "method.name=dann-1a2b3c4d"
TARGET = "toy_m/test/acc"
SOURCE = "toy/test/acc"


def _write_run(
    root: Path,
    variant_dir: str,
    seed: int,
    target_acc: float,
    source_acc: float,
    method: str,
    recipe: str = RECIPE,
    episodes: dict[str, list[float]] | None = None,
    finished: bool = True,
) -> Path:
    run = root / recipe / variant_dir / f"seed-{seed}"
    run.mkdir(parents=True)
    overrides = {"method.name": method} if method != "erm" else {}
    (run / "config.yaml").write_text(
        f"name: {recipe}\nseed: {seed}\nmethod: {{name: {method}}}\nselection: last\n"
        "selection_rule: 'fixed schedule: the model after the last epoch'\n"
    )
    lines = []
    for epoch in range(3):
        frac = (epoch + 1) / 3
        lines.append({"epoch": epoch, "step": 100 * (epoch + 1), "elapsed_s": 1.0 + epoch,
                      "metrics": {"train/loss": 2.0 - epoch * 0.5 - seed * 0.01,
                                  SOURCE: source_acc * frac, TARGET: target_acc * frac}})
    (run / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if finished:
        metrics: dict[str, Any] = {
            "recipe": recipe,
            "variant": ",".join(f"{k}={v}" for k, v in overrides.items()) or "default",
            "overrides": overrides,
            "seed": seed,
            "method": method,
            "metrics": lines[-1]["metrics"],
            "seconds": 10.0 + seed,
            "selection": "fixed schedule: the model after the last epoch",
        }
        if episodes is not None:
            metrics["episodes"] = episodes
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    """2 variants × 3 seeds, one unfinished run, one corrupt metrics.json, one --overwrite backup."""
    root = tmp_path / "runs"
    for seed, (t, s) in enumerate([(0.50, 0.98), (0.52, 0.97), (0.54, 0.99)]):
        _write_run(root, "default", seed, t, s, "erm")
    for seed, (t, s) in enumerate([(0.60, 0.96), (0.62, 0.95), (0.67, 0.97)]):
        _write_run(root, DANN, seed, t, s, "dann")
    _write_run(root, DANN, 3, 0.9, 0.9, "dann", finished=False)
    bad = _write_run(root, "default", 3, 0.9, 0.9, "erm")
    (bad / "metrics.json").write_text('{"recipe": "uda-toy", "metrics": {"toy_m/te')  # torn write
    backup = _write_run(tmp_path / "elsewhere", "default", 0, 0.0, 0.0, "erm")
    backup.rename(root / RECIPE / "default" / "seed-0.old-20240101-120000")
    return root


def _table_rows(markdown: str) -> list[dict[str, str]]:
    """The first Markdown table in ``markdown`` as dicts keyed by its header."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| "))
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append(ln)
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in block[2:]]


def _find(rows: list[dict[str, str]], variant: str, metric: str) -> dict[str, str]:
    (row,) = [r for r in rows if r.get("variant") == variant and r.get("metric") == metric]
    return row


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_collect_skips_unfinished_corrupt_and_backup_runs(runs: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        records = collect(runs)
    assert len(records) == 6
    assert {(r.variant, r.seed) for r in records} == {(v, s) for v in ("default", "method.name=dann") for s in range(3)}
    found = scan(runs)
    assert [p.name for p in found.unfinished] == ["seed-3"] and found.unfinished[0].parent.name == DANN
    assert len(found.corrupt) == 1 and "invalid JSON" in found.corrupt[0][1]
    assert len(found.backups) == 1
    assert any("unfinished" in w and f"{DANN}/seed-3" in w for w in found.warnings)
    assert any("corrupt" in w and "default/seed-3" in w for w in found.warnings)
    assert "unfinished" in caplog.text and "corrupt" in caplog.text


def test_report_table_means_cis_and_files(runs: Path, tmp_path: Path) -> None:
    result = report(runs, tmp_path / "out")
    assert (result.n_finished, result.n_unfinished, result.n_corrupt) == (6, 1, 1)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md == result.markdown
    rows = _table_rows(md)
    # default: [50, 52, 54] -> mean 52, std 2, ci = 4.302653 * 2 / sqrt(3) = 4.968
    erm = _find(rows, "default", f"{TARGET} (%)")
    assert (erm["mean"], erm["std"], erm["95% CI"], erm["n"]) == ("52.00", "2.00", "± 4.97", "3 seeds")
    assert erm["recipe"] == RECIPE and erm["selection rule"].startswith("fixed schedule")
    # dann: [60, 62, 67] -> mean 63, std sqrt(13) = 3.606, ci = 4.302653 * 3.606 / sqrt(3) = 8.957
    dann = _find(rows, "method.name=dann", f"{TARGET} (%)")
    assert (dann["mean"], dann["std"], dann["95% CI"], dann["n"]) == ("63.00", "3.61", "± 8.96", "3 seeds")
    # non-accuracy metrics are not scaled: train/loss = 1 - 0.01 * seed -> 0.99 ± 4.302653 * 0.01 / sqrt(3)
    loss = _find(rows, "default", "train/loss")
    assert (loss["mean"], loss["std"], loss["95% CI"], loss["n"]) == ("0.9900", "0.0100", "± 0.0248", "3 seeds")
    # the backup run (accuracy 0) must not have been counted
    assert "## Warnings" in md and "unfinished" in md and "corrupt" in md
    assert "--overwrite" in md  # the backup note
    names = {p.name for p in result.files}
    assert names == {"report.md", "report.png", "curves.png"}
    for name in ("report.png", "curves.png"):
        assert _is_png(tmp_path / "out" / name), name
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_report_defaults_to_the_runs_folder_and_accepts_a_variant_folder(runs: Path) -> None:
    result = report(runs / RECIPE / DANN)
    assert (runs / RECIPE / DANN / "report.md").is_file() and _is_png(runs / RECIPE / DANN / "report.png")
    assert result.n_finished == 3 and result.n_unfinished == 1 and result.n_corrupt == 0


def test_single_seed_shows_na_and_mixed_garbage_never_crashes(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, "default", 0, 0.5, 0.9, "erm")
    for i, text in enumerate(['["a list"]', '{"metrics": 3}', "", '{"metrics": {}}']):
        d = root / RECIPE / "default" / f"seed-{10 + i}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(text)
    weird = _write_run(root, "default", 1, 0.6, 0.9, "erm")
    m = json.loads((weird / "metrics.json").read_text())
    m["metrics"]["note"] = "not a number"
    (weird / "metrics.json").write_text(json.dumps(m))
    (weird / "results.jsonl").write_text((weird / "results.jsonl").read_text() + '{"epoch": 3, "metr')
    empty_seed_dir = root / RECIPE / "default" / "seed-20"
    empty_seed_dir.mkdir()

    result = report(root)
    assert result.n_finished == 2 and result.n_corrupt == 4 and result.n_unfinished == 1
    assert any("'note'" in w for w in result.warnings)
    assert any("unreadable line" in w for w in result.warnings)
    row = _find(_table_rows(result.markdown), "default", f"{TARGET} (%)")
    assert row["mean"] == "55.00" and row["n"] == "2 seeds"

    one = tmp_path / "one"
    _write_run(one, "default", 0, 0.5, 0.9, "erm")
    row = _find(_table_rows(report(one).markdown), "default", f"{TARGET} (%)")
    assert (row["mean"], row["std"], row["95% CI"], row["n"]) == ("50.00", "n/a", "n/a", "1 seed")


def test_no_finished_run_is_a_clear_error(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs", "default", 0, 0.5, 0.9, "erm", finished=False)
    with pytest.raises(ShiftlabError, match="No finished run.*unfinished"):
        report(tmp_path / "runs")
    with pytest.raises(ShiftlabError, match="not a folder"):
        report(tmp_path / "missing")


def test_fewshot_ci_is_over_pooled_episodes(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    key = "omniglot/5w1s/acc"
    eps = {0: [1.0, 0.0, 1.0, 1.0, 0.8], 1: [0.6, 1.0, 1.0, 0.8, 0.8]}
    for seed, e in eps.items():
        run = _write_run(root, "default", seed, 0.5, 0.9, "protonet", recipe="fs-omniglot", episodes={key: e})
        m = json.loads((run / "metrics.json").read_text())
        m["metrics"][key] = float(np.mean(e))
        (run / "metrics.json").write_text(json.dumps(m))
    table = aggregate(collect(root))
    (row,) = [r for r in table.rows if r.metric == key]
    # pooled: mean 0.8, std = sqrt(0.88 / 9) = 0.312694, ci = 2.262157 * 0.312694 / sqrt(10) = 0.223687
    assert row.over == "episodes" and row.summary.n == 10 and row.seeds == (0, 1)
    assert row.summary.mean == pytest.approx(0.8)
    assert row.summary.std == pytest.approx(0.312694, abs=1e-5)
    assert row.summary.ci95 == pytest.approx(0.223687, abs=1e-5)
    md_row = _find(_table_rows(report(root).markdown), "method.name=protonet", f"{key} (%)")
    assert (md_row["mean"], md_row["std"], md_row["95% CI"]) == ("80.00", "31.27", "± 22.37")
    assert md_row["n"] == "10 episodes (2 seeds)"
    # metrics without episodes in the same runs stay over seeds
    (tgt,) = [r for r in table.rows if r.metric == TARGET]
    assert tgt.over == "seeds" and tgt.summary.n == 2


def test_benchmark_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks" / "results" / "fewshot.json"
    rows = [
        {"task": "omniglot 5w1s", "method": "protonet", "metric": "acc", "mean": np.float64(0.9812),
         "ci95": 0.0041, "n": 600, "seconds": 12.34, "library": "shiftlab"},
        {"task": "omniglot 5w1s", "method": "protonet", "metric": "acc", "mean": 0.9799,
         "ci95": float("nan"), "n": 1, "seconds": None, "library": "easyfsl"},
        {"task": "sir", "method": "bundle", "metric": "mse", "mean": 1.2345e-5, "ci95": 2e-6, "n": 5, "seconds": 3.0},
    ]
    ratios = {"episode training": {"ours_s": 2.0, "peer_s": 7.0, "note": "same backbone, 1 thread"}}
    written = write_benchmark(path, "fewshot-vs-easyfsl", "python benchmarks/fewshot.py", rows, ratios,
                              notes="Both sides use the same episodes.", extra_versions={"easyfsl": "1.5.0"})
    assert written == path
    doc = json.loads(path.read_text())
    assert set(doc) == {"name", "date", "command", "machine", "versions", "rows", "ratios", "notes"}
    assert doc["versions"]["easyfsl"] == "1.5.0" and doc["versions"]["shiftlab"] and doc["versions"]["numpy"]
    assert doc["machine"]["cpu_count"] >= 1 and "python" in doc["machine"]
    assert doc["rows"][1]["ci95"] is None and doc["rows"][0]["mean"] == 0.9812
    assert doc["ratios"]["episode training"]["ratio"] == pytest.approx(3.5)

    md = render_benchmark(path)
    assert "fewshot-vs-easyfsl" in md and "`python benchmarks/fewshot.py`" in md and "easyfsl 1.5.0" in md
    table = _table_rows(md)
    assert table[0]["mean"] == "98.12" and table[0]["95% CI"] == "± 0.41" and table[0]["library"] == "shiftlab"
    assert table[1]["95% CI"] == "n/a" and table[1]["seconds"] == "n/a"
    assert table[2]["mean"] == "1.234e-05" and table[2]["metric"] == "mse"
    assert "3.50×" in md and "same backbone" in md and "Both sides use the same episodes." in md

    with pytest.raises(ValueError, match="fraction"):
        write_benchmark(path, "x", "y", [{"task": "t", "method": "m", "metric": "acc", "mean": 98.1}])
    with pytest.raises(ValueError, match="peer time over our time"):
        write_benchmark(path, "x", "y", [], {"t": {"ours_s": 2.0, "peer_s": 7.0, "ratio": 0.2857}})
    with pytest.raises(ValueError, match="lacks method"):
        write_benchmark(path, "x", "y", [{"task": "t", "metric": "acc"}])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ShiftlabError, match="Cannot read"):
        render_benchmark(bad)


def test_merge_rows_keeps_earlier_rows_that_are_not_measured_again(tmp_path: Path) -> None:
    path = tmp_path / "uda.json"
    key = lambda r: (r["task_key"], r["method"])  # noqa: E731
    assert merge_rows(path, [{"task_key": "a", "method": "dann", "mean": 0.5}], key) == [
        {"task_key": "a", "method": "dann", "mean": 0.5}]
    first = [{"task": "a", "task_key": "a", "method": m, "metric": "acc", "mean": v}
             for m, v in (("dann", 0.5), ("mcc", 0.6))]
    write_benchmark(path, "uda", "cmd 1", first)
    merged = merge_rows(path, [{"task": "a", "task_key": "a", "method": "dann", "metric": "acc", "mean": 0.7},
                               {"task": "b", "task_key": "b", "method": "dann", "metric": "acc", "mean": 0.8}], key)
    assert [(r["task_key"], r["method"], r["mean"]) for r in merged] == [
        ("a", "mcc", 0.6), ("a", "dann", 0.7), ("b", "dann", 0.8)]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a benchmark JSON"):
        merge_rows(path, [], key)
    assert path.read_text() == "{not json"


def test_plot_helpers_write_valid_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.random((12, 3, 16, 16)).astype(np.float32)
    p = plots.image_grid(imgs, [f"img {i}" if i % 4 == 0 else "" for i in range(12)], tmp_path / "grid.png", ncols=4)
    assert _is_png(p)
    assert _is_png(plots.image_grid(rng.random((3, 1, 28, 28)), None, tmp_path / "grey.png"))
    with pytest.raises(ValueError, match="C, H, W"):
        plots.image_grid(rng.random((2, 2, 8, 8)), None, tmp_path / "bad.png")
    feats = rng.normal(size=(60, 2))
    p = plots.embedding_scatter(feats, np.repeat([0, 1], 30), rng.integers(0, 3, 60), tmp_path / "emb.png",
                                domain_names={0: "source", 1: "target"})
    assert _is_png(p)
    p = plots.bar_with_ci(["a", "b"], [50.0, 60.0], [2.0, math.nan], tmp_path / "bar.png", ylabel="acc (%)")
    assert _is_png(p)
    curve = plots.Curve("dann", [0, 1, 2], [0.1, 0.5, 0.7], [0.0, 0.4, 0.6], [0.2, 0.6, 0.8])
    assert _is_png(plots.curves_with_band([curve], tmp_path / "band.png", ylabel="acc"))
    recs = [{"epoch": e, "metrics": {"train/loss": 1.0 / (e + 1), "d/test/acc": 0.5 + 0.1 * e}} for e in range(3)]
    assert _is_png(plots.learning_curves(recs, tmp_path / "curves.png", title="one run"))
    assert not list(tmp_path.glob(".*.tmp"))
