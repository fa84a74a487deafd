"""Metric-learning losses: triplet (with batch-hard and semi-hard mining) and contrastive.

Written here rather than imported from ``pytorch-metric-learning`` because the few
functions needed are short, and shiftlab keeps its core dependencies small; the
semantics follow the papers cited on each function.

Shapes: embeddings ``[B, D]``; labels ``[B]`` int64; distances are squared Euclidean
unless stated otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "batch_hard_triplet_loss",
    "contrastive_loss",
    "pairwise_sq_dists",
    "semihard_triplet_loss",
    "triplet_loss",
]


def pairwise_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[M, N]`` between ``a: [M, D]`` and ``b: [N, D]`` (clamped at 0)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_min(0.0)


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """Mean of ``max(0, d(a, p) - d(a, n) + margin)`` over given triplets (squared distances).

    Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face Recognition
    and Clustering", CVPR 2015, eq. (1).

    Args:
        anchor, positive, negative: ``[B, D]`` embeddings.
        margin: the margin alpha.
    """
    d_ap = (anchor - positive).pow(2).sum(1)
    d_an = (anchor - negative).pow(2).sum(1)
    return F.relu(d_ap - d_an + margin).mean()


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def batch_hard_triplet_loss(emb: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss: for each anchor, its farthest positive and nearest negative.

    Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
    2017. Anchors without a positive or a negative in the batch are skipped.

    Args:
        emb: ``[B, D]`` embeddings.
        labels: ``[B]`` class ids.
        margin: the margin.
    """
    d = pairwise_sq_dists(emb, emb)
    pos, neg = _masks(labels)
    hardest_pos = d.masked_fill(~pos, float("-inf")).amax(1)
    hardest_neg = d.masked_fill(~neg, float("inf")).amin(1)
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return emb.sum() * 0.0
    return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()


def semihard_triplet_loss(emb: Tensor, labels: Tensor, margin: float) -> Tensor:
    """FaceNet's semi-hard mining over all (anchor, positive) pairs in the batch.

    For each anchor-positive pair, the negative is the nearest one *farther* than the
    positive (``d(a, p) < d(a, n)``); when none is farther, the farthest negative is used
    (as TensorFlow Addons' ``TripletSemiHardLoss``). Schroff et al., CVPR 2015, sec. 3.2.

    Args:
        emb: ``[B, D]`` embeddings.
        labels: ``[B]`` class ids.
        margin: the margin.
    """
    d = pairwise_sq_dists(emb, emb)
    pos, neg = _masks(labels)
    ai, pi = torch.nonzero(pos, as_tuple=True)
    if len(ai) == 0 or not neg.any():
        return emb.sum() * 0.0
    d_ap = d[ai, pi]  # [P]
    d_an = d[ai]  # [P, B]
    negm = neg[ai]
    farther = negm & (d_an > d_ap[:, None])
    semi = d_an.masked_fill(~farther, float("inf")).amin(1)
    fallback = d_an.masked_fill(~negm, float("-inf")).amax(1)
    chosen = torch.where(torch.isfinite(semi), semi, fallback)
    keep = negm.any(1)
    return F.relu(d_ap[keep] - chosen[keep] + margin).mean()


def contrastive_loss(dist: Tensor, same: Tensor, margin: float) -> Tensor:
    """Contrastive loss on Euclidean distances ``dist: [B]`` of pairs with ``same: [B]`` in {0, 1}.

    ``same * d^2 + (1 - same) * max(0, margin - d)^2``, averaged (Hadsell, Chopra & LeCun,
    "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006).
    """
    return (same * dist.pow(2) + (1 - same) * F.relu(margin - dist).pow(2)).mean()
