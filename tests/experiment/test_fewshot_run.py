"""Few-shot recipes: validation, the run folder, resume, divergence, report, demo, Lake's runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from shiftlab.errors import RecipeError, TrainingError
from shiftlab.experiment.fewshot_run import (
    best_threshold,
    demo_stage,
    evaluate_runs,
    load_fewshot_recipe,
    prepare,
    run_fewshot,
)
from shiftlab.experiment.report import report
from shiftlab.experiment.run import RunExists, RunInterrupted, RunOptions
from shiftlab.methods.fewshot.protonet import ProtoNet

REPO = Path(__file__).resolve().parents[2]


def _recipe(episodes: int = 30, **train: Any) -> dict[str, Any]:
    return {
        "kind": "fewshot",
        "name": "fs-test",
        "data": {"source": "digits", "splits": ["train"], "class_split": "50-50", "split_shuffle": False,
                 "val_fraction": 0.4, "image_size": 28, "channels": 1},
        "backbone": {"name": "conv4", "args": {"hidden": 8}},
        "method": {"name": "protonet"},
        "train": {"iterations": 6, "way": 3, "shot": 2, "query": 3, "eval_every": 2, "eval_episodes": 5,
                  "batch_size": 16, **train},
        "eval": {"sets": [{"name": "unseen", "ways": [3, 5], "shots": [1], "query": 4, "episodes": episodes,
                           "pairs": 100, "triplets": 100}]},
        "seeds": [0],
    }


def test_recipe_errors_name_the_key() -> None:
    with pytest.raises(RecipeError, match="train.wya"):
        load_fewshot_recipe(_recipe(wya=5))
    with pytest.raises(RecipeError, match="distanse"):
        load_fewshot_recipe({**_recipe(), "method": {"name": "protonet", "hparams": {"distanse": "cosine"}}})
    rec, ov = load_fewshot_recipe(_recipe(), {"method": "siamese", "train.lr": 0.01})
    assert rec.method.name == "siamese" and rec.train.lr == 0.01 and ov == {"method.name": "siamese", "train.lr": 0.01}
    with pytest.raises(RecipeError, match="class_split"):
        prepare(load_fewshot_recipe({**_recipe(), "data": {"source": "digits", "splits": ["train"]}})[0])


def test_bundled_recipes_validate() -> None:
    import yaml

    paths = sorted((REPO / "recipes" / "fewshot").glob("*.yaml"))
    assert len(paths) >= 8
    for p in paths:
        load_fewshot_recipe(yaml.safe_load(p.read_text()))


def test_class_split_data_has_no_leak() -> None:
    data = prepare(load_fewshot_recipe(_recipe())[0])
    train_cls = set(data.train.info["source_classes"])
    val_cls = set(data.val.info["source_classes"])
    test_cls = set(data.evals["unseen"].info["source_classes"])
    assert train_cls | val_cls == {0, 1, 2, 3, 4} and test_cls == {5, 6, 7, 8, 9}
    assert not train_cls & val_cls
    rows = [set(d.info["source_rows"]) for d in (data.train, data.val, data.evals["unseen"])]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]


def test_run_writes_folder_report_and_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opts = RunOptions(runs_dir=tmp_path / "a", progress=False)
    full = run_fewshot(_recipe(), {}, opts)[0]
    run = tmp_path / "a" / "fs-test" / "default" / "seed-0"
    for f in ("config.yaml", "results.jsonl", "metrics.json", "checkpoint.json", "checkpoint.safetensors"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["episodes"]) >= {"unseen/3w1s/acc", "unseen/5w1s/acc", "unseen/verify_acc", "unseen/triplet_acc"}
    assert len(m["episodes"]["unseen/5w1s/acc"]) == 30
    assert 0.0 <= m["metrics"]["unseen/5w1s/acc"] <= 1.0
    assert len((run / "results.jsonl").read_text().splitlines()) == 3
    with pytest.raises(RunExists):
        run_fewshot(_recipe(), {}, opts)
    rep = report(tmp_path / "a")
    assert "unseen/5w1s/acc" in rep.markdown

    # interrupted after the first checkpoint (iteration 2), then resumed: identical metrics
    opts_b = RunOptions(runs_dir=tmp_path / "b", progress=False)
    calls = {"n": 0}
    real = ProtoNet.update

    def flaky(self: ProtoNet, batch: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(ProtoNet, "update", flaky)
    with pytest.raises(RunInterrupted):
        run_fewshot(_recipe(), {}, opts_b)
    monkeypatch.setattr(ProtoNet, "update", real)
    with pytest.raises(RunExists, match="--resume"):
        run_fewshot(_recipe(), {}, opts_b)
    resumed = run_fewshot(_recipe(), {}, RunOptions(runs_dir=tmp_path / "b", progress=False, resume=True))[0]
    assert resumed["metrics"] == full["metrics"]
    assert resumed["episodes"] == full["episodes"]


def test_nan_loss_is_a_training_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ProtoNet, "update", lambda self, batch: {"loss": float("nan")})
    with pytest.raises(TrainingError, match="lower the learning rate"):
        run_fewshot(_recipe(), {}, RunOptions(runs_dir=tmp_path, progress=False))


@pytest.mark.parametrize("method", ["siamese", "triplet", "baseline_pp", "reptile"])
def test_every_batch_kind_runs_through_the_runner(tmp_path: Path, method: str) -> None:
    over = {"method": method, "data.augment": "affine"}
    if method == "reptile":
        over.update({"method.hparams": {"meta_batch": 2, "inner_steps": 2, "eval_inner_steps": 2}})
    if method == "baseline_pp":
        over["method.hparams"] = {"finetune_epochs": 2}
    m = run_fewshot(_recipe(episodes=5, iterations=2, eval_every=2), over, RunOptions(runs_dir=tmp_path, progress=False))[0]
    assert m["method"] == method and "unseen/verify_acc" in m["metrics"]


def test_best_threshold_maximises_accuracy() -> None:
    scores = torch.tensor([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    same = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    t = best_threshold(scores, same)
    acc = ((scores > t).float() == same).float().mean().item()
    assert acc == pytest.approx(5 / 6)
    assert best_threshold(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == pytest.approx(0.5)


def test_lake_runs_protocol_with_a_pixel_protonet(shared_data: Path) -> None:
    """20 runs x 20 queries; a ProtoNet on raw pixels (identity embedding) is far above chance (5%)."""
    from shiftlab.data.sources import load_dataset
    from shiftlab.data.transforms import fit_images

    runs = load_dataset("omniglot_runs", "test", data_dir=shared_data)
    runs = runs.with_x(fit_images(runs.x, 28, "resize"))
    from shiftlab.backbones import create_backbone
    from shiftlab.methods import create_method

    bb = create_backbone("mlp", in_chans=1, num_classes=0, image_size=28, hidden=())
    m = create_method("protonet", backbone=bb, num_classes=2)
    accs = evaluate_runs(m, runs)
    assert len(accs) == 20 and all(0.0 <= a <= 1.0 for a in accs)
    assert sum(accs) / 20 > 0.2


def test_demo_stage_is_quick_and_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFTLAB_DATA", str(tmp_path / "no-data-here"))
    lines, pngs = demo_stage(tmp_path)
    text = "\n".join(lines)
    assert "5-way 1-shot" in text
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc_1shot = float(text.split("| 5-way 1-shot | ")[1].split(" ")[0])
    assert acc_1shot > 20 + 20  # chance is 20%


def test_minimal_sets_merge_deduplicates_greek_and_latin_and_keeps_alphabets(shared_data: Path) -> None:
    """small1 + small2 share Greek and Latin: 136 + 156 characters, 50 of them in both, so
    the pool has 242 classes (x4 rotations), each with its alphabet (within-alphabet
    episodes need it), and a class split never puts one character on both sides."""
    raw = yaml.safe_load((REPO / "recipes" / "fewshot" / "omniglot_class_ratio.yaml").read_text())
    rec, _ = load_fewshot_recipe(raw)
    data = prepare(rec, str(shared_data))
    names = [*data.train.classes, *data.val.classes, *data.evals["heldout"].classes]
    assert len(names) == len(set(names)) == 242
    pro = yaml.safe_load((REPO / "recipes" / "fewshot" / "omniglot_protonet.yaml").read_text())
    train = prepare(load_fewshot_recipe(pro)[0], str(shared_data)).train
    assert train.num_classes == 4 * 242 and len(train.info["class_alphabet"]) == train.num_classes
    assert len(set(train.info["class_alphabet"])) == 8  # 5 + 5 alphabets, Greek and Latin once


def test_an_empty_or_unknown_method_name_is_a_recipe_error() -> None:
    """Found by the hypothesis fuzz (``--set method=``): it raised the registry's KeyError."""
    from shiftlab.errors import RecipeError
    from shiftlab.experiment.fewshot_run import load_fewshot_recipe

    raw = yaml.safe_load((REPO / "recipes/fewshot/omniglot_protonet.yaml").read_text())
    for name in ("", "protonett"):
        with pytest.raises(RecipeError, match="protonet"):
            load_fewshot_recipe(raw, {"method": name})


def test_tta_shift_reports_plain_and_shifted_metrics_and_refuses_adapting_methods(tmp_path: Path) -> None:
    over = {"eval.tta_shift": 1, "train.iterations": 2}
    m = run_fewshot(_recipe(episodes=10), over, RunOptions(runs_dir=tmp_path, progress=False))[0]
    for k in ("unseen/3w1s/acc", "unseen/5w1s/acc", "unseen/verify_acc", "unseen/triplet_acc"):
        assert k in m["metrics"] and f"{k}_tta" in m["metrics"], k
        assert len(m["episodes"][f"{k}_tta"]) == len(m["episodes"][k])
    # the shifted copies change the embeddings, so at least one metric moves
    assert any(m["metrics"][f"{k}_tta"] != m["metrics"][k] for k in ("unseen/3w1s/acc", "unseen/5w1s/acc",
                                                                      "unseen/triplet_acc"))
    with pytest.raises(RecipeError, match="tta_shift"):  # raised before training, not after it
        run_fewshot(_recipe(), {**over, "method": "reptile"}, RunOptions(runs_dir=tmp_path / "r", progress=False))
    assert not list((tmp_path / "r").rglob("checkpoint.json"))


def test_evaluate_run_reproduces_metrics_and_adds_tta_without_training(tmp_path: Path) -> None:
    from shiftlab.errors import ShiftlabError
    from shiftlab.experiment.fewshot_run import evaluate_run

    m = run_fewshot(_recipe(episodes=10), {"train.iterations": 2}, RunOptions(runs_dir=tmp_path, progress=False))[0]
    run = next(tmp_path.rglob("seed-0"))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    same = evaluate_run(run)
    assert same["metrics"] == pytest.approx(m["metrics"])
    assert set(same["episodes"]) == set(m["episodes"])
    assert all(same["episodes"][k] == pytest.approx(v) for k, v in m["episodes"].items())
    tta = evaluate_run(run, {"eval.tta_shift": 1, "eval.seed": 7})
    assert len(tta["episodes"]["unseen/5w1s/acc_tta"]) == 10 and "unseen/5w1s/acc" in tta["metrics"]
    assert tta["episodes"]["unseen/5w1s/acc"] != same["episodes"]["unseen/5w1s/acc"]  # other episodes
    written = sorted(p.name for p in run.glob("eval-*.json"))
    assert len(written) == 2 and json.loads((run / written[-1]).read_text())["metrics"]
    assert all(run.joinpath(n).read_bytes() == b for n, b in before.items())  # the run itself is untouched
    with pytest.raises(RecipeError, match="eval"):
        evaluate_run(run, {"train.lr": 0.1})
    with pytest.raises(ShiftlabError, match="not a finished run"):
        evaluate_run(tmp_path)


def test_evaluate_ensemble_of_two_seeds_writes_json_and_refuses_other_data(tmp_path: Path) -> None:
    from shiftlab.experiment.fewshot_run import evaluate_ensemble

    opts = RunOptions(runs_dir=tmp_path, progress=False)
    run_fewshot(_recipe(episodes=10), {"train.iterations": 2}, opts, seeds=[0, 1])
    runs = sorted(tmp_path.rglob("seed-*"))
    assert len(runs) == 2
    res = evaluate_ensemble(runs, tmp_path / "ens.json", {"eval.tta_shift": 1})
    saved = json.loads((tmp_path / "ens.json").read_text())
    assert saved["metrics"] == res["metrics"] and len(saved["members"]) == 2
    assert {"unseen/5w1s/acc", "unseen/5w1s/acc_tta"} <= set(res["metrics"])
    assert all(0.0 <= v <= 1.0 for k, v in res["metrics"].items() if k.endswith(("acc", "acc_tta")))
    other = run_fewshot(_recipe(episodes=10), {"train.iterations": 2, "data.image_size": 20},
                        RunOptions(runs_dir=tmp_path / "o", progress=False))[0]
    assert other
    with pytest.raises(RecipeError, match="other data"):
        evaluate_ensemble([runs[0], next((tmp_path / "o").rglob("seed-0"))], tmp_path / "bad.json")
    with pytest.raises(RecipeError, match="two"):
        evaluate_ensemble(runs[:1], tmp_path / "one.json")
