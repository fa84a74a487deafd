"""Self-supervised (two-view) losses: BYOL, SimSiam, SimCLR's NT-Xent.

Written here rather than imported from ``lightly`` (never a dependency of shiftlab, see
DESIGN.md) because each is a few lines; the semantics follow the papers cited on each
function. Every loss takes the outputs of the two views of the same images, rows aligned:
row ``i`` of the first view and row ``i`` of the second come from image ``i``.

Shapes: ``[B, D]`` float for predictions ``p`` and projections ``z``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "byol_loss",
    "byol_symmetric_loss",
    "negative_cosine",
    "nt_xent_loss",
    "simsiam_loss",
]


def _check_pair(a: Tensor, b: Tensor, name: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{name}: expected two [B, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)`` averaged over the batch.

    Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020, eq. (2): the mean squared error between the l2-normalised online
    prediction and target projection, ``||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)``. ``z``
    is detached (the target receives no gradient).

    Args:
        p: ``[B, D]`` online predictions.
        z: ``[B, D]`` target projections of the other view.

    Returns:
        Scalar in ``[0, 4]``.
    """
    _check_pair(p, z, "byol_loss")
    return (2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def byol_symmetric_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """BYOL's symmetrised loss ``L + L~`` (Grill et al. 2020, sec. 3.1): each view's
    prediction regresses the target projection of the *other* view.

    Swapping the views (``p1 <-> p2``, ``z1 <-> z2``) gives exactly the same value.

    Args:
        p1, p2: ``[B, D]`` online predictions of view 1 and view 2.
        z1, z2: ``[B, D]`` target projections of view 1 and view 2.

    Returns:
        Scalar in ``[0, 8]``.
    """
    return byol_loss(p1, z2) + byol_loss(p2, z1)


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's ``D(p, z) = -cos(p, stopgrad(z))`` averaged over the batch (Chen & He 2021, eq. 1)."""
    _check_pair(p, z, "negative_cosine")
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's symmetrised loss ``D(p1, z2) / 2 + D(p2, z1) / 2`` with stop-gradient on ``z``.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. (2).

    Args:
        p1, p2: ``[B, D]`` predictor outputs of view 1 and view 2.
        z1, z2: ``[B, D]`` projections of view 1 and view 2 (detached here).

    Returns:
        Scalar in ``[-1, 1]`` (``-1``: perfectly aligned).
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (NT-Xent) over ``2B`` views.

    Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020, eq. (1): for each of the ``2B`` views, the other
    view of its image is the positive and the remaining ``2B - 2`` views are negatives;
    similarities are cosines divided by ``temperature``; the loss is the mean over all
    ``2B`` anchors (both orders of every positive pair).

    Args:
        z1, z2: ``[B, D]`` projections of the two views.
        temperature: tau > 0.

    Returns:
        Scalar, at least 0; ``log(2B - 1)`` when all similarities are equal.
    """
    _check_pair(z1, z2, "nt_xent_loss")
    if temperature <= 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature  # [2B, 2B]
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)
