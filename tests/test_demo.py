"""`shiftlab demo --quick` runs end to end on embedded data with no data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from shiftlab.demo import run_demo


def test_quick_demo_runs_and_writes_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFTLAB_DATA", str(tmp_path / "no-data-here"))  # the demo needs none
    result = run_demo(tmp_path / "demo", quick=True, progress=False)
    assert "digits/test" in result.markdown and "digits_m/test" in result.markdown
    for fig in result.figures:
        assert fig.is_file() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # trained in-domain beats the shifted sets, and everything beats chance (10%)
    assert result.metrics["digits/test"] > 0.6
    assert result.metrics["digits/test"] > result.metrics["digits_m/test"]
    # the adaptation and few-shot stages ran and reported their numbers
    assert "Domain-adaptation stage" in result.markdown and "Few-shot stage" in result.markdown
    for key in ("uda/source_only/digits_m/test", "uda/dann/digits_m/test", "uda/adamatch/digits_m/test"):
        assert 0.0 < result.metrics[key] <= 1.0
    assert (tmp_path / "demo" / "fewshot_accuracy.png").is_file()
    # the test-time adaptation stage: BatchNorm adaptation and Tent beat the source model
    assert "Test-time adaptation stage" in result.markdown
    assert result.metrics["tta/tent/err"] < 0.6 * result.metrics["tta/source/err"]
    assert result.metrics["tta/norm/err"] < 0.6 * result.metrics["tta/source/err"]
    assert (tmp_path / "demo" / "tta_errors.png").is_file()
    # data selection: fine-tuning on the whole digits_m pool beats a quarter of it chosen at random
    assert result.metrics["transfer/full/acc"] > result.metrics["transfer/random@0.25/acc"]
    assert (tmp_path / "demo" / "transfer_curves.png").is_file()
    assert "PINN stage" in result.markdown and (tmp_path / "demo" / "pinn_sir.png").is_file()
    # self-supervised stage: BYOL raises the k-NN accuracy of the features above the random
    # initialisation, and every setting with 10 labels per class is well above chance (10%)
    assert "Self-supervised pre-training stage" in result.markdown
    assert result.metrics["ssl/knn_acc"] > result.metrics["ssl/init_knn_acc"] + 0.05
    assert all(result.metrics[f"ssl/{s}/acc"] > 0.4 for s in "ABCDE")
    assert (tmp_path / "demo" / "ssl_settings.png").is_file()
