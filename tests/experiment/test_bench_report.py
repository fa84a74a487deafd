"""shiftlab report on a folder of benchmark results: one page, peers, plots, bad files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from shiftlab.errors import ShiftlabError
from shiftlab.experiment.bench_report import (
    is_benchmark_folder,
    load_bench_files,
    peer_ratios,
    render_bench_page,
    write_bench_report,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def _png(path: Path) -> Path:
    """A valid 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
                     + chunk(b"IEND", b""))
    return path


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    root.mkdir()
    (root / "alpha.json").write_text(json.dumps({
        "name": "alpha", "date": "2026-12-01T10:00:00+00:00", "command": "python benchmarks/bench_alpha.py",
        "machine": {"platform": "Linux", "cpu_count": 2}, "versions": {"shiftlab": "0.1.0", "torch": "2.14.1"},
        "rows": [
            {"task": "mnist", "method": "dann", "metric": "acc", "mean": 0.9123, "ci95": 0.0042, "n": 3,
             "seconds": 12.0, "per_seed": [0.91, 0.915, 0.912]},
            {"task": "mnist", "method": "peerlib", "metric": "acc", "mean": 0.9001, "ci95": None, "n": 1,
             "seconds": None, "curve": list(range(50))},
        ],
        "ratios": {"training epoch": {"ours_s": 2.0, "peer_s": 7.0, "ratio": 3.5, "ratio_cpu": 4.25,
                                      "note": "same network"}},
        "notes": "Both sides on the same tensors.",
    }))
    (root / "beta_peer.json").write_text(json.dumps({
        "benchmark": "beta vs peerlib", "command": "python benchmarks/bench_beta_peer.py",
        "verdict": "speed: ours/theirs = 2.40x (PASS)",
        "speed_ratio_ours_over_theirs": 2.4, "speed_pass": True,
        "ours": {"seconds": 10.0, "images_per_s": 240.0, "knn": {"acc": 0.92}},
        "theirs": {"seconds": 24.0, "images_per_s": 100.0, "knn": {"acc": 0.91}},
        "episodes": [0.5 + i / 1000 for i in range(500)],
        "cells": [{"task": f"t{i}", "ours": i, "theirs": i + 1, "ok": i % 2 == 0} for i in range(100)],
    }))
    (root / "beta_peer_tables.json").write_text(json.dumps([{"scenario": "s1", "table": [{"a": 1, "b": 2.5}]}]))
    _png(root / "alpha_mnist.png")
    _png(root / "unrelated.png")
    return root


def test_page_has_sections_peers_and_plots(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    assert is_benchmark_folder(root)
    page = write_bench_report(root)
    md = page.markdown
    assert page.path == root / "REPORT.md" and page.path.read_text(encoding="utf-8") == md
    assert not page.warnings
    for name in ("alpha.json", "beta_peer.json", "beta_peer_tables.json"):
        assert f"\n## {name}\n" in md, name
        assert f"](#{name.replace('.', '')})" in md  # in the table of contents
    # the rows table through render_benchmark: accuracy in %, CI half-width; lists shortened
    assert "| mnist | dann | acc (%) | 91.23 | ± 0.42 | 3 |" in md
    assert "… (50 values)" in md and "… (500 values)" in md and str(list(range(50))) not in md
    assert "_First 40 of 100 items shown" in md
    # ours / theirs side by side
    assert "| field | ours | theirs |" in md and "| images_per_s | 240 | 100 |" in md
    # Peers: both the ratios block and the ratio-named key, with the flags of the files
    peers = md.split("\n## Peers\n", 1)[1].split("\n## ", 1)[0]
    assert "| training epoch | 2 | 7 | 3.50× | ratio_cpu: 4.25 | same network |" in peers
    assert "speed_ratio_ours_over_theirs" in peers and "2.40×" in peers and "| 10 | 24 |" in peers
    assert "speed_pass: true" in peers and "cells.ok: 50 of 100 true" in peers
    # plots: the matching one in alpha's section, the other under Other plots, relative links
    alpha = md.split("\n## alpha.json\n", 1)[1].split("\n## ", 1)[0]
    assert "![alpha_mnist.png](alpha_mnist.png)" in alpha
    assert "\n## Other plots\n\n![unrelated.png](unrelated.png)" in md
    assert "detail tables written with [beta_peer.json](#beta_peerjson)" in md
    assert [p.name for p in page.images] == ["alpha_mnist.png", "unrelated.png"]


def test_image_links_are_relative_to_the_page(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    page = write_bench_report(root, tmp_path / "pages")
    assert page.path == tmp_path / "pages" / "REPORT.md"
    assert "![alpha_mnist.png](../results/alpha_mnist.png)" in page.markdown
    assert not (root / "REPORT.md").exists()


def test_a_corrupt_file_is_named_and_the_others_still_render(tmp_path: Path, cli) -> None:
    """Decision: a bad file does not stop the page; its section and the Problems list say why."""
    root = _folder(tmp_path)
    (root / "broken.json").write_text('{"rows": [', encoding="utf-8")
    (root / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    md, files, _, peers, warnings = render_bench_page(root)
    assert [f.name for f in files if f.error] == ["broken.json", "latin1.json"]
    assert any("broken.json" in w and "invalid JSON" in w for w in warnings)
    assert any("latin1.json" in w and "UTF-8" in w for w in warnings)
    assert "\n## Problems\n" in md and "\n## broken.json\n\n**Could not be rendered:** `broken.json` is invalid JSON" in md
    assert "\n## alpha.json\n" in md and "91.23" in md and len(peers) == 2
    code, out, err = cli(["report", str(root)])
    assert code == 0, err
    assert "broken.json" in err and "invalid JSON" in err and "Written:" in out
    assert (root / "REPORT.md").is_file()


def test_cli_dispatch_benchmark_folder_vs_runs_folder(tmp_path: Path, cli) -> None:
    root = _folder(tmp_path)
    code, out, err = cli(["report", str(root)])
    assert code == 0, err
    assert "# Benchmark report: results" in out and (root / "REPORT.md").is_file()
    # a metrics.json below makes it a runs folder, whatever JSON sits at the top
    run = root / "uda-x" / "default" / "seed-0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{")
    assert not is_benchmark_folder(root)
    assert not is_benchmark_folder(tmp_path / "missing") and not is_benchmark_folder(tmp_path / "results" / "uda-x")
    code, out, err = cli(["report", str(root)])
    assert code != 0 and "Benchmark report" not in out


def test_no_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ShiftlabError, match=r"No benchmark result \(\*.json\)"):
        load_bench_files(tmp_path)


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no benchmarks/results folder")
def test_every_stored_result_has_a_section() -> None:
    md, files, images, peers, warnings = render_bench_page(RESULTS)
    names = sorted(p.name for p in RESULTS.glob("*.json"))
    assert names and [f.name for f in files] == names
    assert not warnings
    for name in names:
        assert f"\n## {name}\n" in md, name
    for png in RESULTS.glob("*.png"):
        assert f"![{png.name}]({png.name})" in md
    assert peers == peer_ratios(files) and "\n## Peers\n" in md
