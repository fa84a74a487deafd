"""Tent: test-time entropy minimisation of the BatchNorm affine parameters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import mean_entropy
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import BatchNormAdapter, TtaMethod, bn_affine_parameters
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class TentHparams:
    """Hyper-parameters of :class:`Tent` (Wang et al., ICLR 2021).

    Attributes:
        steps: optimisation steps per test batch (paper: 1).

    The optimizer is the factory passed in; default the paper's CIFAR setting, Adam with
    learning rate 1e-3 (ImageNet: SGD, lr 0.00025, momentum 0.9, batch 64).
    """

    steps: int = 1


@METHODS.register(
    "tent",
    summary="Tent: minimises prediction entropy on each test batch, updating only BatchNorm scale/shift",
    paper="Wang, Shelhamer, Liu, Olshausen & Darrell, 'Tent: Fully Test-Time Adaptation by Entropy "
    "Minimization', ICLR 2021",
    family="tta",
)
class Tent(TtaMethod):
    """Online test-time adaptation: BatchNorm uses test-batch statistics, and one step
    (``steps``) of ``mean_b H(softmax(f(x_b)))`` updates the BatchNorm affine parameters
    (all other weights are frozen). The returned logits are those of the forward pass
    that the update uses (before the step), as in the paper's code."""

    Hparams = TentHparams
    default_optimizer = OptimizerFactory(name="adam", lr=1e-3)

    def __init__(self, backbone: Backbone, num_classes: int, hparams: TentHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.steps < 1:
            raise RecipeError(f"method 'tent': steps must be >= 1, got {hparams.steps}")
        self.bn = BatchNormAdapter(self.backbone, 0.0, None, "tent")
        self._params = bn_affine_parameters(self.backbone)
        if not self._params:
            raise RecipeError("method 'tent': the backbone's BatchNorm layers have no affine "
                              "parameters (affine=False); there is nothing to adapt.")
        self._freeze_all_but(self._params)
        self._finish_init()

    def adapted_parameters(self) -> list[nn.Parameter]:
        """The BatchNorm ``weight`` and ``bias`` tensors."""
        return self._params

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]``; ``steps`` entropy steps."""
        self.backbone.eval()
        for _ in range(self.hparams.steps):
            logits = self.backbone(x)
            self._step(mean_entropy(logits))
        return logits.detach()
