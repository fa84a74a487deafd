"""shiftlab's corruptions against the reference package ``imagecorruptions`` 1.1.2.

For every corruption at severities 1, 3 and 5, on the same real images (MNIST-M test
images, 32 x 32 RGB, and MNIST test digits edge-padded to 32 x 32 as the peer requires,
compared on the 28 x 28 window), the mean absolute change from the clean image must agree
within 15 % (relative). 64 images per set, 256 for the corruptions with a large per-image
random component (frost's texture, snow's few large flakes, fog's fractal), whose mean
over 64 images varies by up to about 15 % between seeds in either library. shiftlab uses ``table="imagenet"``, the table ``imagecorruptions``
applies at every size (Hendrycks & Dietterich, ICLR 2019).

``imagecorruptions`` is not a dependency: it lives in the virtual environment that
``benchmarks/bench_shifts.py`` creates (``benchmarks/.venvs/imagecorruptions``, needs PyPI
once); without it these tests skip. They never touch the network.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_shifts.py"
SEVERITIES = [1, 3, 5]
N_IMAGES = 64
N_IMAGES_HIGH_VARIANCE = 256
HIGH_VARIANCE = ["snow", "frost", "fog"]
TOLERANCE = 0.15


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shiftlab_bench_shifts", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
CORRUPTIONS = list(bench.CORRUPTIONS)
PEER_PYTHON = bench.peer_python()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PEER_PYTHON.exists(),
        reason=(
            f"reference venv {PEER_PYTHON.parent.parent} is absent; create it once (needs PyPI) "
            "with `python benchmarks/bench_shifts.py --n 16 --out /tmp/shifts.json`"
        ),
    ),
]


@pytest.fixture(scope="module")
def comparison(shared_data: Path) -> dict[str, Any]:
    """Mean absolute change of both libraries per ``corruption/severity/size``."""
    groups = [
        ([c for c in CORRUPTIONS if c not in HIGH_VARIANCE], N_IMAGES),
        (HIGH_VARIANCE, N_IMAGES_HIGH_VARIANCE),
    ]
    out: dict[str, Any] = {}
    for names, n in groups:
        sets = {"28": bench.load_mnist(shared_data, n), "32": bench.load_mnist_m(shared_data, n)}
        for size, images in sets.items():
            padded, crop = bench.pad_to(images, 32)
            peer, _ = bench.run_peer(PEER_PYTHON, padded, names, SEVERITIES, 0, crop)
            ours, _ = bench.run_ours(padded, names, SEVERITIES, 0, crop)
            for ci, name in enumerate(names):
                for si, sev in enumerate(SEVERITIES):
                    out[f"{name}/{sev}/{size}"] = (
                        float(ours[ci, si].mean()),
                        float(peer[ci, si].mean()),
                    )
    return out


@pytest.mark.parametrize("size", ["28", "32"])
@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_mean_abs_change_matches_imagecorruptions(
    name: str, severity: int, size: str, comparison: dict[str, Any]
) -> None:
    ours, peer = comparison[f"{name}/{severity}/{size}"]
    assert peer > 0
    rel = (ours - peer) / peer
    assert abs(rel) <= TOLERANCE, f"shiftlab {ours:.4f} vs imagecorruptions {peer:.4f} ({rel:+.1%})"
    assert np.isfinite(ours)
