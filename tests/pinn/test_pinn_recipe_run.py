"""PINN recipes (validation, shipped files) and run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shiftlab.errors import RecipeError
from shiftlab.pinn.recipe import is_pinn_recipe, load_pinn_recipe
from shiftlab.pinn.run import PinnRunExists, demo_stage, evaluate_checkpoint, run_pinn

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes" / "pinn").glob("*.yaml"))


def _tiny(transfer: bool = True, bundle: bool = False) -> dict:
    rec = {
        "kind": "pinn",
        "name": "pinn-tiny",
        "system": "sir",
        "t_span": [0, 10],
        "ic": {"S": 0.8, "I": 0.2, "R": 0.0},
        "params": {"beta": 0.8, "gamma": 0.2},
        "net": {"width": 6, "depth": 1, "activation": "tanh"},
        "train": {"points": 100, "epochs": 20, "refine": "lm", "refine_steps": 3, "log_every": 10},
        "eval": {"grid": 2, "times": 21, "heatmap_resolution": 4},
        "seeds": [0],
    }
    if bundle:
        rec["ic"] = {"S": "remainder"}
        rec["bundle"] = {"I": [0.1, 0.2], "R": [0.1, 0.2]}
        rec["train"]["sampler"] = "lhs"
    if transfer:
        rec["transfer"] = {
            "bundle" if bundle else "ic": {"I": [0.2, 0.3], "R": [0.1, 0.2]} if bundle else {"S": 0.7, "I": 0.3},
            "train": {"points": 100, "epochs": 20, "refine": "none", "log_every": 5},
        }
    return rec


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    assert is_pinn_recipe(raw)
    rec, _ = load_pinn_recipe(path)
    assert rec.name == f"pinn-{path.stem}"
    box = rec.box()
    if rec.transfer is not None:
        assert rec.target_box(box).structure() == box.structure()


def test_shipped_recipe_names() -> None:
    assert {p.stem for p in RECIPES} >= {"sir_single", "sir_ic_bundle", "sir_ic_param_bundle", "sir_bundle_transfer"}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"train.epoch": 5}, "unknown key 'train.epoch'"),
        ({"nett": {"width": 3}}, "unknown key 'nett'"),
        ({"transfer.train.lrr": 0.1}, "unknown key 'transfer.train.lrr'"),
        ({"train.sampler": "sobol"}, "unknown sampler 'sobol'"),
        ({"net.activation": "relu6"}, "unknown activation 'relu6'"),
        ({"train.epochs": -1}, "'train.epochs'"),
        ({"ic.X": 0.1}, "unknown name(s) ['X']"),
        ({"bundle.delta": [0, 1]}, "'delta' is neither a state"),
        ({"system": "sri"}, "Unknown system 'sri'"),
    ],
)
def test_bad_recipes_are_recipe_errors_naming_the_key(change: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_pinn_recipe(_tiny(), change)
    assert needle in str(info.value)


def test_unknown_key_lists_allowed_keys() -> None:
    with pytest.raises(RecipeError, match=r"allowed here: .*refine_steps"):
        load_pinn_recipe(_tiny(), ["train.refine_stepz=3"])
    with pytest.raises(RecipeError, match="kind"):
        load_pinn_recipe({k: v for k, v in _tiny().items() if k != "kind"})


def test_run_folder_is_written(tmp_path: Path) -> None:
    results = run_pinn(_tiny(), {"train.epochs": 10}, tmp_path, seeds=[1], resume=False)
    out = tmp_path / "pinn-tiny" / "train.epochs=10-" / "seed-1"
    out = next((tmp_path / "pinn-tiny").glob("*/seed-1"))
    for name in ("config.yaml", "results.jsonl", "metrics.json", "solver.json", "solver.safetensors",
                 "solver_finetuned.json", "trajectories.png", "loss.png", "transfer_loss.png"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m == results[0]
    assert m["recipe"] == "pinn-tiny" and m["seed"] == 1 and m["variant"] == "train.epochs=10"
    assert m["overrides"] == {"train.epochs": 10} and m["method"] == "pinn" and m["selection"]
    mm = m["metrics"]
    for key in ("ln_loss", "max_abs_error", "transfer/zero_shot_max_abs_error", "transfer/finetuned_max_abs_error",
                "transfer/scratch_final_ln_loss", "transfer/finetune_epochs_to_scratch_loss"):
        assert key in mm, key
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {x["stage"] for x in lines} == {"train", "finetune", "scratch"}
    assert all(set(x) >= {"epoch", "step", "elapsed_s", "metrics"} for x in lines)
    assert [x["step"] for x in lines] == list(range(len(lines)))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["resolved"]["n_weights"] > 0
    # finished runs: resume keeps them, otherwise it is an error
    again = run_pinn(_tiny(), {"train.epochs": 10}, tmp_path, seeds=[1], resume=True)
    assert again == results
    with pytest.raises(PinnRunExists, match="--resume"):
        run_pinn(_tiny(), {"train.epochs": 10}, tmp_path, seeds=[1], resume=False)
    # the saved solver can be evaluated on another problem
    ev = evaluate_checkpoint(out / "solver", ic={"S": 0.75, "I": 0.25}, png=tmp_path / "ev.png")
    assert ev["max_abs_error"] > 0 and (tmp_path / "ev.png").exists()


def test_bundle_run_draws_heatmaps(tmp_path: Path) -> None:
    (m,) = run_pinn(_tiny(transfer=False, bundle=True), {}, tmp_path)
    out = tmp_path / "pinn-tiny" / "default" / "seed-0"
    assert (out / "heatmaps.png").exists()
    assert m["metrics"]["n_problems"] == 4
    assert "heatmap/I-R/inside_ln_loss" in m["metrics"]


def test_demo_stage(tmp_path: Path) -> None:
    lines, pngs = demo_stage(tmp_path)
    assert any("max abs error" in x for x in lines)
    assert all(p.exists() for p in pngs)
    row = lines[-1].strip("|").split("|")
    assert float(row[1]) < 1e-3  # max abs error of the few-second SIR solve
