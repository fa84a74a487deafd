"""The engine: run folders, determinism, resume, NaN and interrupt handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shiftlab.config import load_recipe
from shiftlab.errors import DataError, ShiftlabError, TrainingError
from shiftlab.experiment.run import Experiment, RunExists, RunInterrupted, RunOptions

TINY = {
    "name": "tiny",
    "data": {
        "source": "digits",
        "channels": 1,
        "image_size": 28,
        "eval": [{"name": "digits", "split": "test"}, {"name": "digits_m", "split": "test"}],
    },
    "backbone": {"name": "mlp", "args": {"hidden": [64]}},
    "method": {"name": "erm"},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.003},
    "seeds": [0],
}


def _exp(tmp_path: Path, overrides: list[str] | None = None, **opts: object) -> Experiment:
    rec, ov = load_recipe(TINY, overrides or [])
    return Experiment(rec, ov, RunOptions(runs_dir=tmp_path / "runs", progress=False, **opts))  # type: ignore[arg-type]


def test_run_writes_the_documented_folder_and_learns(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    m = exp.run_seed(0)
    out = exp.run_dir(0)
    assert out == tmp_path / "runs" / "tiny" / "default" / "seed-0"
    for f in ("config.yaml", "results.jsonl", "metrics.json", "checkpoint.json", "checkpoint.safetensors", "curves.png"):
        assert (out / f).is_file(), f
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    # ERM on 8x8 digits upsampled: far above the 10% chance level in-domain.
    assert m["metrics"]["digits/test/acc"] > 0.85
    assert lines[-1]["metrics"]["train/loss"] < lines[0]["metrics"]["train/loss"]
    assert m["selection"].startswith("fixed schedule")
    assert json.loads((out / "metrics.json").read_text()) == m


def test_cpu_runs_are_bit_for_bit_repeatable(tmp_path: Path) -> None:
    a = _exp(tmp_path / "a").run_seed(0)
    b = _exp(tmp_path / "b").run_seed(0)
    c = _exp(tmp_path / "c").run_seed(1)
    assert a["metrics"] == b["metrics"]
    assert a["metrics"] != c["metrics"]


def test_interrupted_run_resumes_to_identical_metrics(tmp_path: Path) -> None:
    ref = _exp(tmp_path / "ref").run_seed(0)

    def interrupt(seed: int, epoch: int, record: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    rec, ov = load_recipe(TINY)
    exp = Experiment(rec, ov, RunOptions(runs_dir=tmp_path / "runs", progress=False), on_epoch=interrupt)
    with pytest.raises(RunInterrupted, match="--resume"):
        exp.run_seed(0)
    out = exp.run_dir(0)
    assert not (out / "metrics.json").exists() and (out / "checkpoint.json").exists()
    with pytest.raises(RunExists, match="--resume"):
        _exp(tmp_path).run_seed(0)
    resumed = _exp(tmp_path, resume=True).run_seed(0)
    assert resumed["metrics"] == ref["metrics"]
    assert [json.loads(x)["epoch"] for x in (out / "results.jsonl").read_text().splitlines()] == [0, 1, 2]
    # a finished run is kept by --resume, refused without it, and backed up by --overwrite
    assert _exp(tmp_path, resume=True).run_seed(0) == resumed
    with pytest.raises(RunExists, match="already finished"):
        _exp(tmp_path).run_seed(0)
    _exp(tmp_path, overwrite=True).run_seed(0)
    assert len(list(out.parent.glob("seed-0.old-*"))) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    """A non-finite loss in epoch 2 stops the run naming the value, the epoch and train.lr;
    the checkpoint of epoch 1 is intact (it loads with ``load_state`` and says epoch 1), and once
    the fault is gone ``--resume`` continues from it to the uninterrupted result."""
    from shiftlab.io import load_state
    from shiftlab.methods.erm import ERM

    ref = _exp(tmp_path / "ref").run_seed(0)
    calls = {"n": 0}
    real = ERM.update

    def flaky(self: ERM, batch: object) -> dict[str, float]:
        calls["n"] += 1
        out = real(self, batch)
        return {"loss": bad} if calls["n"] > 25 else out

    monkeypatch.setattr(ERM, "update", flaky)
    exp = _exp(tmp_path)
    with pytest.raises(TrainingError) as info:
        exp.run_seed(0)
    msg = str(info.value)
    assert str(bad) in msg and "epoch 2" in msg and "train.lr" in msg
    out = exp.run_dir(0)
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["state"]["__dict__"] and (out / "results.jsonl").read_text().count("\n") == 1
    assert int(load_state(out / "checkpoint")["epoch"]) == 1
    monkeypatch.setattr(ERM, "update", real)
    assert _exp(tmp_path, resume=True).run_seed(0)["metrics"] == ref["metrics"]


def test_missing_data_folder_names_path_and_download(tmp_path: Path) -> None:
    rec, ov = load_recipe({**TINY, "data": {**TINY["data"], "source": "mnist"}})
    exp = Experiment(rec, ov, RunOptions(runs_dir=tmp_path / "runs", data_dir=str(tmp_path / "nodata"), progress=False))
    with pytest.raises(DataError) as info:
        exp.run_seed(0)
    msg = str(info.value)
    assert str(tmp_path / "nodata") in msg and "--download" in msg


def test_source_val_selection_never_reads_target_labels(tmp_path: Path) -> None:
    exp = _exp(tmp_path, ["selection=source_val", "data.val_fraction=0.2"])
    m = exp.run_seed(0)
    recs = [json.loads(x) for x in (exp.run_dir(0) / "results.jsonl").read_text().splitlines()]
    best = max(recs, key=lambda r: (r["metrics"]["source_val/acc"], -r["epoch"]))
    assert m["selected_epoch"] == best["epoch"] and m["metrics"] == best["metrics"]
    assert "validation" in m["selection"]


def test_resume_refuses_a_changed_recipe(tmp_path: Path) -> None:
    def interrupt(seed: int, epoch: int, record: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    rec, ov = load_recipe(TINY)
    exp = Experiment(rec, ov, RunOptions(runs_dir=tmp_path / "runs", progress=False), on_epoch=interrupt)
    with pytest.raises(RunInterrupted):
        exp.run_seed(0)
    changed = {**TINY, "train": {**TINY["train"], "lr": 0.1}}
    rec2, ov2 = load_recipe(changed)
    with pytest.raises(RunExists, match="recipe changed.*train"):
        Experiment(rec2, ov2, RunOptions(runs_dir=tmp_path / "runs", progress=False, resume=True)).run_seed(0)


def test_train_augment_presets_and_a_clear_error_for_an_unknown_one(tmp_path: Path) -> None:
    m = _exp(tmp_path, ["train.augment=digits_strong"]).run_seed(0)
    assert m["metrics"]["digits/test/acc"] > 0.3  # learns through the strong augmentation (chance 0.1)
    with pytest.raises(ShiftlabError, match="digits_uda, digits_strong"):
        _exp(tmp_path / "bad", ["train.augment=colour_magic"]).run_seed(0)


UDA_BN = {
    "name": "tiny-uda",
    "data": {
        "source": "digits", "target": "digits_m", "channels": 3, "image_size": 28,
        "eval": [{"name": "digits_m", "split": "test"}, {"name": "digits", "split": "test"}],
    },
    "backbone": {"name": "ganin_cnn", "args": {"norm": True}},
    "method": {"name": "dann", "hparams": {"domain_forward": "separate"}},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.001},
    "seeds": [0],
}


def test_a_finished_run_is_scored_later_on_added_eval_sets_including_target_batchnorm(tmp_path: Path) -> None:
    opts = RunOptions(runs_dir=tmp_path / "runs", progress=False, resume=True)
    rec, ov = load_recipe(UDA_BN)
    first = Experiment(rec, ov, opts).run_seed(0)
    before = (Experiment(rec, ov, opts).run_dir(0) / "checkpoint.safetensors").read_bytes()
    added = {**UDA_BN, "data": {**UDA_BN["data"], "eval": [
        {"name": "digits_m", "split": "test", "bn": "target"}, *UDA_BN["data"]["eval"],
        {"name": "digits", "split": "test", "bn": "source"}]}}
    rec2, ov2 = load_recipe(added)
    assert [e.key for e in rec2.data.eval][0] == "digits_m/test+target_bn"
    exp = Experiment(rec2, ov2, opts)
    later = exp.run_seed(0)
    m = later["metrics"]
    assert later["evaluated_later"] == ["digits_m/test+target_bn/acc", "digits/test+source_bn/acc"]
    # the scores measured during training stay as they were; the new ones are real accuracies
    assert {k: m[k] for k in first["metrics"]} == first["metrics"]
    assert m["digits_m/test+target_bn/acc"] != m["digits_m/test/acc"]  # other BN statistics, other predictions
    assert m["digits_m/test+target_bn/acc"] > 0.2 and m["digits/test+source_bn/acc"] > 0.5
    assert json.loads((exp.run_dir(0) / "metrics.json").read_text()) == later
    assert (exp.run_dir(0) / "checkpoint.safetensors").read_bytes() == before
    assert Experiment(rec2, ov2, opts).run_seed(0) == later  # nothing left to score: unchanged
    changed = {**added, "train": {**added["train"], "lr": 0.01}}
    rec3, ov3 = load_recipe(changed)
    with pytest.raises(RunExists, match="recipe changed.*train"):
        Experiment(rec3, ov3, opts).run_seed(0)


def test_late_scoring_refuses_a_run_whose_selected_epoch_is_not_the_checkpoint(tmp_path: Path) -> None:
    opts = RunOptions(runs_dir=tmp_path / "runs", progress=False, resume=True)
    rec, ov = load_recipe(TINY, ["selection=source_val", "data.val_fraction=0.2"])
    Experiment(rec, ov, opts).run_seed(0)
    more = {**TINY, "data": {**TINY["data"], "eval": [*TINY["data"]["eval"], {"name": "digits_m", "split": "train"}]}}
    rec2, ov2 = load_recipe(more, ["selection=source_val", "data.val_fraction=0.2"])
    with pytest.raises(ShiftlabError, match="digits_m/train.*selection rule.*--overwrite"):
        Experiment(rec2, ov2, opts).run_seed(0)
