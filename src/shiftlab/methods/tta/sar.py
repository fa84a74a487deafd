"""SAR: sharpness-aware and reliable entropy minimisation with model recovery."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import entropy
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import (
    BatchNormAdapter,
    TtaMethod,
    bn_affine_parameters,
    entropy_margin,
)
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class SarHparams:
    """Hyper-parameters of :class:`Sar` (Niu et al., ICLR 2023).

    Attributes:
        e_margin: entropy threshold ``E_0`` as a fraction of ``ln C`` (paper: ``0.4 ln 1000``).
        rho: radius of the sharpness-aware (SAM) perturbation (paper: 0.05).
        reset_constant: model recovery: reset to the source weights when the moving
            average of the second-step entropy falls below this (paper: ``e_m = 0.2``).
        ema: weight of the old value in that moving average (paper's code: 0.9).
        steps: optimisation steps per batch (paper: 1).

    The optimizer is the factory passed in (the SAM base optimizer); default the paper's
    SGD, lr 0.00025, momentum 0.9 for batch 64 on ResNet-50 with BatchNorm.
    """

    e_margin: float = 0.4
    rho: float = 0.05
    reset_constant: float = 0.2
    ema: float = 0.9
    steps: int = 1


@METHODS.register(
    "sar",
    summary="SAR: sharpness-aware minimisation of reliable (low-entropy) samples' entropy, with model recovery",
    paper="Niu et al., 'Towards Stable Test-Time Adaptation in Dynamic Wild World', ICLR 2023",
    family="tta",
)
class Sar(TtaMethod):
    """Per batch: the samples with entropy ``H < E_0`` give the loss ``mean H``; SAM
    perturbs the BatchNorm affine parameters by ``rho * g / ||g||``, the entropy is
    recomputed there (again only samples below ``E_0`` count), and its gradient, taken at
    the perturbed point, updates the original parameters. When the moving average of that
    second entropy drops below ``reset_constant`` the model is reset to the source
    (the sign of collapse to a trivial solution). BatchNorm uses test-batch statistics.

    Attributes:
        ema_loss: the moving average (``None`` after a reset).
        num_recoveries: automatic resets since construction or the last :meth:`reset`.
    """

    Hparams = SarHparams
    default_optimizer = OptimizerFactory(name="sgd", lr=0.00025, momentum=0.9)

    def __init__(self, backbone: Backbone, num_classes: int, hparams: SarHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.steps < 1 or hparams.rho < 0:
            raise RecipeError(f"method 'sar': need steps >= 1 and rho >= 0, got {hparams.steps}, {hparams.rho}")
        self.bn = BatchNormAdapter(self.backbone, 0.0, None, "sar")
        self._params = bn_affine_parameters(self.backbone)
        if not self._params:
            raise RecipeError("method 'sar': the backbone's BatchNorm layers have no affine parameters.")
        self._freeze_all_but(self._params)
        self.e0 = entropy_margin(hparams.e_margin, num_classes)
        self.ema_loss: float | None = None
        self.num_recoveries = 0
        self._finish_init()

    def adapted_parameters(self) -> list[nn.Parameter]:
        """The BatchNorm ``weight`` and ``bias`` tensors."""
        return self._params

    def _reset_state(self) -> None:
        self.ema_loss = None

    def reset(self) -> None:
        """Restore the source state (and clear the recovery counter)."""
        super().reset()
        self.num_recoveries = 0

    def _recover(self) -> None:
        count = self.num_recoveries
        super().reset()
        self.num_recoveries = count + 1

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]`` (before this batch's update)."""
        self.backbone.eval()
        assert self.opt is not None
        out = None
        for _ in range(self.hparams.steps):
            logits = self.backbone(x)
            out = logits.detach() if out is None else out
            ent = entropy(logits)
            keep = (ent < self.e0).nonzero().squeeze(1)
            if not keep.numel():
                continue
            self.opt.zero_grad(set_to_none=True)
            ent[keep].mean().backward()
            # SAM ascent step: e = rho * g / ||g|| (Foret et al. 2021)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            scale = self.hparams.rho / (norm + 1e-12)
            with torch.no_grad():
                eps = [g * scale for g in grads]
                for p, e in zip(self._params, eps, strict=True):
                    p.add_(e)
            self.opt.zero_grad(set_to_none=True)
            ent2 = entropy(self.backbone(x))[keep]
            keep2 = ent2 < self.e0
            second = ent2[keep2].mean() if bool(keep2.any()) else None
            if second is not None:
                second.backward()
            with torch.no_grad():
                for p, e in zip(self._params, eps, strict=True):
                    p.sub_(e)
            if second is not None:
                self.opt.step()
                value = float(second.item())
                self.ema_loss = value if self.ema_loss is None else (
                    self.hparams.ema * self.ema_loss + (1 - self.hparams.ema) * value
                )
            if self.ema_loss is not None and self.ema_loss < self.hparams.reset_constant:
                self._recover()
        assert out is not None
        return out
