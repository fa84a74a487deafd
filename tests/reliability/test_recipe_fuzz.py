"""Fuzzing the recipe loaders with hypothesis: any mapping, any ``--set`` override, for every
recipe kind, either validates or raises :class:`~shiftlab.errors.RecipeError` with a message
(never a ``KeyError``/``TypeError``/pydantic traceback from deep inside)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shiftlab.config import load_recipe, parse_override, read_recipe_mapping
from shiftlab.errors import RecipeError
from shiftlab.experiment.fewshot_run import load_fewshot_recipe
from shiftlab.experiment.ssl_run import load_ssl_recipe
from shiftlab.experiment.transfer_run import load_transfer_recipe
from shiftlab.experiment.tta_run import load_tta_recipe
from shiftlab.pinn.recipe import load_pinn_recipe

REPO = Path(__file__).resolve().parents[2]

#: one bundled recipe per kind, and its loader
KINDS: dict[str, tuple[str, Callable[..., Any]]] = {
    "train": ("recipes/demo/digits.yaml", load_recipe),
    "fewshot": ("recipes/fewshot/omniglot_protonet.yaml", load_fewshot_recipe),
    "tta": ("recipes/tta/mnist_c.yaml", load_tta_recipe),
    "transfer": ("recipes/transfer/mnist_to_usps.yaml", load_transfer_recipe),
    "ssl": ("recipes/ssl/mnist_to_usps.yaml", load_ssl_recipe),
    "pinn": ("recipes/pinn/sir_single.yaml", load_pinn_recipe),
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "adam", "lenet", "digits", "erm", "byol", "😀", "../..", "1e309", "-0"]),
)
keys = st.one_of(st.text(max_size=10), st.sampled_from(
    ["name", "kind", "data", "method", "train", "backbone", "seeds", "epochs", "lr", "hparams", "ssl", "target",
     "source", "selection", "shift", "eval", "image_size", "channels", "batch_size", "settings", "device"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def _bundled(kind: str) -> dict[str, Any]:
    path = REPO / KINDS[kind][0]
    if not path.is_file():
        pytest.skip(f"{path} is not bundled")
    return read_recipe_mapping(path)


def _check(loader: Callable[..., Any], raw: Any, overrides: Any = None) -> None:
    try:
        loader(raw, overrides) if overrides is not None else loader(raw)
    except RecipeError as exc:
        assert str(exc).strip(), "a RecipeError must say what is wrong"


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patch=st.dictionaries(keys, values, max_size=4))
def test_random_top_level_keys_and_values(kind: str, patch: dict[str, Any]) -> None:
    raw = {**_bundled(kind), **patch}
    json.dumps(raw, default=str)  # a plain mapping, as read from YAML
    _check(KINDS[kind][1], raw)


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.lists(keys, min_size=1, max_size=3).map(".".join), value=st.text(max_size=20))
def test_random_set_overrides(kind: str, key: str, value: str) -> None:
    text = f"{key}={value}"
    try:
        override = dict([parse_override(text)])
    except RecipeError:
        return
    _check(KINDS[kind][1], _bundled(kind), override)


@settings(max_examples=100, deadline=None)
@given(raw=values)
def test_anything_at_all_as_a_train_recipe(raw: Any) -> None:
    """Not even a mapping: a list, a number, ``None``, deep nesting."""
    _check(load_recipe, raw if isinstance(raw, dict) else {"name": raw})
