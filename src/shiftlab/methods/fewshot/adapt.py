"""Functional forward passes and task heads for optimisation-based meta-learning (MAML, Reptile).

Fast weights are plain dicts of tensors used through :func:`torch.func.functional_call`,
so adapting to a task never mutates the module's own parameters. BatchNorm uses the
statistics of the batch it sees (the "transductive" setting of Finn et al. 2017 and
Nichol et al. 2018); evaluation passes copies of the buffers so the model is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from shiftlab.backbones.base import Backbone
from shiftlab.methods.fewshot.common import prototypes

HEAD_INITS = ("zero", "proto", "learned")

__all__ = ["HEAD_INITS", "Features", "TaskNet", "task_head"]


class Features(nn.Module):
    """Wraps a backbone so that ``forward`` returns ``forward_features`` (for ``functional_call``)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)


def task_head(
    init: str, feats: Tensor, labels: Tensor, n_way: int, learned: nn.Linear | None
) -> tuple[Tensor, Tensor]:
    """Initial task head ``(W [N, D], b [N])`` for an N-way task.

    Args:
        init: ``zero`` (zeros), ``proto`` (Proto-MAML: ``W = 2 c_k``, ``b = -||c_k||^2`` from
            the support prototypes; Triantafillou et al., ICLR 2020) or ``learned`` (the first
            N rows of a meta-learned ``nn.Linear``; Finn et al. 2017).
        feats: ``[M, D]`` support features (used by ``proto``).
        labels: ``[M]`` support labels in ``[0, N)``.
        n_way: N.
        learned: the meta-learned head (for ``learned``).
    """
    d = feats.shape[1]
    if init == "zero":
        z = feats.new_zeros(n_way, d)
        return z, feats.new_zeros(n_way)
    if init == "proto":
        c = prototypes(feats, labels, n_way)
        return 2.0 * c, -(c * c).sum(1)
    if init == "learned":
        if learned is None or learned.out_features < n_way:
            have = 0 if learned is None else learned.out_features
            raise ValueError(
                f"head_init='learned' has a {have}-way head but the episode is {n_way}-way; "
                "set the method's `way` to the largest way, or use head_init zero/proto."
            )
        return learned.weight[:n_way], learned.bias[:n_way]
    raise ValueError(f"unknown head_init {init!r}; use one of {', '.join(HEAD_INITS)}")


class TaskNet:
    """Functional view of ``Features(backbone)``: parameters and buffers as dicts.

    Args:
        features: the wrapped backbone.
    """

    def __init__(self, features: Features) -> None:
        self.features = features

    def params(self) -> dict[str, Tensor]:
        return dict(self.features.named_parameters())

    def buffers(self, copy: bool) -> dict[str, Tensor]:
        return {k: (v.clone() if copy else v) for k, v in self.features.named_buffers()}

    def feats(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        """Features ``[B, D]`` of ``x: [B, C, H, W]`` under ``params`` (BatchNorm on batch stats)."""
        return functional_call(self.features, (params, buffers), (x,), strict=True)

    def logits(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], head: tuple[Tensor, Tensor], x: Tensor
    ) -> Tensor:
        """Task logits ``[B, N]``."""
        return F.linear(self.feats(params, buffers, x), head[0], head[1])


def interpolate_(target: nn.Module, deltas: list[Tensor], step: float) -> None:
    """``theta <- theta + step * delta`` for each parameter of ``target`` (Reptile's meta step)."""
    with torch.no_grad():
        for p, d in zip(target.parameters(), deltas, strict=True):
            p.add_(d, alpha=step)
