"""Entropy-based losses on class predictions (used by CDAN+E, MCC, Tent, MEMO, ...).

Shapes: logits ``[B, C]``; per-sample values ``[B]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["entropy", "entropy_weights", "mean_entropy", "minimum_class_confusion"]


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy ``H(softmax(logits))`` in nats, per sample: ``[B, C] -> [B]``."""
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def mean_entropy(logits: Tensor) -> Tensor:
    """Mean per-sample entropy (scalar), the objective of entropy minimisation
    (Grandvalet & Bengio, NeurIPS 2004; Tent, Wang et al. ICLR 2021)."""
    return entropy(logits).mean()


def entropy_weights(logits: Tensor) -> Tensor:
    """``1 + exp(-H)`` per sample, ``[B]``, without gradient: confident samples weigh more.

    Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018 (CDAN+E), eq. (9).
    """
    with torch.no_grad():
        return 1.0 + torch.exp(-entropy(logits))


def minimum_class_confusion(logits: Tensor, temperature: float) -> Tensor:
    """The MCC loss of Jin et al., "Minimum Class Confusion for Versatile Domain
    Adaptation", ECCV 2020 (eqs. 1-6): the off-diagonal mass of the entropy-weighted,
    row-normalised class-confusion matrix of the target predictions, divided by ``C``.

    Args:
        logits: target logits ``[B, C]``.
        temperature: probability rescaling ``softmax(logits / T)`` (paper: 2.5; 3 on digits).

    Returns:
        Scalar in ``[0, 1)``; 0 when every prediction is one-hot.
    """
    b, c = logits.shape
    probs = torch.softmax(logits / temperature, dim=1)  # [B, C]
    w = entropy_weights(logits / temperature)
    w = b * w / w.sum()  # [B], sums to B
    confusion = (probs * w[:, None]).T @ probs  # [C, C]
    confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (confusion.sum() - confusion.trace()) / c
