"""Shared pieces of the self-supervised methods: the base class, MLP heads, EMA helpers.

Every SSL method is a :class:`~shiftlab.methods.base.TrainableMethod` with ``batch_kind =
"views"``: :meth:`SslMethod.update` takes :class:`~shiftlab.batches.Views` (two augmented
views of the same images, e.g. from :func:`shiftlab.data.augment.byol_small`) and makes one
optimisation step. The representation that transfers is the backbone's
``forward_features`` (:meth:`SslMethod.embed`); projectors and predictors are thrown away
after pre-training, as in the papers. The backbone's classification head is not trained
(it is left out of the optimizer) and ``predict`` keeps the :class:`Method` default
(``backbone(x)``), which is meaningful once a head has been fitted on labels (linear probe
or fine-tuning, see :mod:`shiftlab.experiment.ssl_run`).

BatchNorm and the two views: by default (``joint_forward=True``) both views go through a
network in **one** forward pass of the concatenated ``[2B]`` batch, so BatchNorm
normalises with statistics over both views (as SimCLR's implementation does); this is one
large matrix multiply instead of two and about 1.3-1.6x faster on CPU for small images.
BYOL's and SimSiam's reference code forward the views separately (statistics per view);
``joint_forward=False`` does that. Per-image results differ only through the batch
statistics; both train well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Views
from shiftlab.methods.base import TrainableMethod
from shiftlab.optim import OptimizerFactory, lr_factor

__all__ = [
    "SslMethod",
    "cosine_momentum",
    "ema_update_",
    "mlp_head",
]


def mlp_head(in_dim: int, hidden: int, out_dim: int, layers: int = 2, last_bn: bool = False,
             batch_norm: bool = True) -> nn.Sequential:
    """``[Linear - BN - ReLU] x (layers - 1) - Linear [- BN]``: the SSL projector/predictor MLP.

    Args:
        in_dim: input width.
        hidden: width of the hidden layers.
        out_dim: output width.
        layers: number of linear layers (>= 1).
        last_bn: BatchNorm (without affine parameters) after the last linear layer
            (SimSiam's projector).
        batch_norm: BatchNorm after each hidden linear layer (all four papers use it).

    Returns:
        ``[B, in_dim] -> [B, out_dim]``.
    """
    if layers < 1:
        raise ValueError(f"mlp_head: layers must be >= 1, got {layers}")
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden, bias=not batch_norm)]
        if batch_norm:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        width = hidden
    mods.append(nn.Linear(width, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's target decay rate ``tau = 1 - (1 - base) (cos(pi p) + 1) / 2``.

    Grill et al., NeurIPS 2020, sec. 3.2: ``tau`` rises from ``base`` (0.996) at the start
    of training (``progress = 0``) to 1 at the end (``progress = 1``).
    """
    p = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * p) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """``target <- tau * target + (1 - tau) * online`` in place, as two ``_foreach`` kernels.

    Args:
        target: the target network's parameters (updated in place).
        online: the online network's parameters, same shapes and order.
        tau: decay rate in [0, 1].
    """
    if len(target) != len(online):
        raise ValueError(f"ema_update_: {len(target)} target but {len(online)} online tensors")
    if not target:
        return
    torch._foreach_mul_(target, tau)
    torch._foreach_add_(target, online, alpha=1.0 - tau)


def _params_without_head(backbone: Backbone) -> Iterator[tuple[str, nn.Parameter]]:
    for name, p in backbone.named_parameters():
        if not name.startswith("head."):
            yield name, p


class SslMethod(TrainableMethod):
    """Base of the two-view self-supervised methods (see the module docstring).

    Subclasses build their heads and ``self.opt`` (``self.optimizer_factory(groups)``; a
    group with ``fixed_lr=True`` is not annealed) and implement :meth:`loss`; :meth:`update` does the step and then :meth:`after_step` (BYOL's EMA).

    Attributes:
        warmup: fraction of training with a linear learning-rate warm-up (``set_progress``).
    """

    family: ClassVar[str] = "ssl"
    batch_kind: ClassVar[str] = "views"

    def __init__(self, backbone: Backbone, num_classes: int, hparams: Any, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.lr_schedule = getattr(hparams, "lr_schedule", "constant")
        self.warmup = float(getattr(hparams, "warmup", 0.0))
        self.joint_forward = bool(getattr(hparams, "joint_forward", True))

    # ------------------------------------------------------------------ pieces
    def encoder_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters without its (untrained) classification head."""
        return [p for _, p in _params_without_head(self.backbone)]

    def embed(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> backbone features ``[B, D]`` (the representation that transfers)."""
        return self.backbone.forward_features(x)

    def two_views(self, net: Callable[[Tensor], Tensor], views: Views) -> tuple[Tensor, Tensor]:
        """``net`` on both views: one pass over ``cat([v1, v2])`` (``joint_forward``) or two.

        Returns:
            ``(out1 [B, ...], out2 [B, ...])``.
        """
        if self.joint_forward:
            out = net(torch.cat([views.v1, views.v2]))
            return out[: views.v1.shape[0]], out[views.v1.shape[0]:]
        return net(views.v1), net(views.v2)

    def loss(self, batch: Views) -> tuple[Tensor, dict[str, float]]:
        """The method's loss on ``batch`` (differentiable) and extra values to log."""
        raise NotImplementedError

    def after_step(self) -> dict[str, float]:
        """Called after each optimizer step (BYOL: the target's EMA); returns values to log."""
        return {}

    def update(self, batch: Views) -> dict[str, float]:
        """One step on two views ``v1, v2: [B, C, H, W]``; returns ``loss`` and method extras."""
        self.train()
        loss, logs = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), **logs, **self.after_step()}

    def set_progress(self, progress: float) -> None:
        """Progress in [0, 1]: learning rates follow ``lr_schedule`` after ``warmup``; groups
        marked ``fixed_lr`` keep their base rate (SimSiam's predictor)."""
        self.progress = float(progress)
        factor = lr_factor(self.lr_schedule, self.progress, self.warmup)
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * (1.0 if group.get("fixed_lr") else factor)
