"""Entropy, class-confusion and mutual-information losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from shiftlab.losses.entropy import entropy, entropy_weights, minimum_class_confusion
from shiftlab.losses.mutual_info import dot_critic, jsd_mi


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_jsd_bound_matches_a_hand_computed_case() -> None:
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    positive = torch.tensor([[True, False, False], [False, True, True]])
    e_pos = (-softplus(-2.0) - softplus(-1.0) - softplus(2.0)) / 3
    e_neg = (softplus(-1.0) + softplus(0.5) + softplus(0.0)) / 3
    assert jsd_mi(scores, positive).item() == pytest.approx(e_pos - e_neg, abs=1e-6)


def test_jsd_bound_grows_when_positives_score_higher() -> None:
    positive = torch.eye(4, dtype=torch.bool)
    aligned = jsd_mi(torch.where(positive, 5.0, -5.0), positive)
    random = jsd_mi(torch.zeros(4, 4), positive)
    assert random.item() == pytest.approx(-2 * math.log(2), abs=1e-6)  # independent: -2 log 2
    assert aligned.item() > -0.02  # near its maximum 0
    with pytest.raises(ValueError, match="shape"):
        jsd_mi(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool))


def test_dot_critic_is_scaled_cosine() -> None:
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0]])
    out = dot_critic(a, b, temperature=0.5)
    assert out.shape == (2, 1)
    assert torch.allclose(out, torch.full((2, 1), (1 / math.sqrt(2)) / 0.5))


def test_entropy_and_weights() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = entropy(logits)
    assert h[0].item() == pytest.approx(math.log(4), abs=1e-6)
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)
    w = entropy_weights(logits)
    assert w[0].item() == pytest.approx(1.25, abs=1e-6) and w[1].item() == pytest.approx(2.0, abs=1e-6)


def test_class_confusion_is_zero_for_one_hot_and_known_for_uniform() -> None:
    c = 5
    one_hot = 50.0 * torch.eye(c).repeat(4, 1)  # confident, every class predicted
    assert minimum_class_confusion(one_hot, temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(20, c)
    # every row of the normalised confusion matrix is uniform: off-diagonal mass (C - 1) / C
    assert minimum_class_confusion(uniform, temperature=2.5).item() == pytest.approx((c - 1) / c, abs=1e-6)
