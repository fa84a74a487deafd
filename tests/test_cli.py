"""The command line, in-process (fast) and as a real process (Ctrl-C, exit codes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shiftlab.cli import parse_seeds

REPO = Path(__file__).resolve().parents[1]


def test_parse_seeds() -> None:
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("1 4") == [1, 4]


@pytest.mark.parametrize("kind", ["datasets", "methods", "backbones", "shifts", "selections", "recipes"])
def test_list_json_has_name_and_summary(cli, kind: str) -> None:
    code, out, _ = cli(["list", kind, "--json"])
    assert code == 0
    rows = json.loads(out)
    assert rows and all(r["name"] and "summary" in r for r in rows)


@pytest.mark.parametrize("kind", ["datasets", "methods", "backbones", "shifts", "selections", "recipes"])
def test_list_table_prints_every_name_verbatim(cli, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Summaries hold text such as ``PATH[/<split>]`` that rich would read as markup.
    import shiftlab.cli

    monkeypatch.setattr(shiftlab.cli.out, "width", 1000)  # no folding inside names
    code, out, err = cli(["list", kind])
    assert code == 0, err
    _, js, _ = cli(["list", kind, "--json"])
    for r in json.loads(js):
        assert r["name"] in out
    if kind == "datasets":
        assert "PATH[/<split>]" in out


def test_bad_recipe_key_is_one_paragraph_exit_2(cli, tmp_path: Path) -> None:
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"name": "x", "data": {"source": "digits"}, "trian": {}}))
    code, _, err = cli(["run", str(rec), "--runs-dir", str(tmp_path)])
    assert code == 2
    assert "unknown key 'trian'" in err and "Traceback" not in err


def _tiny_recipe(tmp_path: Path, epochs: int) -> Path:
    rec = tmp_path / "tiny.yaml"
    rec.write_text(yaml.safe_dump({
        "name": "tiny-cli",
        "data": {"source": "digits", "channels": 1, "eval": [{"name": "digits", "split": "test"}]},
        "backbone": {"name": "mlp", "args": {"hidden": [256, 256]}},
        "train": {"epochs": epochs, "batch_size": 16},
    }))
    return rec


def test_run_and_report_in_process(cli, tmp_path: Path) -> None:
    rec = _tiny_recipe(tmp_path, 1)
    code, out, err = cli(["run", str(rec), "--seeds", "0", "1", "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert code == 0, err
    assert (tmp_path / "runs/tiny-cli/default/seed-1/metrics.json").is_file()
    code, out, err = cli(["report", str(tmp_path / "runs")])
    assert code == 0, err
    assert "digits/test/acc" in out and "| 2 |" in out.replace(" 2 ", " 2 ")


def test_ctrl_c_in_a_real_process_then_resume(tmp_path: Path) -> None:
    """SIGINT mid-run: exit 130, a message naming --resume, the checkpoint intact; resume finishes."""
    rec = _tiny_recipe(tmp_path, 12)
    env = {**os.environ, "SHIFTLAB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "shiftlab.cli", "run", str(rec), "--runs-dir", str(tmp_path / "runs"), "-q"]
    # A shell that starts the suite in the background (``make test &``) ignores SIGINT, and the
    # child would inherit SIG_IGN; restore the default so Python installs its Ctrl-C handler.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = tmp_path / "runs/tiny-cli/default/seed-0/checkpoint.json"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (ckpt.parent / "metrics.json").exists()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(x)["epoch"] for x in (ckpt.parent / "results.jsonl").read_text().splitlines()]
    assert epochs == list(range(12))
    assert json.loads((ckpt.parent / "metrics.json").read_text())["selected_epoch"] == 11


def test_eval_re_evaluates_and_ensembles_fewshot_runs(cli, tmp_path: Path) -> None:
    rec = tmp_path / "fs.yaml"
    rec.write_text(yaml.safe_dump({
        "kind": "fewshot", "name": "fs-cli",
        "data": {"source": "digits", "splits": ["train"], "class_split": "50-50", "image_size": 28, "channels": 1},
        "backbone": {"name": "conv4", "args": {"hidden": 8}},
        "train": {"iterations": 2, "way": 3, "shot": 1, "query": 2, "eval_every": 2, "eval_episodes": 3},
        "eval": {"sets": [{"name": "unseen", "ways": [3], "episodes": 8}]},
    }))
    code, _, err = cli(["run", str(rec), "--seeds", "0", "1", "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert code == 0, err
    runs = [str(tmp_path / f"runs/fs-cli/default/seed-{s}") for s in (0, 1)]
    code, out, err = cli(["eval", runs[0], "--set", "eval.tta_shift=1", "-q"])
    assert code == 0, err
    assert "unseen/3w1s/acc_tta" in out and list(Path(runs[0]).glob("eval-*.json"))
    code, out, err = cli(["eval", *runs, "--ensemble", str(tmp_path / "ens.json"), "-q"])
    assert code == 0, err
    assert "ensemble of 2" in out and json.loads((tmp_path / "ens.json").read_text())["metrics"]
    code, _, err = cli(["eval", runs[0], "--set", "train.lr=0.1", "-q"])
    assert code == 2 and "eval.* overrides only" in err
