"""Entropy-based losses on class predictions (used by CDAN+E, MCC, Tent, MEMO, ...).

Shapes: logits ``[B, C]``; per-sample values ``[B]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "entropy",
    "entropy_weights",
    "marginal_entropy",
    "mean_entropy",
    "minimum_class_confusion",
    "soft_cross_entropy",
]


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


def marginal_entropy(logits: Tensor) -> Tensor:
    """Entropy of the *average* prediction over a batch (scalar): over views of one input
    (MEMO's objective), or over a batch of inputs (SHOT's diversity term, to be maximised).

    ``H(p_bar)`` with ``p_bar = mean_b softmax(logits_b)``, computed in log space
    (``log p_bar = logsumexp_b log_softmax(logits_b) - log B``). The MEMO objective:
    Zhang, Levine & Finn, "MEMO: Test Time Robustness via Adaptation and Augmentation",
    NeurIPS 2022, eq. 1.

    Args:
        logits: ``[B, C]``, the logits of ``B`` augmented copies of one test point.
    """
    logp = torch.log_softmax(logits, dim=1)
    log_mean = torch.logsumexp(logp, dim=0) - math.log(logits.shape[0])  # [C]
    return -(log_mean.exp() * log_mean).sum()


def soft_cross_entropy(logits: Tensor, target_logits: Tensor) -> Tensor:
    """Per-sample cross-entropy ``-sum_c softmax(target)_c log softmax(logits)_c``: ``[B]``.

    The teacher-student consistency loss of CoTTA (Wang et al., CVPR 2022, eq. 2); the
    target is not differentiated.
    """
    with torch.no_grad():
        target = torch.softmax(target_logits, dim=1)
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)
