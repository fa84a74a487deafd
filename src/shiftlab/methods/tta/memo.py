"""MEMO: marginal entropy minimisation over augmented copies of one test point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.data.augment import augmix, hflip, random_crop
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import marginal_entropy
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import BatchNormAdapter, TtaMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class MemoHparams:
    """Hyper-parameters of :class:`Memo` (Zhang, Levine & Finn, NeurIPS 2022).

    Attributes:
        n_augmentations: ``B``, augmented copies of the test point per step (paper: 32 on
            CIFAR-10, 64 on ImageNet).
        steps: optimisation steps per test point (paper: 1).
        bn_prior: BatchNorm prior strength ``N`` (the paper's "MEMO + BN" for networks with
            BatchNorm: statistics ``N/(N+1)`` source + ``1/(N+1)`` of the test point's
            augmented copies, paper: 16); ``None`` keeps the source statistics (needed
            for backbones without BatchNorm).
        aug_severity: AugMix operation severity (AugMix / MEMO: 3).
        mixture_width: AugMix chains per copy (3).
        mixture_depth: AugMix ops per chain (-1: random 1..3).
        crop_padding: random crop after this zero padding before AugMix (MEMO's CIFAR
            pre-augmentation: ``RandomCrop(32, padding=4)``); 0 disables.
        hflip: random horizontal flip before AugMix (MEMO's CIFAR/ImageNet
            pre-augmentation); turn off for digits, where a flip changes the class.
        seed: seed of the augmentation generator (re-seeded by every reset).

    The optimizer is the factory passed in; default SGD, lr 0.005, momentum 0.9 (the
    paper's CIFAR-10 ResNet setting; ImageNet ResNet-50: lr 0.00025). With one step on a
    fresh optimizer, momentum has no effect.
    """

    n_augmentations: int = 32
    steps: int = 1
    bn_prior: float | None = 16.0
    aug_severity: float = 3.0
    mixture_width: int = 3
    mixture_depth: int = -1
    crop_padding: int = 4
    hflip: bool = True
    seed: int = 0


@METHODS.register(
    "memo",
    summary="MEMO: per test point, minimises the entropy of the prediction averaged over B AugMix copies",
    paper="Zhang, Levine & Finn, 'MEMO: Test Time Robustness via Adaptation and Augmentation', NeurIPS 2022",
    family="tta",
)
class Memo(TtaMethod):
    """Episodic single-point adaptation: for each test point ``x_i`` the network is reset
    to the source weights, ``B`` augmented copies ``a_b(x_i)`` are made (random crop /
    flip, then AugMix, all copies as one batch), ``steps`` steps minimise
    ``H(mean_b softmax(f(a_b(x_i))))`` over **all** parameters, and the adapted network
    predicts ``x_i``. With ``bn_prior`` the BatchNorm statistics mix the source's with
    those of the current input (weight ``N/(N+1)`` on the source).

    Each point starts from :meth:`reset` (weights, optimizer and augmentation generator),
    so a point's prediction does not depend on the other points or their order.
    """

    Hparams = MemoHparams
    default_optimizer = OptimizerFactory(name="sgd", lr=0.005, momentum=0.9)

    def __init__(self, backbone: Backbone, num_classes: int, hparams: MemoHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.n_augmentations < 2 or hparams.steps < 1:
            raise RecipeError(
                f"method 'memo': need n_augmentations >= 2 and steps >= 1, got "
                f"{hparams.n_augmentations} and {hparams.steps}"
            )
        if hparams.bn_prior is not None and hparams.bn_prior <= 0:
            raise RecipeError(
                f"method 'memo': bn_prior must be > 0 (got {hparams.bn_prior}): the adapted network "
                "predicts the single test point, whose BatchNorm statistics alone are undefined "
                "for 1-d layers. Use a small prior (e.g. 1) or `bn_prior: null` (source statistics)."
            )
        self.bn = None
        if hparams.bn_prior is not None:
            try:
                self.bn = BatchNormAdapter(self.backbone, hparams.bn_prior, 1, "memo")
            except RecipeError as exc:
                raise RecipeError(
                    f"{exc} For memo, `bn_prior: null` keeps the source statistics instead."
                ) from None
        self.generator = torch.Generator()
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self._finish_init()

    def adapted_parameters(self) -> list[nn.Parameter]:
        """All backbone parameters (the paper adapts the whole network)."""
        return list(self.backbone.parameters())

    def _reset_state(self) -> None:
        self.generator.manual_seed(self.hparams.seed)

    def augment(self, x: Tensor) -> Tensor:
        """``B`` augmented copies of one point: ``x: [1, C, H, W]`` -> ``[B, C, H, W]``."""
        h = self.hparams
        g = self.generator
        views = x.expand(h.n_augmentations, *x.shape[1:])
        if h.crop_padding > 0:
            views = random_crop(views, None, h.crop_padding, generator=g)
        else:
            views = views.contiguous()
        if h.hflip:
            views = hflip(views, 0.5, generator=g)
        return augmix(views, g, severity=h.aug_severity, width=h.mixture_width, depth=h.mixture_depth)

    def adapt_one(self, x: Tensor) -> Tensor:
        """Reset, adapt on one point ``x: [1, C, H, W]`` and return its logits ``[1, C]``."""
        self.reset()
        self.backbone.eval()
        for _ in range(self.hparams.steps):
            with torch.no_grad():
                views = self.augment(x)
            self._step(marginal_entropy(self.backbone(views)))
        with torch.no_grad():
            return self.backbone(x)

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]``, each point adapted on its own
        (the network is left adapted to the last point)."""
        return torch.cat([self.adapt_one(x[i : i + 1]) for i in range(x.shape[0])], dim=0)
