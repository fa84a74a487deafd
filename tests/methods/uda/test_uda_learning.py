"""UDA methods learn on the embedded digits -> digits_m pair (real images, no data folder).

Alignment methods (DANN, CDAN, MCC, mi_align) run the DANN paper's network with BatchNorm and
per-image input standardisation (``ganin_cnn``, ``norm=True``, ``input_norm=True``) and
forward source and target separately (``domain_forward='separate'``), 15 epochs, batch 32;
source only trains the same network. The target metric pools the unlabelled digits_m training
digits the methods adapted on (transductive, 1,347) with the 450 test digits: 1,797 images.
On this small pair one seed's gain is noisy (3 to 13 points, and it moves by about 2 points
between CPUs and processes), so the test asserts the gain of the mean over seeds 0 and 1.
Measured 2026-12-04, one thread, seeds 0 / 1 / 2: source only 55.54 / 59.65 / 58.54%; dann
(discriminator on the features) 62.94 / 66.61 / 61.60, cdan 59.82 / 66.17 / 62.44, mcc
68.67 / 64.00 / 61.88, mi_align 63.38 / 66.00 / 62.94%: mean gains over seeds 0 and 1 of 7.2 /
5.4 / 8.7 / 7.1 points. Without ``input_norm`` dann gained 1.6 to 6.8 points on seed 0 (across
processes and days) and lost 2.9 on seed 1, and the discriminator's input (features rather than
the trunk) was chosen on seed 0 of this pair, so the asserted 3 points are a regression guard,
not a benchmark claim; MNIST-scale accuracy is benchmarked by benchmarks/bench_uda.py.

AdaMatch is tested on LeNet (no BatchNorm, logit interpolation off): 50.7% -> 72.9% on the
450 test digits after 10 epochs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shiftlab.config import load_recipe
from shiftlab.experiment.run import Experiment, RunOptions
from shiftlab.methods.uda.diagnostics import proxy_a_distance


def _run(tmp: Path, method: str, hparams: dict | None = None, epochs: int = 10,
         backbone: dict | None = None, seed: int = 0) -> tuple[dict, Path]:
    raw = {
        "name": f"uda-{method}",
        "data": {"source": "digits", "target": "digits_m", "image_size": 28, "channels": 3,
                 "eval": [{"name": "digits_m", "split": "test"}, {"name": "digits_m", "split": "train"}]},
        "backbone": backbone or {"name": "lenet"},
        "method": {"name": method, "hparams": hparams or {}},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-3},
        "seeds": [seed],
    }
    rec, ov = load_recipe(raw)
    exp = Experiment(rec, ov, RunOptions(runs_dir=tmp / "runs", progress=False))
    return exp.run_seed(seed), exp.run_dir(seed)


def _pooled_target_accuracy(metrics: dict) -> float:
    """Accuracy over all 1,797 digits_m images (450 test + 1,347 unlabelled training)."""
    m = metrics["metrics"]
    return (450 * m["digits_m/test/acc"] + 1347 * m["digits_m/train/acc"]) / 1797


BN_NET = {"name": "ganin_cnn", "args": {"norm": True, "input_norm": True}}
ALIGNMENT_SEEDS = (0, 1)


def _mean_pooled_accuracy(tmp: Path, method: str, hparams: dict) -> float:
    """Pooled target accuracy on :data:`BN_NET`, 15 epochs, averaged over :data:`ALIGNMENT_SEEDS`."""
    return sum(_pooled_target_accuracy(_run(tmp, method, hparams, epochs=15, backbone=BN_NET, seed=s)[0])
               for s in ALIGNMENT_SEEDS) / len(ALIGNMENT_SEEDS)
ALIGNMENT = {
    "dann": {"domain_forward": "separate", "disc_input": "features"},
    "cdan": {"domain_forward": "separate"},
    "mcc": {"domain_forward": "separate"},
    "mi_align": {"domain_forward": "separate", "disc_input": "features", "dann_epochs": 8, "mi_epochs": 7},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Batch-32 steps of a tiny CNN gain nothing from a second intra-op thread, and two
    OpenMP threads stall badly when the CI machine's other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def source_only(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run(tmp_path_factory.mktemp("so"), "source_only")[0]


@pytest.fixture(scope="module")
def source_only_bn(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Mean pooled target accuracy of source only over :data:`ALIGNMENT_SEEDS`."""
    return _mean_pooled_accuracy(tmp_path_factory.mktemp("so_bn"), "source_only", {})


def test_every_uda_method_is_tested_for_learning() -> None:
    from shiftlab.methods import METHODS

    uda = {n for n in METHODS.names() if METHODS.entry(n).tags.get("family") == "uda"}
    assert uda == {"source_only", "adamatch", *ALIGNMENT}, "a new UDA method needs a learning test here"


@pytest.mark.parametrize("method", sorted(ALIGNMENT))
def test_alignment_method_beats_source_only_on_digits_m_by_3_points_over_two_seeds(
    tmp_path: Path, source_only_bn: float, method: str
) -> None:
    so, ours = source_only_bn, _mean_pooled_accuracy(tmp_path, method, ALIGNMENT[method])
    assert so > 0.40  # a real baseline, far above 10% chance
    assert ours >= so + 0.03, f"{method} {ours:.4f} vs source_only {so:.4f}"


def test_adamatch_beats_source_only_on_digits_m_by_10_points(tmp_path: Path, source_only: dict) -> None:
    m, out = _run(tmp_path, "adamatch", {"logit_interpolation": False})
    so, ada = source_only["metrics"]["digits_m/test/acc"], m["metrics"]["digits_m/test/acc"]
    assert so > 0.30  # the source-only model is a real baseline, far above 10% chance
    assert ada >= so + 0.10, f"adamatch {ada:.3f} vs source_only {so:.3f}"
    # the run folder of a domain-adaptation run: per-epoch target accuracy, curves, embeddings
    for f in ("results.jsonl", "curves.png", "embedding_before.png", "embedding_after.png", "metrics.json"):
        assert (out / f).is_file(), f
    assert m["selection"].startswith("fixed schedule")


def test_proxy_a_distance_separates_shifted_from_identical_features() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g)
    same = torch.randn(400, 8, generator=g)
    shifted = torch.randn(400, 8, generator=g) + 1.5
    assert proxy_a_distance(a, same) < 0.3
    assert proxy_a_distance(a, shifted) > 1.5
    with pytest.raises(ValueError):
        proxy_a_distance(a[:2], same)
