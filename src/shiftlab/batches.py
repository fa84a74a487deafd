"""Typed batches passed to methods: never bare tuples whose order must be remembered."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Labeled:
    """A labelled batch.

    Attributes:
        x: ``[B, C, H, W]`` float in [0, 1] (or ``[B, D]`` for vector data).
        y: ``[B]`` int64 class indices.
    """

    x: Tensor
    y: Tensor

    def to(self, device: torch.device | str) -> Labeled:
        return Labeled(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


@dataclass(frozen=True)
class DomainPair:
    """A labelled source batch and an unlabelled target batch (unsupervised domain adaptation).

    Attributes:
        source: labelled source batch, ``x: [B, C, H, W]``.
        target_x: ``[B', C, H, W]`` unlabelled target images.
    """

    source: Labeled
    target_x: Tensor

    def to(self, device: torch.device | str) -> DomainPair:
        return DomainPair(self.source.to(device), self.target_x.to(device, non_blocking=True))


@dataclass(frozen=True)
class Episode:
    """An N-way K-shot Q-query few-shot episode, labels re-indexed to ``0..N-1``.

    Attributes:
        support_x: ``[N*K, C, H, W]``.
        support_y: ``[N*K]`` int64 in ``[0, N)``.
        query_x: ``[N*Q, C, H, W]``.
        query_y: ``[N*Q]`` int64 in ``[0, N)``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device: torch.device | str) -> Episode:
        return Episode(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


@dataclass(frozen=True)
class Views:
    """Two augmented views of the same images (self-supervised learning).

    Attributes:
        v1: ``[B, C, H, W]``.
        v2: ``[B, C, H, W]``.
    """

    v1: Tensor
    v2: Tensor

    def to(self, device: torch.device | str) -> Views:
        return Views(self.v1.to(device), self.v2.to(device))
