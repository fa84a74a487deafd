"""Self-supervised losses (BYOL, SimSiam, NT-Xent) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from shiftlab.losses.ssl import (
    byol_loss,
    byol_symmetric_loss,
    negative_cosine,
    nt_xent_loss,
    simsiam_loss,
)


def test_byol_loss_is_two_minus_two_cosine() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    z = torch.tensor([[5.0, 0.0], [0.0, -1.0], [4.0, 3.0]])  # cos = 1, -1, 24/25
    expected = ((2 - 2 * 1) + (2 + 2) + (2 - 2 * 24 / 25)) / 3
    assert byol_loss(p, z).item() == pytest.approx(expected, abs=1e-6)
    # the normalised MSE form of Grill et al. eq. (2)
    mse = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    assert byol_loss(p, z).item() == pytest.approx(mse.item(), abs=1e-6)


def test_byol_symmetric_loss_is_exactly_symmetric_and_stops_target_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(16, 8, generator=g) for _ in range(4))
    p1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = byol_symmetric_loss(p1, p2, z1, z2)
    assert loss.item() == byol_symmetric_loss(p2, p1, z2, z1).item()  # bitwise: a + b == b + a
    assert loss.item() == pytest.approx(byol_loss(p1, z2).item() + byol_loss(p2, z1).item(), abs=1e-6)
    loss.backward()
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert z2.grad is None  # the target projection is detached


def test_simsiam_loss_values_and_stop_gradient() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    assert negative_cosine(z, z).item() == pytest.approx(-1.0)
    assert negative_cosine(z, -z).item() == pytest.approx(1.0)
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0]], requires_grad=True)
    loss = simsiam_loss(p, p, z, z)  # cos = 1/sqrt(2) and 1
    assert loss.item() == pytest.approx(-(1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_nt_xent_matches_the_definition() -> None:
    # all similarities equal: each anchor picks its positive among 2B - 1 candidates uniformly
    z = torch.ones(4, 3)
    assert nt_xent_loss(z, z.clone(), 0.5).item() == pytest.approx(math.log(7), abs=1e-6)
    # a hand-computed case: B = 2, orthogonal pairs
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # anchor 0 (z1[0]): positive z2[0] (cos 1), negatives z1[1], z2[1] (cos 0)
    per_anchor = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0.0)))
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(per_anchor, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert nt_xent_loss(a, b, 0.1).item() == pytest.approx(nt_xent_loss(b, a, 0.1).item(), abs=1e-5)
    # aligned views score lower than random pairs
    assert nt_xent_loss(a, a + 0.01 * b, 0.1) < nt_xent_loss(a, b, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(a, b, 0.0)
    with pytest.raises(ValueError, match="shape"):
        nt_xent_loss(a, b[:4], 0.1)
