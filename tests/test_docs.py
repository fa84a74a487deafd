"""The reliability page names the test proving each fault; every such name must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_reliability_page_exists() -> None:
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text))
    assert len(named) > 40  # the page lists the tests of every fault
    missing = [f"{f}::{fn}" for f, fn in sorted(named)
               if not (REPO / f).is_file() or not re.search(rf"^def {fn}\b", (REPO / f).read_text(), re.M)]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    for f in re.findall(r"`(tests/reliability/\w+\.py)`", text):
        assert (REPO / f).is_file(), f
