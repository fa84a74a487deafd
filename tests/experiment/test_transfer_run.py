"""``kind: transfer`` runs: the grid, the learning curves, resume, shifts and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shiftlab.config import read_recipe_mapping
from shiftlab.errors import RecipeError
from shiftlab.experiment.dispatch import run_recipe
from shiftlab.experiment.run import RunExists, RunOptions
from shiftlab.experiment.transfer_run import (
    config_labels,
    demo_recipe,
    load_transfer_recipe,
    run_transfer,
)
from shiftlab.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _small(**extra) -> dict:
    """The demo recipe, smaller: 4 fine-tuning epochs, two strategies, re-selection every 2."""
    raw = demo_recipe()
    raw["name"] = "transfer-test"
    raw["finetune"]["epochs"] = 4
    raw["selection"] = {"strategies": {"random": {}, "entropy_most": {}}, "fractions": [0.25],
                        "reselect_every": [0, 2], "full": True}
    raw.update(extra)
    return raw


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    runs = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    m = run_transfer(_small(), {}, RunOptions(runs_dir=runs, progress=False), [0])[0]
    return runs, m


def test_grid_rows_metrics_and_plot(finished) -> None:
    runs, m = finished
    run = runs / "transfer-test" / "default" / "seed-0"
    labels = ["full", "random@0.25", "random@0.25/r2", "entropy_most@0.25", "entropy_most@0.25/r2"]
    assert [c.label for c in config_labels(load_transfer_recipe(_small())[0])] == labels
    rows = read_jsonl(run / "results.jsonl")
    assert len(rows) == len(labels) * 5  # epochs 0..4 for each configuration
    for lb in labels:
        mine = [r for r in rows if r["config"] == lb]
        assert [r["epoch"] for r in mine] == [0, 1, 2, 3, 4]
        assert mine[0]["metrics"][f"{lb}/acc"] == pytest.approx(m["metrics"]["source/acc"])  # epoch 0: the source
        assert all(f"{lb}/train_loss" in r["metrics"] for r in mine[1:])
    # the pool of digits_m train (1,347) at 25%: 337 images; full: all
    assert {r["k"] for r in rows if r["config"] == "random@0.25"} == {337}
    assert {r["k"] for r in rows if r["config"] == "full"} == {1347}
    # re-selection every 2 epochs selects before epochs 1 and 3 only
    resel = [r for r in rows if r["config"] == "entropy_most@0.25/r2"]
    assert [r["select_seconds"] > 0 for r in resel] == [True, False, False, True, False]
    assert all(r["select_seconds"] == 0 for r in rows if r["config"] == "full")
    assert (run / "curves.png").read_bytes()[:8] == PNG
    assert set(m["timing"]) == set(labels)
    assert all(m["metrics"][f"{lb}/select_overhead"] >= 0 for lb in labels[1:])


def test_fine_tuning_learns_the_shifted_target(finished) -> None:
    """digits -> digits_m: the source model is far below what fine-tuning on all 1,347 target
    images reaches in 4 epochs (measured 2026-12-02: 45.6% -> about 62%); 25% subsets learn too."""
    _, m = finished
    src = m["metrics"]["source/acc"]
    assert m["metrics"]["full/acc"] > src + 0.08
    assert m["metrics"]["random@0.25/acc"] > src + 0.02


def test_rerun_needs_resume_and_resume_reuses_finished_configs(finished, tmp_path: Path) -> None:
    runs, m = finished
    opts = RunOptions(runs_dir=runs, progress=False)
    with pytest.raises(RunExists, match="--resume"):
        run_transfer(_small(), {}, opts, [0])
    again = run_transfer(_small(), {}, RunOptions(runs_dir=runs, progress=False, resume=True), [0])[0]
    assert again == m


def test_an_interrupted_run_resumes_to_the_same_metrics(finished, tmp_path: Path) -> None:
    _, m = finished
    runs = tmp_path / "runs"
    torch.set_num_threads(1)
    run_transfer(_small(), {}, RunOptions(runs_dir=runs, progress=False), [0])
    run = runs / "transfer-test" / "default" / "seed-0"
    # simulate a kill during the 4th configuration: metrics.json absent, its rows half written
    (run / "metrics.json").unlink()
    rows = read_jsonl(run / "results.jsonl")
    keep = [r for r in rows if r["config"] not in ("entropy_most@0.25", "entropy_most@0.25/r2")]
    partial = [r for r in rows if r["config"] == "entropy_most@0.25"][:2]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep + partial))
    with pytest.raises(RunExists, match="--resume"):
        run_transfer(_small(), {}, RunOptions(runs_dir=runs, progress=False), [0])
    resumed = run_transfer(_small(), {}, RunOptions(runs_dir=runs, progress=False, resume=True), [0])[0]
    accs = {k: v for k, v in m["metrics"].items() if k.endswith("/acc")}
    assert {k: resumed["metrics"][k] for k in accs} == accs  # CPU: bit-identical (timings differ)
    assert len(read_jsonl(run / "results.jsonl")) == 5 * 5


def test_awgn_target_is_shifted_by_the_documented_amount(tmp_path: Path) -> None:
    raw = _small(name="transfer-awgn")
    raw["target"]["shift"] = {"name": "awgn", "severity": 5}  # sigma 0.5, clipped
    raw["selection"] = {"strategies": {"random": {}}, "fractions": [0.5], "full": False}
    raw["finetune"]["epochs"] = 1
    m = run_recipe(raw, {}, RunOptions(runs_dir=tmp_path, progress=False), [0])[0]
    cfg = next((tmp_path / "transfer-awgn").glob("*/seed-0/config.yaml")).read_text()
    import yaml

    change = yaml.safe_load(cfg)["resolved"]["data"]["shift_mean_abs_change"]
    # sigma 0.5 noise clipped to [0, 1] on mostly-dark digit photos: a mean absolute change of
    # about 0.3 (unclipped it would be 0.5 * sqrt(2 / pi) = 0.40)
    assert 0.2 < change < 0.4
    assert m["metrics"]["source/acc"] < 0.4  # the noise hurts the source model


def test_bad_recipes_name_the_key() -> None:
    cases = [
        ({"selection.fractions": [1.5]}, "fractions"),
        ({"selection.strategies.entropy_mots": {}}, "entropy_mots"),
        ({"selection.strategies.random.hparams": {"k": 1}}, "has no hyper-parameter"),
        ({"finetune.hparams.mode": "some"}, "mode"),
        ({"finetune.epoch": 3}, "epoch"),
        ({"target.shift": {"name": "fogg"}}, "fogg"),
    ]
    for ov, msg in cases:
        with pytest.raises(RecipeError, match=msg):
            load_transfer_recipe(_small(), ov)


def test_bundled_transfer_recipes_validate() -> None:
    paths = sorted((REPO / "recipes" / "transfer").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        recipe, _ = load_transfer_recipe(read_recipe_mapping(path))
        assert config_labels(recipe), path


def test_embedding_shift_scenario_end_to_end(tmp_path: Path) -> None:
    raw = _small(name="transfer-emb")
    raw["target"]["shift"] = {"name": "embedding_shift", "level": 2.0}
    raw["autoencoder"] = {"width": 8, "epochs": 2, "batch_size": 64}
    raw["selection"] = {"strategies": {"kcenter": {}}, "fractions": [0.5], "full": False}
    raw["finetune"]["epochs"] = 1
    opts = RunOptions(runs_dir=tmp_path, progress=False)
    m = run_transfer(raw, {}, opts, [0])[0]
    # two epochs of a tiny autoencoder: a rough reconstruction (quality is tested in test_embedding_shift)
    assert 0 < m["metrics"]["autoencoder/recon_mse"] < 0.2
    cache = list((tmp_path / "transfer-emb" / "_cache").glob("autoencoder-*.json"))
    assert len(cache) == 1
    m2 = run_transfer(raw, {}, opts, [1])[0]  # another seed: the same cached autoencoder
    assert m2["metrics"]["autoencoder/recon_mse"] == m["metrics"]["autoencoder/recon_mse"]
    assert len(list((tmp_path / "transfer-emb" / "_cache").glob("autoencoder-*.json"))) == 1


def test_cifar10_embedding_shift_recipe_on_a_fixture(shared_data: Path, tmp_path: Path, write_cifar) -> None:
    weights = shared_data / "pretrained" / "resnet20-12fca82f.th"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    write_cifar(tmp_path / "data", per_batch=40)  # 200 train, 40 test images
    ov = {
        "source.backbone.args.pretrained": str(weights),
        "target.start": 100, "target.limit": 100, "target.val.limit": 40,
        "autoencoder.limit": 100, "autoencoder.epochs": 1, "autoencoder.batch_size": 50, "autoencoder.width": 8,
        "finetune.epochs": 1, "finetune.batch_size": 25,
        "selection.strategies": {"random": {}, "entropy_most": {}}, "selection.reselect_every": [0],
    }
    opts = RunOptions(runs_dir=tmp_path / "runs", data_dir=str(tmp_path / "data"), progress=False)
    m = run_recipe(REPO / "recipes" / "transfer" / "cifar10_embedding_shift.yaml", ov, opts, [0])[0]
    assert m["source"]["origin"] == "pretrained"
    assert 0.0 <= m["metrics"]["source/acc"] <= 1.0  # the checkpoint on the shifted fixture
    assert {"full/acc", "random@0.25/acc", "entropy_most@0.25/acc"} <= set(m["metrics"])


def test_a_configuration_gives_the_same_result_in_another_grid(finished, tmp_path: Path) -> None:
    _, m = finished
    raw = _small()
    raw["selection"] = {"strategies": {"entropy_most": {}}, "fractions": [0.25], "reselect_every": [2],
                        "full": False}
    torch.set_num_threads(1)
    alone = run_transfer(raw, {}, RunOptions(runs_dir=tmp_path, progress=False), [0])[0]
    assert alone["metrics"]["entropy_most@0.25/r2/acc"] == m["metrics"]["entropy_most@0.25/r2/acc"]


def test_a_run_from_before_score_backend_resumes_with_the_old_scoring(finished, tmp_path: Path) -> None:
    """Runs started before the traced scorer wrote no ``score_backend`` and scored 1,000 images
    per pass: the new defaults are refused naming ``selection``; the old scoring resumes."""
    import shutil

    import yaml

    runs, m = finished
    old_runs = tmp_path / "runs"
    shutil.copytree(runs, old_runs)
    cfg_path = old_runs / "transfer-test" / "default" / "seed-0" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    del cfg["selection"]["score_backend"]
    cfg["selection"]["score_batch"] = 1000
    cfg_path.write_text(yaml.safe_dump(cfg))
    (cfg_path.parent / "metrics.json").unlink()  # interrupted after its last configuration
    with pytest.raises(RunExists, match="selection"):
        run_transfer(_small(), {}, RunOptions(runs_dir=old_runs, progress=False, resume=True), [0])
    raw = _small()
    raw["selection"].update(score_batch=1000, score_backend="eager")
    again = run_transfer(raw, {}, RunOptions(runs_dir=old_runs, progress=False, resume=True), [0])[0]
    assert again["metrics"] == m["metrics"]
