"""Mutual-information lower bounds with a critic (Jensen-Shannon and InfoNCE).

The Jensen-Shannon (JSD) estimator of Nowozin et al. (f-GAN, NeurIPS 2016), as used for
representation learning by Hjelm et al., "Learning deep representations by mutual
information estimation and maximization" (DIM), ICLR 2019, eq. (4), and for cross-domain
alignment by Sharma et al., "MaNi: Maximizing Mutual Information for Nuclei Cross-Domain
Unsupervised Segmentation", MICCAI 2022:

    I_JSD(A; B) >= E_{(a, b) ~ P_AB}[-softplus(-T(a, b))] - E_{a ~ P_A, b' ~ P_B}[softplus(T(a, b'))]

Here pairs are given by a boolean ``positive`` mask over a critic score matrix ``[M, N]``
(e.g. same-class source/target pairs); every other entry is a negative pair.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["jsd_mi", "dot_critic"]


def dot_critic(a: Tensor, b: Tensor, temperature: float = 1.0) -> Tensor:
    """Separable critic ``T(a_i, b_j) = <a_i, b_j> / temperature`` for L2-normalised
    projections: ``a: [M, D]``, ``b: [N, D]`` -> scores ``[M, N]``."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature


def jsd_mi(scores: Tensor, positive: Tensor) -> Tensor:
    """The JSD lower bound on mutual information (see the module docstring).

    Args:
        scores: critic values ``T`` of every pair, ``[M, N]``.
        positive: ``[M, N]`` bool, True where the pair is drawn from the joint.

    Returns:
        Scalar estimate (maximise it; its negative is a loss). Pairs of a kind that is
        absent contribute 0 to their term.
    """
    if scores.shape != positive.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positive {tuple(positive.shape)} differ in shape")
    pos = positive.to(scores.dtype)
    neg = 1.0 - pos
    e_pos = (-F.softplus(-scores) * pos).sum() / pos.sum().clamp_min(1.0)
    e_neg = (F.softplus(scores) * neg).sum() / neg.sum().clamp_min(1.0)
    return e_pos - e_neg
