from __future__ import annotations

from pathlib import Path

import pytest

from shiftlab.config import load_recipe, overrides_id, parse_override
from shiftlab.errors import RecipeError

BASE = {"name": "t", "data": {"source": "digits"}}


def test_defaults_and_overrides_are_typed() -> None:
    rec, ov = load_recipe(BASE, ["train.lr=0.01", "method=erm", "train.epochs=2", "data.eval=[{name: digits}]"])
    assert rec.train.lr == 0.01 and rec.train.epochs == 2 and rec.method.name == "erm"
    assert rec.data.eval[0].key == "digits/test"
    assert ov == {"train.lr": 0.01, "method.name": "erm", "train.epochs": 2, "data.eval": [{"name": "digits"}]}


def test_unknown_key_names_its_path_and_the_allowed_keys() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe({**BASE, "train": {"epochz": 3}})
    msg = str(info.value)
    assert "train.epochz" in msg and "epochs" in msg and "batch_size" in msg


def test_wrong_type_names_the_key_and_value() -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(BASE, ["train.batch_size=many"])
    assert "train.batch_size" in str(info.value) and "many" in str(info.value)


def test_missing_required_key_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="missing required key 'data'"):
        load_recipe({"name": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_override_syntax_errors() -> None:
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(RecipeError, match="not a section"):
        load_recipe(BASE, ["name.sub=1"])


def test_method_hparams_are_validated_against_the_dataclass() -> None:
    from shiftlab.methods import make_hparams

    with pytest.raises(RecipeError) as info:
        make_hparams("erm", {"label_smothing": 0.1})
    assert "label_smothing" in str(info.value) and "label_smoothing" in str(info.value)
    with pytest.raises(RecipeError, match="method.hparams.label_smoothing"):
        make_hparams("erm", {"label_smoothing": "lots"})
    assert make_hparams("erm", {"label_smoothing": "0.1"}).label_smoothing == pytest.approx(0.1)


def test_overrides_id_is_stable_and_distinct() -> None:
    a = overrides_id({"method.name": "dann", "train.lr": 0.1})
    assert a == overrides_id({"train.lr": 0.1, "method.name": "dann"})
    assert a != overrides_id({"method.name": "dann", "train.lr": 0.2})
    assert overrides_id({}) == "default" and overrides_id({"seeds": [1]}) == "default"
    assert "/" not in overrides_id({"data.source": "folder:/a/b"})


def test_every_bundled_recipe_validates() -> None:
    from shiftlab.cli import REPO_RECIPES

    files = sorted(REPO_RECIPES.rglob("*.yaml"))
    assert files, "no recipes found"
    from shiftlab.backbones import BACKBONES
    from shiftlab.data.sources import DATASETS
    from shiftlab.experiment.dispatch import read_raw, recipe_kind
    from shiftlab.methods import METHODS, make_hparams

    for f in files:
        if recipe_kind(read_raw(f)) != "train":
            continue  # validated by the tests of their own kind
        rec, _ = load_recipe(f)
        assert rec.method.name in METHODS, f
        assert rec.backbone.name in BACKBONES, f
        make_hparams(rec.method.name, rec.effective_hparams())
        for other, hp in rec.method_hparams.items():  # sweep alternatives validate too
            make_hparams(other, hp)
        for name in [rec.data.source, rec.data.target, *(e.name for e in rec.data.eval)]:
            assert name is None or name in DATASETS or ":" in name, (f, name)


def test_eval_sets_with_other_batchnorm_statistics_are_keyed_apart_and_need_their_data() -> None:
    rec, _ = load_recipe({"name": "x", "data": {"source": "mnist", "target": "mnist_m", "eval": [
        {"name": "mnist_m", "bn": "target"}, {"name": "mnist_m"}, {"name": "mnist", "bn": "source"}]}})
    assert [e.key for e in rec.data.eval] == ["mnist_m/test+target_bn", "mnist_m/test", "mnist/test+source_bn"]
    with pytest.raises(RecipeError, match="bn: target, but data.target is not set"):
        load_recipe({"name": "x", "data": {"source": "mnist", "eval": [{"name": "usps", "bn": "target"}]}})
    with pytest.raises(RecipeError, match="lists usps/test more than once"):
        load_recipe({"name": "x", "data": {"source": "mnist", "eval": [{"name": "usps"}, {"name": "usps"}]}})
    with pytest.raises(RecipeError, match="bn"):
        load_recipe({"name": "x", "data": {"source": "mnist", "eval": [{"name": "usps", "bn": "both"}]}})
