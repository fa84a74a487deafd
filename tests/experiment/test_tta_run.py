"""``kind: tta`` recipes: the run folder on embedded digits, resume with the cached source
model, checkpoint loading, recipe validation, and CIFAR-10-C on a tiny CIFAR-format fixture
with the real akamaster ResNet-20 weights."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shiftlab.config import read_recipe_mapping
from shiftlab.errors import RecipeError
from shiftlab.experiment import tta_run
from shiftlab.experiment.dispatch import run_recipe
from shiftlab.experiment.report import report
from shiftlab.experiment.run import RunExists, RunOptions
from shiftlab.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small batches gain nothing from a second thread (and stall when the other core is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(**methods: Any) -> dict[str, Any]:
    return {
        "kind": "tta",
        "name": "tta-test",
        "source": {"dataset": "digits", "backbone": {"name": "dann_cnn", "args": {"norm": True, "hidden": 64}},
                   "train": {"epochs": 4, "batch_size": 64}},
        "data": {"image_size": 16, "channels": 1, "fit": "resize"},
        "eval": {"dataset": {"name": "digits"}, "corruptions": ["contrast", "gaussian_noise"], "severities": [5],
                 "natural": [{"name": "digits_m"}]},
        "methods": methods or {
            "source": {},
            "norm": {},
            "tent": {"optimizer": {"name": "adam", "lr": 0.001}},
            "memo": {"hparams": {"n_augmentations": 8, "hflip": False, "crop_padding": 2}, "protocol": "single",
                     "limit": 20},
            "cotta": {"hparams": {"hflip": False, "n_augmentations": 2}, "protocol": "continual"},
        },
        "protocol": "online",
        "batch_size": 64,
        "seeds": [0],
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("tta-runs")
    metrics = run_recipe(_recipe(), {}, RunOptions(runs_dir=runs, progress=False))[0]
    torch.set_num_threads(before)
    return runs, metrics


def test_run_folder_has_the_documented_files(finished: tuple[Path, dict[str, Any]]) -> None:
    runs, metrics = finished
    out = runs / "tta-test" / "default" / "seed-0"
    for f in ("config.yaml", "results.jsonl", "metrics.json", "errors.png", "source_model.safetensors",
              "source_model.json"):
        assert (out / f).is_file(), f
    assert (out / "errors.png").read_bytes()[:8] == PNG
    rows = read_jsonl(out / "results.jsonl")
    labels = ["source", "norm", "tent", "memo", "cotta"]
    segments = ["contrast-5", "gaussian_noise-5", "digits_m-test"]
    assert sorted((r["method"], r["segment"]) for r in rows) == sorted((m, s) for m in labels for s in segments)
    by = {(r["method"], r["segment"]): r for r in rows}
    assert by[("memo", "contrast-5")]["n"] == 20 and by[("memo", "contrast-5")]["batch_size"] == 1
    assert by[("tent", "contrast-5")]["n"] == 450 and by[("cotta", "digits_m-test")]["protocol"] == "continual"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    m = metrics["metrics"]
    assert m["clean/acc"] > 0.9  # a real source model
    for lb in labels:
        assert m[f"{lb}/err"] == pytest.approx((m[f"per_shift/contrast-5/{lb}/err"]
                                                + m[f"per_shift/gaussian_noise-5/{lb}/err"]) / 2)
        assert 0.0 <= m[f"{lb}/digits_m-test/err"] <= 1.0
    assert metrics["per_shift"]["tent"]["contrast-5"] == m["per_shift/contrast-5/tent/err"]
    assert metrics["source"]["origin"] == "trained"
    # a strong corruption: test-batch statistics (norm) and Tent recover most of the accuracy
    src = m["per_shift/contrast-5/source/err"]
    assert src > 0.5
    assert m["per_shift/contrast-5/norm/err"] < src - 0.4
    assert m["per_shift/contrast-5/tent/err"] < src - 0.4
    assert m["tent/err"] < 0.5 * m["source/err"]
    cfg = (out / "config.yaml").read_text()
    assert "paper default" in cfg and "optimizer_from: recipe" in cfg  # what each method used


def test_report_renders_a_tta_run(finished: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    runs, _ = finished
    res = report(runs / "tta-test", tmp_path)
    assert "| tent/err (%) |" in res.markdown and "per_shift/contrast-5/tent/err (%)" in res.markdown
    # the per-method means come before the per-shift detail
    assert res.markdown.index("tent/err (%)") < res.markdown.index("per_shift/")
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG
    assert not [w for w in res.warnings if "unreadable" in w]


def _record_protocol_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the runner's ``run_protocol``; the returned list gets the class name of every
    method it runs."""
    ran: list[str] = []
    real = tta_run.run_protocol

    def counting(method: Any, stream: Any, protocol: str = "online", batch_size: int = 64) -> Any:
        ran.append(type(method).__name__)
        return real(method, stream, protocol, batch_size)

    monkeypatch.setattr(tta_run, "run_protocol", counting)
    return ran


def test_resume_reuses_the_cached_source_model(finished: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    runs, metrics = finished
    import shutil

    shutil.copytree(runs / "tta-test", tmp_path / "tta-test")
    out = tmp_path / "tta-test" / "default" / "seed-0"
    (out / "metrics.json").unlink()  # an interrupted run: the source model and some rows are there
    rows = read_jsonl(out / "results.jsonl")
    kept = [r for r in rows if r["method"] in ("source", "tent")]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(RunExists, match="--resume"):
        run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, progress=False))

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the source model was trained again")

    monkeypatch.setattr(tta_run, "_train_erm", no_training)
    ran = _record_protocol_runs(monkeypatch)
    again = run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))[0]
    assert again["source"]["origin"] == "cached"
    assert "Tent" not in ran  # its rows were kept
    for k, v in metrics["metrics"].items():
        assert again["metrics"][k] == pytest.approx(v, abs=1e-9), k
    # a finished run is kept as it is
    assert run_recipe(_recipe(), {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))[0] == again


def test_resume_with_an_added_method_runs_only_that_method(finished: tuple[Path, dict[str, Any]],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs, metrics = finished
    import shutil

    shutil.copytree(runs / "tta-test", tmp_path / "tta-test")
    rec = _recipe()
    rec["methods"]["shot"] = {"optimizer": {"name": "adam", "lr": 0.001}}
    ran = _record_protocol_runs(monkeypatch)
    again = run_recipe(rec, {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))[0]
    # the finished seed ran only the new method (and the source model's clean-accuracy pass)
    assert set(ran) == {"Shot", "Source"} and ran.count("Source") == 1
    for k, v in metrics["metrics"].items():
        assert again["metrics"][k] == pytest.approx(v, abs=1e-9), k
    assert 0.0 <= again["metrics"]["shot/err"] <= 1.0
    out = tmp_path / "tta-test" / "default" / "seed-0"
    assert json.loads((out / "metrics.json").read_text()) == again
    assert "shot" in (out / "config.yaml").read_text()
    # changing a method that already ran is still refused
    rec["methods"]["tent"] = {"optimizer": {"name": "adam", "lr": 0.01}}
    (out / "metrics.json").unlink()
    with pytest.raises(RunExists, match="recipe changed"):
        run_recipe(rec, {}, RunOptions(runs_dir=tmp_path, resume=True, progress=False))


def test_source_checkpoint_is_loaded(finished: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    runs, metrics = finished
    rec = _recipe(source={}, norm={})
    rec["source"] = {"checkpoint": str(runs / "tta-test" / "default" / "seed-0" / "source_model.json"),
                     "backbone": rec["source"]["backbone"]}
    m = run_recipe(rec, {}, RunOptions(runs_dir=tmp_path, progress=False))[0]
    assert m["source"]["origin"] == "checkpoint"
    assert not (tmp_path / "tta-test" / "default" / "seed-0" / "source_model.json").exists()
    for k in ("clean/acc", "source/err", "norm/err", "source/digits_m-test/err"):
        assert m["metrics"][k] == pytest.approx(metrics["metrics"][k], abs=1e-9)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"eval.corruption": "all"}, "unknown key 'eval.corruption' (allowed here: dataset, corruptions"),
        ({"methods.tent.lr": 0.1}, "unknown key 'methods.tent.lr' (allowed here: method, hparams, optimizer"),
        ({"eval.corruptions": ["fogg"]}, "unknown shift(s) fogg"),
        ({"eval.severities": [6]}, "severities must be"),
        ({"methods.tent.hparams.stepz": 2}, "methods.tent.method.hparams: 'tent' has no hyper-parameter(s) stepz"),
        ({"methods.dann": {}}, "'dann' is not a test-time method"),
        ({"methods.foo": {}}, "unknown method 'foo'"),
        ({"protocol": "sometimes"}, "'protocol'"),
    ],
)
def test_bad_recipe_is_a_clear_error(override: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as e:
        run_recipe(_recipe(), override, RunOptions(runs_dir=tmp_path, progress=False))
    assert message in str(e.value)
    assert not (tmp_path / "tta-test").exists()


def test_bundled_tta_recipes_validate() -> None:
    for path in sorted((REPO / "recipes" / "tta").glob("*.yaml")):
        raw = read_recipe_mapping(path)
        if raw.get("kind") != "tta":
            continue
        recipe, _ = tta_run.load_tta_recipe(raw, ["eval.severities=[1,2,3,4,5]"])
        assert recipe.active_methods(), path


def _write_cifar10(root: Path, n: int = 16, seed: int = 0) -> np.ndarray:
    """A tiny CIFAR-10 test split in torchvision's pickle format (smooth random images)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    coarse = rng.integers(0, 256, (n, 3, 4, 4)).astype(np.float64)
    imgs = np.kron(coarse, np.ones((1, 1, 8, 8))).astype(np.uint8)  # 8x8 blocks: structure, not pixel noise
    labels = rng.integers(0, 10, n).tolist()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": imgs.reshape(n, 3072), "labels": labels,
                                                      "batch_label": "testing batch 1 of 1"}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return np.array(labels)


def test_cifar10_c_recipe_on_a_fixture(shared_data: Path, tmp_path: Path) -> None:
    weights = shared_data / "pretrained" / "resnet20-12fca82f.th"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    data = tmp_path / "data"
    _write_cifar10(data)
    overrides = {
        "source.backbone.args.pretrained": str(weights),
        "methods.memo.limit": 2,
        "methods.memo.hparams.n_augmentations": 4,
        "methods.cotta.hparams.n_augmentations": 2,
        "methods.eata.fisher_samples": 16,
    }
    opts = RunOptions(runs_dir=tmp_path / "runs", data_dir=str(data), progress=False)
    m = run_recipe(REPO / "recipes" / "tta" / "cifar10_c.yaml", overrides, opts, [0])[0]
    assert m["source"]["origin"] == "pretrained"
    assert 0.0 <= m["metrics"]["clean/acc"] <= 1.0  # the checkpoint's accuracy on the fixture
    labels = ["source", "norm", "tent", "memo", "eata", "sar", "cotta"]
    assert all(f"{lb}/err" in m["metrics"] for lb in labels)
    assert len(m["per_shift"]["tent"]) == 15
    run = next((tmp_path / "runs" / "tta-cifar10_c").glob("*/seed-0"))
    assert len(read_jsonl(run / "results.jsonl")) == 15 * len(m["per_shift"])  # labels + source_memo_subset
    assert (run / "errors.png").read_bytes()[:8] == PNG
    assert not (run / "source_model.json").exists()  # nothing trained, nothing cached
