from __future__ import annotations

import pytest

from shiftlab.registry import Registry, UnknownNameError


def test_register_get_names_and_close_match_hint() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("alpha", summary="first", paper="A et al. 2020", family="x")
    def alpha() -> int:
        return 1

    reg.register("beta", summary="second")(lambda: 2)
    assert reg.names() == ["alpha", "beta"]
    assert reg.get("alpha") is alpha
    assert "alpha" in reg and len(reg) == 2
    assert reg.entry("alpha").as_dict() == {"name": "alpha", "summary": "first", "paper": "A et al. 2020", "family": "x"}
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    msg = str(info.value)
    assert "Unknown widget 'alpah'" in msg and "Did you mean 'alpha'" in msg and "beta" in msg


def test_duplicate_registration_is_an_error() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("a", summary="")(object)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", summary="")(object)
