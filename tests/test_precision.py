"""Training precision: fp32 is untouched, bf16 autocasts the step and still learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from shiftlab.config import load_recipe
from shiftlab.errors import RecipeError
from shiftlab.experiment.run import Experiment, RunOptions
from shiftlab.precision import train_autocast


def test_fp32_is_a_no_op_and_bf16_runs_convolutions_in_bfloat16() -> None:
    conv = nn.Conv2d(1, 4, 3)
    x = torch.rand(2, 1, 8, 8)
    with train_autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
    with train_autocast("cpu", "bf16"):
        y = conv(x)
        assert y.dtype == torch.bfloat16
        assert nn.functional.cross_entropy(y.flatten(1)[:, :3], torch.tensor([0, 1])).dtype == torch.float32
    y.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32  # weights stay float32
    with pytest.raises(ValueError, match="fp32 or bf16"):
        train_autocast("cpu", "fp16")  # type: ignore[arg-type]


def test_a_bf16_run_learns_and_a_bad_precision_is_a_recipe_error(tmp_path: Path) -> None:
    raw = {"name": "bf16", "data": {"source": "digits", "channels": 1, "eval": [{"name": "digits", "split": "test"}]},
           "backbone": {"name": "lenet"}, "train": {"epochs": 3, "batch_size": 32, "precision": "bf16"}}
    rec, ov = load_recipe(raw)
    m = Experiment(rec, ov, RunOptions(runs_dir=tmp_path, progress=False)).run_seed(0)
    assert m["metrics"]["digits/test/acc"] > 0.8  # 10 classes: chance is 0.1
    with pytest.raises(RecipeError, match="precision"):
        load_recipe({**raw, "train": {"precision": "half"}})
