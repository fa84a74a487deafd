from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shiftlab.errors import DataError
from shiftlab.io import append_jsonl, atomic_write_json, load_state, read_jsonl, save_state


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]


def test_state_roundtrip_with_optimizer_and_rng(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": dict(net.state_dict()), "optim": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3}
    save_state(tmp_path / "ck", state)
    back = load_state(tmp_path / "ck")
    assert back["epoch"] == 3
    assert torch.equal(back["rng"], state["rng"])
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(back["optim"])
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    save_state(tmp_path / "ck", {"w": torch.ones(3)})
    (tmp_path / "ck.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_state(tmp_path / "ck")


def test_jsonl_ignores_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"epoch": 0})
    with open(p, "a") as fh:
        fh.write('{"epoch": 1, "metr')
    assert read_jsonl(p) == [{"epoch": 0}]
