"""The seeds' embedding shift: the autoencoder reconstructs at level 0, levels change images more,
the cache is keyed on config and data, and the registry entry explains itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shiftlab.data.embedding_shift import (
    AutoencoderConfig,
    EmbeddingShift,
    cached_autoencoder,
    data_hash,
    train_autoencoder,
)
from shiftlab.data.shifts import SHIFTS, apply_shift
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import to_float
from shiftlab.data.transforms import fit_dataset
from shiftlab.errors import ShiftlabError

#: Measured 2026-12-02: after 8 epochs (batch 64, width 16) on the 1,347 embedded training digits at
#: 28 px (about 7 s on one core) the level-0 reconstruction MSE on the 450 held-out digits is 0.0033
#: (pixels in [0, 1]; predicting black everywhere gives 0.10); the bound leaves room for platform
#: differences.
RECON_MSE_BOUND = 0.01


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    train = fit_dataset(load_dataset("digits", "train"), 28, 1)
    test = fit_dataset(load_dataset("digits", "test"), 28, 1)
    return train.x, test.x


@pytest.fixture(scope="module")
def trained(digits):
    return train_autoencoder(digits[0], AutoencoderConfig(width=16, epochs=8, batch_size=64, lr=2e-3), seed=0)


def test_level_zero_reconstructs_held_out_digits_within_the_bound(trained, digits) -> None:
    ae, info = trained
    x = to_float(digits[1])
    out = EmbeddingShift(ae)(x, 0.0)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    mse = torch.mean((out - x) ** 2).item()
    assert mse < RECON_MSE_BOUND, f"held-out reconstruction mse {mse:.5f}"
    assert info.recon_mse < RECON_MSE_BOUND and info.code_std > 0 and info.train_images == len(digits[0])


def test_larger_levels_change_images_more(trained, digits) -> None:
    ae, info = trained
    x = to_float(digits[1][:200])
    shift = EmbeddingShift(ae, batch_size=64)
    change = [(shift(x, lv) - x).abs().mean().item() for lv in (0.0, 0.5 * info.code_std, 2 * info.code_std)]
    assert change[0] < change[1] < change[2]
    assert change[2] > 2 * change[0]
    assert torch.equal(shift(x, 1.0), shift(x, 1.0))  # deterministic


def test_cache_is_keyed_on_config_and_data(tmp_path: Path, digits) -> None:
    x = digits[0][:256]
    cfg = AutoencoderConfig(width=8, epochs=1, batch_size=64)
    a, ia = cached_autoencoder(x, cfg, tmp_path)
    b, ib = cached_autoencoder(x, cfg, tmp_path)
    assert ia.origin == "trained" and ib.origin == "cached" and ib.recon_mse == pytest.approx(ia.recon_mse)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    _, ic = cached_autoencoder(digits[0][:320], cfg, tmp_path)  # other images: trained again
    assert ic.origin == "trained" and ic.data_hash != ia.data_hash
    assert data_hash(x) == ia.data_hash


def test_registry_entry_explains_what_it_needs() -> None:
    assert SHIFTS.entry("embedding_shift").tags["needs"] == "autoencoder"
    with pytest.raises(ShiftlabError, match="trained autoencoder"):
        apply_shift("embedding_shift", torch.zeros(1, 1, 8, 8), 1, torch.Generator())


def test_bad_shapes_are_clear_errors(trained) -> None:
    ae, _ = trained
    with pytest.raises(ValueError, match="multiples of 4"):
        EmbeddingShift(ae)(torch.zeros(2, 1, 30, 30), 0.0)
    with pytest.raises(ValueError, match="1-channel"):
        EmbeddingShift(ae)(torch.zeros(2, 3, 28, 28), 0.0)
