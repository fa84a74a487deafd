"""``kind: ssl`` recipes: the five transfer settings end to end on embedded digits, the run
folder, resume with the cached pre-trained models and the SSL checkpoint, errors (bad keys,
NaN loss), the label draw, and the mini-ImageNet -> Office-Home recipe on tiny ImageFolder
fixtures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shiftlab.config import read_recipe_mapping
from shiftlab.data.sources import load_dataset
from shiftlab.errors import RecipeError, TrainingError
from shiftlab.experiment import ssl_run
from shiftlab.experiment.dispatch import run_recipe
from shiftlab.experiment.report import report
from shiftlab.experiment.run import RunExists, RunInterrupted, RunOptions
from shiftlab.io import read_jsonl
from shiftlab.methods.ssl.common import SslMethod

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
SETTINGS = ["A", "B", "C", "D", "E"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small batches gain nothing from a second thread (and stall when the other core is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe() -> dict[str, Any]:
    """Tiny budgets: 2 SSL epochs of 8 steps, 1 supervised epoch, 40 fine-tuning epochs (80 steps)."""
    return {
        "kind": "ssl",
        "name": "ssl-test",
        "data": {"image_size": 16, "channels": 1, "fit": "resize"},
        "source": {"dataset": "digits", "split": "train"},
        "target": {"dataset": "digits", "split": "test", "labels_per_class": 5, "eval_split": "test"},
        "backbone": {"name": "lenet"},
        "ssl": {"method": "byol", "hparams": {"projection_hidden": 128, "predictor_hidden": 128,
                                              "projection_dim": 32, "base_momentum": 0.99},
                "epochs": 2, "batch_size": 32, "max_steps_per_epoch": 8, "optimizer": {"name": "adam", "lr": 0.002},
                "augment": "byol_digits"},
        "supervised": {"epochs": 1, "batch_size": 64},
        "finetune": {"epochs": 40, "batch_size": 25},
        "probe": {"steps": 100},
        "monitor": {"dataset": "digits", "split": "test", "bank_per_class": 5, "query": 200},
        "seeds": [0],
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("ssl-runs")
    metrics = run_recipe(_recipe(), {}, RunOptions(runs_dir=runs, progress=False))[0]
    torch.set_num_threads(before)
    return runs, metrics


def test_run_folder_and_metrics(finished: tuple[Path, dict[str, Any]]) -> None:
    runs, metrics = finished
    out = runs / "ssl-test" / "default" / "seed-0"
    for f in ("config.yaml", "results.jsonl", "metrics.json", "settings.png", "knn.png",
              "ssl_model.safetensors", "ssl_model.json", "supervised_model.safetensors", "supervised_model.json"):
        assert (out / f).is_file(), f
    assert not (out / "ssl_checkpoint.json").exists()  # removed once the model is cached
    assert (out / "settings.png").read_bytes()[:8] == PNG and (out / "knn.png").read_bytes()[:8] == PNG
    assert json.loads((out / "metrics.json").read_text()) == metrics
    m = metrics["metrics"]
    for s in SETTINGS:
        assert 0.0 <= m[f"{s}/acc"] <= 1.0
    # 50 labelled test digits (5 per class); the other 400 are scored
    assert m["target/labels_per_class"] == 5 and m["target/labelled"] == 50
    split = metrics["target_split"]
    assert split["eval_images"] == 400 and len(split["labelled_indices"]) == 50
    y = load_dataset("digits", "test").y
    assert torch.bincount(y[split["labelled_indices"]], minlength=10).tolist() == [5] * 10
    # real learning with these budgets: every setting far above chance (10%)
    assert min(m[f"{s}/acc"] for s in SETTINGS) > 0.5  # measured 0.64-0.72
    assert m["D/acc"] > 0.6  # supervised features + probe on 50 labels
    curve = metrics["knn_curve"]
    assert [c["epoch"] for c in curve] == [0, 1, 2] and [c["step"] for c in curve] == [0, 8, 16]
    assert m["ssl/init_knn_acc"] == curve[0]["acc"] and m["ssl/knn_acc"] == curve[-1]["acc"]
    assert 0.2 < m["ssl/init_knn_acc"] < 1.0 and 0.0 <= m["ssl/probe_acc"] <= 1.0
    assert 0.0 <= m["supervised/knn_acc"] <= 1.0
    assert m["ssl/images_per_s"] > 50 and m["ssl/seconds"] > 0 and 0.0 < m["ssl/final_loss"] < 8.0
    assert metrics["pretraining"]["ssl"]["images"] == 2 * 8 * 32
    rows = read_jsonl(out / "results.jsonl")
    ssl_rows = [r for r in rows if r["stage"] == "ssl"]
    assert [r["epoch"] for r in ssl_rows] == [0, 1, 2] and "train/loss" in ssl_rows[-1]["metrics"]
    transfer = {r["setting"]: r for r in rows if r["stage"] == "transfer"}
    assert sorted(transfer) == SETTINGS
    assert all(transfer[s]["metrics"][f"{s}/acc"] == m[f"{s}/acc"] and transfer[s]["n"] == 400 for s in SETTINGS)
    cfg = (out / "config.yaml").read_text()
    assert "base_momentum: 0.99" in cfg and "joint_forward: true" in cfg  # resolved hyper-parameters


def test_report_aggregates_the_settings(finished: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    runs, _ = finished
    res = report(runs / "ssl-test", tmp_path)
    for s in SETTINGS:
        assert f"| {s}/acc (%) |" in res.markdown
    assert "ssl/knn_acc (%)" in res.markdown and "ssl/images_per_s" in res.markdown
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG
    assert not [w for w in res.warnings if "ignored" in w]  # every metric is a number


def test_resume_reuses_the_cached_pretrained_models(finished: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runs, metrics = finished
    shutil.copytree(runs / "ssl-test", tmp_path / "ssl-test")
    out = tmp_path / "ssl-test" / "default" / "seed-0"
    (out / "metrics.json").unlink()  # interrupted after setting C: D and E are missing
    rows = read_jsonl(out / "results.jsonl")
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("setting") not in ("D", "E")))
    with pytest.raises(RunExists, match="--resume"):
        run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, progress=False))

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained again")

    monkeypatch.setattr(SslMethod, "update", no_training)
    monkeypatch.setattr(ssl_run, "_train_erm", no_training)  # supervised pre-training and fine-tuning
    again = run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))[0]
    assert again["pretraining"]["ssl"]["origin"] == "cached"
    assert again["pretraining"]["supervised"]["origin"] == "cached"
    assert again["metrics"] == metrics["metrics"]  # D and E recomputed, bit for bit
    assert again["knn_curve"] == metrics["knn_curve"]
    assert len(read_jsonl(out / "results.jsonl")) == len(rows)
    # a finished run is kept as it is; --overwrite moves it aside
    assert run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))[0] == again
    with pytest.raises(RunExists, match="already finished"):
        run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, progress=False))


def test_killed_pretraining_resumes_from_its_checkpoint(finished: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the second SSL epoch: RunInterrupted, the epoch-1 checkpoint is there, and
    ``--resume`` ends with the metrics of the uninterrupted run (CPU, bit for bit)."""
    _, metrics = finished
    real = SslMethod.update
    calls = [0]

    def interrupt(self: SslMethod, batch: Any) -> dict[str, float]:
        calls[0] += 1
        if calls[0] == 11:  # epoch 2, step 3
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(SslMethod, "update", interrupt)
    with pytest.raises(RunInterrupted, match="--resume"):
        run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, progress=False))
    out = tmp_path / "ssl-test" / "default" / "seed-0"
    assert (out / "ssl_checkpoint.json").is_file() and not (out / "ssl_model.json").exists()
    monkeypatch.setattr(SslMethod, "update", real)
    again = run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))[0]
    assert again["knn_curve"] == metrics["knn_curve"]
    for k, v in metrics["metrics"].items():
        if k not in ("ssl/images_per_s", "ssl/seconds", "supervised/seconds"):
            assert again["metrics"][k] == v, k
    assert [r["epoch"] for r in read_jsonl(out / "results.jsonl") if r["stage"] == "ssl"] == [0, 1, 2]


def test_nan_loss_is_a_training_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SslMethod, "update", lambda self, batch: {"loss": float("nan")})
    with pytest.raises(TrainingError, match=r"byol loss became loss=nan at epoch 1, step 1.*ssl.optimizer.lr"):
        run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, progress=False))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ssl.epochz": 3}, "unknown key 'ssl.epochz' (allowed here: method, hparams, epochs"),
        ({"target.labels": 3}, "unknown key 'target.labels' (allowed here: dataset, split, labels_per_class"),
        ({"settings": ["A", "F"]}, "'settings.1'"),
        ({"ssl.hparams.tauu": 0.9}, "ssl.method.hparams: 'byol' has no hyper-parameter(s) tauu"),
        ({"ssl.method": "dann"}, "'dann' is not a self-supervised method; use one of byol, simclr, simsiam"),
        ({"ssl.augment": "strong"}, "'ssl.augment'"),
    ],
)
def test_bad_recipe_is_a_recipe_error_naming_the_key(override: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as e:
        run_recipe(_recipe(), override, RunOptions(runs_dir=tmp_path, progress=False))
    assert message in str(e.value)
    assert not (tmp_path / "ssl-test").exists()


def test_bundled_ssl_recipes_validate() -> None:
    files = sorted((REPO / "recipes" / "ssl").glob("*.yaml"))
    assert {f.name for f in files} >= {"mnist_to_usps.yaml", "mnistm_to_mnistm_real.yaml",
                                       "miniimagenet_to_officehome.yaml"}
    for path in files:
        recipe, _ = ssl_run.load_ssl_recipe(read_recipe_mapping(path), ["ssl.method=simclr", "ssl.hparams={}"])
        assert recipe.settings == SETTINGS, path
        ssl_run.load_ssl_recipe(read_recipe_mapping(path))


def test_labelled_draw_is_seeded_and_per_class() -> None:
    data = load_dataset("digits", "test")
    a, rest = ssl_run.draw_labelled(data, 10, torch.Generator().manual_seed(3))
    b, _ = ssl_run.draw_labelled(data, 10, torch.Generator().manual_seed(3))
    c, _ = ssl_run.draw_labelled(data, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(data.y[a], minlength=10).tolist() == [10] * 10
    assert len(rest) == len(data) - 100 and not set(a.tolist()) & set(rest.tolist())
    everything, none = ssl_run.draw_labelled(data, None, torch.Generator().manual_seed(0))
    assert len(everything) == len(data) and len(none) == 0


def test_mnistm_recipe_scores_the_rest_of_the_real_test_split(shared_data: Path) -> None:
    """The real MNIST-M test split gives both the 100 labelled images and (the other 8,901)
    the evaluation images."""
    recipe, _ = ssl_run.load_ssl_recipe(read_recipe_mapping(REPO / "recipes" / "ssl" / "mnistm_to_mnistm_real.yaml"))
    target = load_dataset("mnist_m", "test", data_dir=shared_data)
    data = ssl_run.SslData(source=target, target=target, target_eval=None, monitor=None)
    labelled, evalset, info = ssl_run._target_sets(recipe, data, seed=0)
    assert len(target) == 9001 and len(labelled) == 100 and len(evalset) == 8901
    assert info["eval"].startswith("the rest of mnist_m/test")
    assert torch.bincount(labelled.y, minlength=10).tolist() == [10] * 10
    others = ~torch.isin(torch.arange(len(target)), torch.tensor(info["labelled_indices"]))
    assert torch.equal(evalset.x, target.x[others]) and torch.equal(evalset.y, target.y[others])
    _, _, other = ssl_run._target_sets(recipe, data, seed=1)
    assert other["labelled_sha1"] != info["labelled_sha1"]


def _write_folder(root: Path, splits: dict[str, int], classes: list[str], size: int, seed: int) -> None:
    """An ImageFolder tree ``root/<split>/<class>/<i>.png`` of smooth random RGB images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for k, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                base = np.kron(rng.integers(0, 256, (3, 3, 3)), np.ones((size // 3 + 1, size // 3 + 1, 1)))[:size, :size]
                base[..., k % 3] = 255 * (k % 2)  # a class cue
                Image.fromarray(base.astype(np.uint8)).save(d / f"{i}.png")


def test_miniimagenet_to_officehome_recipe_on_imagefolder_fixtures(tmp_path: Path) -> None:
    mini, office = tmp_path / "mini-imagenet", tmp_path / "office_home"
    _write_folder(mini, {"train": 8}, [f"n0{i}" for i in range(5)], 24, 0)
    _write_folder(office, {"train": 4, "val": 3}, ["Alarm_Clock", "Backpack", "Batteries", "Bed"], 30, 1)
    overrides = {
        "source.dataset": f"folder:{mini}",
        "target.dataset": f"folder:{office}",
        "monitor.dataset": f"folder:{office}",
        "monitor.bank_per_class": 1, "monitor.query": 8,
        "data.image_size": 16,
        "backbone.name": "lenet",
        "ssl.hparams": {"projection_hidden": 32, "predictor_hidden": 32, "projection_dim": 16},
        "ssl.epochs": 2, "ssl.batch_size": 8,
        "supervised.epochs": 1, "supervised.batch_size": 8,
        "finetune.epochs": 2, "finetune.batch_size": 8,
        "probe.steps": 20,
        "device": "cpu",
    }
    opts = RunOptions(runs_dir=tmp_path / "runs", progress=False)
    m = run_recipe(REPO / "recipes" / "ssl" / "miniimagenet_to_officehome.yaml", overrides, opts)[0]
    for s in SETTINGS:
        assert 0.0 <= m["metrics"][f"{s}/acc"] <= 1.0
    assert m["metrics"]["target/labelled"] == 16  # every labelled training image (labels_per_class: null)
    assert m["target_split"]["eval"] == f"folder:{office}/val" and m["target_split"]["eval_images"] == 12
    assert m["pretraining"]["ssl"]["images"] == 2 * 5 * 8  # 40 source images, 5 steps of 8 per epoch
    assert len(m["knn_curve"]) == 2  # at initialisation and after the last epoch (every: 5)
    run = next((tmp_path / "runs" / "ssl-miniimagenet_to_officehome").glob("*/seed-0"))
    assert (run / "settings.png").read_bytes()[:8] == PNG
