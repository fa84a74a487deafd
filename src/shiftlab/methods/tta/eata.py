"""EATA: efficient anti-forgetting test-time adaptation (reliable, non-redundant entropy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
class EataHparams:
    """Hyper-parameters of :class:`Eata` (Niu et al., ICML 2022; ImageNet-C defaults).

    Attributes:
        e_margin: entropy threshold ``E_0`` as a fraction of ``ln C`` (paper:
            ``0.4 ln 1000``): only samples with ``H < E_0`` are used, weighted by
            ``1 / exp(H - E_0)``.
        d_margin: redundancy threshold ``epsilon`` on the cosine similarity between a
            sample's prediction and the moving average of past predictions (paper: 0.05).
        ema: weight of the old moving average of predictions (paper's code: 0.9).
        fisher_alpha: ``beta``, weight of the Fisher anti-forgetting term (paper: 2000);
            used only after :meth:`Eata.fit_fisher` (without it the method is ETA).
        steps: optimisation steps per batch (paper: 1).

    The optimizer is the factory passed in; default the paper's SGD, lr 0.00025,
    momentum 0.9 (batch 64).
    """

    e_margin: float = 0.4
    d_margin: float = 0.05
    ema: float = 0.9
    fisher_alpha: float = 2000.0
    steps: int = 1


@METHODS.register(
    "eata",
    summary="EATA: entropy minimisation on reliable, non-redundant test samples (+ optional Fisher anti-forgetting)",
    paper="Niu et al., 'Efficient Test-Time Model Adaptation without Forgetting', ICML 2022",
    family="tta",
)
class Eata(TtaMethod):
    """Tent's setting (test-batch BatchNorm statistics, BatchNorm affine parameters
    updated online) with EATA's sample selection: a sample takes part when its entropy
    is below ``E_0`` and its prediction is not too similar (``|cos| >= d_margin``) to the
    moving average of the predictions selected so far; its entropy is weighted by
    ``exp(E_0 - H)``. After :meth:`fit_fisher`, ``fisher_alpha * sum_i F_i (theta_i -
    theta_i^0)^2`` keeps the parameters near the source's (Fisher from the source
    model's pseudo-labels, as in the paper).

    Attributes:
        avg_probs: ``[C]`` moving average of the selected predictions (``None`` at reset).
        num_selected: samples used for updates since the last reset.
    """

    Hparams = EataHparams
    default_optimizer = OptimizerFactory(name="sgd", lr=0.00025, momentum=0.9)

    def __init__(self, backbone: Backbone, num_classes: int, hparams: EataHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.steps < 1:
            raise RecipeError(f"method 'eata': steps must be >= 1, got {hparams.steps}")
        self.bn = BatchNormAdapter(self.backbone, 0.0, None, "eata")
        self._params = bn_affine_parameters(self.backbone)
        if not self._params:
            raise RecipeError("method 'eata': the backbone's BatchNorm layers have no affine parameters.")
        self._freeze_all_but(self._params)
        self.e0 = entropy_margin(hparams.e_margin, num_classes)
        self.fisher: list[Tensor] | None = None
        self.fisher_anchor: list[Tensor] | None = None
        self.avg_probs: Tensor | None = None
        self.num_selected = 0
        self._finish_init()

    def adapted_parameters(self) -> list[nn.Parameter]:
        """The BatchNorm ``weight`` and ``bias`` tensors."""
        return self._params

    def _reset_state(self) -> None:
        self.avg_probs = None
        self.num_selected = 0

    def fit_fisher(self, x: Tensor, batch_size: int = 64) -> None:
        """Diagonal Fisher information of the adapted parameters at the *current* (source)
        weights, from unlabelled images ``x: [N, C, H, W]`` and the model's own
        pseudo-labels: ``F_i = mean over batches of (d CE(f(x), argmax f(x)) / d theta_i)^2``
        (Niu et al. 2022, eq. 9; the paper uses 2,000 samples). The current weights become
        the anchor ``theta^0``. Kept across :meth:`reset`.
        """
        self.backbone.eval()
        fisher = [torch.zeros_like(p) for p in self._params]
        batches = 0
        for start in range(0, x.shape[0], batch_size):
            logits = self.backbone(x[start : start + batch_size])
            loss = F.cross_entropy(logits, logits.argmax(dim=1))
            grads = torch.autograd.grad(loss, self._params)
            for f, g in zip(fisher, grads, strict=True):
                f.add_(g.detach() ** 2)
            batches += 1
        if batches == 0:
            raise ValueError("fit_fisher: no images given")
        self.fisher = [f / batches for f in fisher]
        self.fisher_anchor = [p.detach().clone() for p in self._params]

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]`` (before this batch's update)."""
        self.backbone.eval()
        out = None
        for _ in range(self.hparams.steps):
            logits = self.backbone(x)
            out = logits.detach() if out is None else out
            ent = entropy(logits)  # [B]
            keep = (ent < self.e0).nonzero().squeeze(1)
            probs = torch.softmax(logits.detach(), dim=1)
            if keep.numel() and self.avg_probs is not None:
                cos = F.cosine_similarity(self.avg_probs[None], probs[keep], dim=1)
                keep = keep[cos.abs() < self.hparams.d_margin]
            if keep.numel():
                batch_mean = probs[keep].mean(dim=0)
                self.avg_probs = (
                    batch_mean
                    if self.avg_probs is None
                    else self.hparams.ema * self.avg_probs + (1 - self.hparams.ema) * batch_mean
                )
                sel = ent[keep]
                loss = (sel * torch.exp(self.e0 - sel.detach())).mean()
                if self.fisher is not None and self.fisher_anchor is not None:
                    ewc = sum(
                        (f * (p - p0) ** 2).sum()
                        for f, p, p0 in zip(self.fisher, self._params, self.fisher_anchor, strict=True)
                    )
                    loss = loss + self.hparams.fisher_alpha * ewc
                self._step(loss)
                self.num_selected += int(keep.numel())
        assert out is not None
        return out
