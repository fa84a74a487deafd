"""Optimizer and learning-rate schedule factories, passed to methods as collaborators."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class OptimizerFactory:
    """Builds an optimizer for a parameter list.

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: learning rate.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: SGD momentum (ignored by Adam).
        nesterov: SGD Nesterov momentum.
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False

    def __call__(self, params: Iterable[nn.Parameter] | Iterable[dict], lr_scale: float = 1.0) -> torch.optim.Optimizer:
        lr = self.lr * lr_scale
        if self.name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov
            )
        raise ValueError(f"unknown optimizer {self.name!r}; use adam, adamw or sgd")


def lr_factor(schedule: str, progress: float, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of training.

    Args:
        schedule: ``constant``, ``cosine``, or ``dann`` (Ganin et al. 2016's annealing
            ``1 / (1 + 10 p) ** 0.75``).
        progress: fraction of training done.
        warmup: fraction of training with a linear warm-up.
    """
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if schedule == "dann":
        return (1.0 + 10.0 * progress) ** -0.75
    raise ValueError(f"unknown schedule {schedule!r}; use constant, cosine or dann")
