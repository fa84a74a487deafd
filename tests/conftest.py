"""Shared fixtures.

The real data lives beside the repository in ``../shared/data`` (see its PROVENANCE.md).
Tests that need it use the ``shared_data`` fixture, which skips with a clear reason when
the folder is absent (it is present in CI, where those tests must run).
``$SHIFTLAB_TEST_DATA`` points elsewhere if needed.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHIFTLAB_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder ``../shared/data``; skips (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA} is absent; put the shared data there or set "
            "$SHIFTLAB_TEST_DATA (CI always has it)"
        )
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    # Two cores on CI: keep torch from oversubscribing, and every test deterministic.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(0)


def _write_cifar(root: Path, per_batch: int = 5, hundred: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10 (``hundred``: CIFAR-100) in torchvision's pickle format under
    ``root``: ``per_batch`` random images per file; returns the arrays and labels written."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    n_cls = 100 if hundred else 10
    names = (["train"], ["test"]) if hundred else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    label_key = "fine_labels" if hundred else "labels"
    out: dict[str, list] = {"train": [], "test": [], "train_y": [], "test_y": []}
    for split, files in zip(("train", "test"), names, strict=True):
        for f in files:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, n_cls, per_batch).tolist()
            (folder / f).write_bytes(pickle.dumps({"data": data, label_key: labels, "batch_label": f}, protocol=2))
            out[split].append(data)
            out[f"{split}_y"] += labels
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]} if hundred else {"label_names": [f"c{i}" for i in range(10)]}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta, protocol=2))
    return {k: (np.concatenate(v) if k in ("train", "test") else np.array(v)) for k, v in out.items()}


@pytest.fixture
def write_cifar() -> Callable[..., dict[str, np.ndarray]]:
    """``write_cifar(root, per_batch=5, hundred=False, seed=0)``: a CIFAR fixture writer."""
    return _write_cifar


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """``cli(["list", "methods"]) -> (exit code, stdout, stderr)``: the ``shiftlab`` command in-process."""
    from shiftlab.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["shiftlab", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


def write_digits_mlp_recipe(folder: Path, name: str, epochs: int, hidden: list[int], batch_size: int) -> Path:
    """A small ``train`` recipe (embedded digits, MLP) at ``folder/<name>.yaml``, for tests that
    run ``shiftlab`` in subprocesses (kill, resume, distributed)."""
    import yaml

    rec = folder / f"{name}.yaml"
    rec.write_text(yaml.safe_dump({
        "name": name,
        "data": {"source": "digits", "channels": 1, "eval": [{"name": "digits", "split": "test"}]},
        "backbone": {"name": "mlp", "args": {"hidden": hidden}},
        "train": {"epochs": epochs, "batch_size": batch_size},
    }))
    return rec


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray instance started by the test, leaving no files or processes behind."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no ~/.ray/auth_token
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             object_store_memory=80 * 2**20)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old
