"""A checkpoint crafted to execute code when unpickled is refused everywhere shiftlab reads
weights or checkpoints: the error names the file and the payload never runs.

The payload is a pickle whose ``__reduce__`` calls ``os.system("touch <marker>")``; after
each refusal the marker file must not exist."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shiftlab.errors import DataError


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _evil(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pwned-{name}"
    path = tmp_path / name
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    return path, marker


def _resnet_cifar(path: Path) -> None:
    from shiftlab.backbones import create_backbone

    create_backbone("resnet_cifar20", pretrained=str(path))


def _tta_source(path: Path) -> None:
    from shiftlab.experiment.tta_run import _state_dict_from

    _state_dict_from(path)


def _clip(path: Path) -> None:
    from shiftlab.backbones.clip import _read_state_dict

    _read_state_dict(path)


@pytest.mark.parametrize("load", [_resnet_cifar, _tta_source, _clip], ids=["resnet_cifar", "tta_source", "clip"])
def test_a_code_executing_weights_file_is_refused(tmp_path: Path, load: Callable[[Path], None]) -> None:
    path, marker = _evil(tmp_path, "evil.pt")
    with pytest.raises(DataError) as err:
        load(path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the payload ran"


def test_a_pickled_run_checkpoint_is_refused_on_resume(tmp_path: Path) -> None:
    """Run checkpoints are safetensors + JSON; a pickle put in place of the tensor file is a
    clear DataError on ``--resume`` (nothing is unpickled), and the payload never runs."""
    from shiftlab.config import load_recipe
    from shiftlab.experiment.run import Experiment, RunOptions

    raw = {"name": "evilckpt", "data": {"source": "digits", "channels": 1,
                                        "eval": [{"name": "digits", "split": "test"}]},
           "backbone": {"name": "mlp", "args": {"hidden": [32]}}, "train": {"epochs": 2, "batch_size": 64,
                                                                            "max_steps_per_epoch": 2}}
    rec, ov = load_recipe(raw)
    opts = RunOptions(runs_dir=tmp_path / "runs", progress=False)
    exp = Experiment(rec, ov, opts)
    exp.run([0])
    run = exp.run_dir(0)
    (run / "metrics.json").unlink()  # make it "unfinished" so --resume loads the checkpoint
    tensors = run / "checkpoint.safetensors"
    assert tensors.exists()
    marker = tmp_path / "pwned-run"
    torch.save({"x": _Payload(marker)}, tensors)
    with pytest.raises(DataError, match="corrupt or incomplete"):
        Experiment(rec, ov, RunOptions(runs_dir=tmp_path / "runs", progress=False, resume=True)).run([0])
    assert not marker.exists(), "the payload ran"
