"""CoTTA: continual test-time adaptation with a mean teacher and stochastic restoration."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.data.augment import affine_pixels, color_jitter, gaussian_blur, hflip
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import soft_cross_entropy
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import BatchNormAdapter, TtaMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class CottaHparams:
    """Hyper-parameters of :class:`Cotta` (Wang, Fink, Van Gool & Dai, CVPR 2022; CIFAR-10-C).

    Attributes:
        ema_momentum: teacher update ``theta' = m theta' + (1 - m) theta`` (paper: 0.999).
        restore_prob: probability ``p`` that each weight is restored to its source value
            after every step (paper: 0.01).
        aug_threshold: ``p_th``: the teacher's prediction is averaged over augmentations
            when the source model's mean confidence on the batch is below it (paper: 0.92
            on CIFAR-10, 0.72 on CIFAR-100, 0.1 on ImageNet).
        n_augmentations: augmented copies for that average (paper: 32).
        rotation: maximum rotation of the augmentations in degrees.
        hflip: horizontal flips among the augmentations (CoTTA's); off for digits.
        seed: seed of the generator of augmentations and restoration masks.
        steps: optimisation steps per batch (paper: 1).

    The optimizer is the factory passed in; default the paper's Adam, lr 1e-3 (CIFAR),
    over **all** parameters of the student.
    """

    ema_momentum: float = 0.999
    restore_prob: float = 0.01
    aug_threshold: float = 0.92
    n_augmentations: int = 32
    rotation: float = 15.0
    hflip: bool = True
    seed: int = 0
    steps: int = 1

@METHODS.register(
    "cotta",
    summary="CoTTA: student trained on mean-teacher pseudo-labels (augmentation-averaged), stochastic restore",
    paper="Wang, Fink, Van Gool & Dai, 'Continual Test-Time Domain Adaptation', CVPR 2022",
    family="tta",
)
class Cotta(TtaMethod):
    """The student (the backbone) is trained on each test batch with the cross-entropy to
    the teacher's soft predictions; the teacher is an exponential moving average of the
    student; when the frozen source model is unsure (mean max-probability below
    ``aug_threshold``), the teacher's logits are averaged over ``n_augmentations``
    augmented copies of the batch (colour jitter with gamma, small affine warp with edge
    padding, light blur, optional flip, Gaussian noise of std 0.005: CoTTA's CIFAR
    augmentations, computed batched). After each step a random ``restore_prob`` share of
    every student weight is set back to the source value. All three networks normalise
    with test-batch BatchNorm statistics (as the paper's ``train()``-mode models);
    returns the teacher's logits.
    """

    Hparams = CottaHparams
    default_optimizer = OptimizerFactory(name="adam", lr=1e-3)

    def __init__(self, backbone: Backbone, num_classes: int, hparams: CottaHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.n_augmentations < 1 or hparams.steps < 1 or not 0 <= hparams.ema_momentum <= 1:
            raise RecipeError("method 'cotta': need n_augmentations >= 1, steps >= 1, 0 <= ema_momentum <= 1")
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self.teacher = copy.deepcopy(self.backbone)
        self.anchor = copy.deepcopy(self.backbone)
        for net in (self.teacher, self.anchor):
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
        self.bn = BatchNormAdapter(self.backbone, 0.0, None, "cotta")
        self.bn_teacher = BatchNormAdapter(self.teacher, 0.0, None, "cotta")
        self.bn_anchor = BatchNormAdapter(self.anchor, 0.0, None, "cotta")
        self.generator = torch.Generator()
        self._finish_init()
        self._source_params = [p.detach().clone() for p in self.backbone.parameters()]

    def adapted_parameters(self) -> list[nn.Parameter]:
        """All student parameters."""
        return list(self.backbone.parameters())

    def _reset_state(self) -> None:
        self.generator.manual_seed(self.hparams.seed)

    def train(self, mode: bool = True) -> Cotta:
        super().train(mode)
        self.teacher.eval()
        self.anchor.eval()
        return self

    def augment(self, x: Tensor) -> Tensor:
        """One random augmentation of every image: ``[B, C, H, W] -> [B, C, H, W]``."""
        g = self.generator
        b, _, h, w = x.shape
        x = color_jitter(x, (0.6, 1.4), (0.7, 1.3), (0.5, 1.5), (-0.06, 0.06), generator=g)
        u = torch.rand(5, b, generator=g, device=g.device).to(x.device)
        gamma = (0.7 + 0.6 * u[0]).view(b, 1, 1, 1)
        x = x.clamp(min=1e-6) ** gamma
        angle = torch.deg2rad((2 * u[1] - 1) * self.hparams.rotation)
        scale = 0.9 + 0.2 * u[2]
        tx, ty = (2 * u[3] - 1) * w / 16, (2 * u[4] - 1) * h / 16
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        cx, cy = w / 2 + tx, h / 2 + ty  # output centre; samples around the input centre
        mat = torch.stack(
            [
                torch.stack([cos, sin, w / 2 - cos * cx - sin * cy], dim=1),
                torch.stack([-sin, cos, h / 2 + sin * cx - cos * cy], dim=1),
            ],
            dim=1,
        )
        x = affine_pixels(x, mat, padding_mode="border")
        k = 5 if min(h, w) > 5 else 1
        if k > 1:
            x = gaussian_blur(x, (0.001, 0.5), 1.0, generator=g, kernel_size=k)
        if self.hparams.hflip:
            x = hflip(x, 0.5, generator=g)
        noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
        return (x + 0.005 * noise).clamp_(0.0, 1.0)

    @torch.no_grad()
    def _teacher_logits(self, x: Tensor) -> Tensor:
        conf = torch.softmax(self.anchor(x), dim=1).amax(dim=1).mean()
        if conf >= self.hparams.aug_threshold:
            return self.teacher(x)
        # one forward per augmented copy (BatchNorm statistics per batch, as in the paper)
        total = torch.zeros(x.shape[0], self.num_classes, device=x.device)
        for _ in range(self.hparams.n_augmentations):
            total += self.teacher(self.augment(x))
        return total / self.hparams.n_augmentations

    @torch.no_grad()
    def _update_teacher_and_restore(self) -> None:
        m = self.hparams.ema_momentum
        for tp, sp in zip(self.teacher.parameters(), self.backbone.parameters(), strict=True):
            tp.mul_(m).add_(sp, alpha=1.0 - m)
        p_restore = self.hparams.restore_prob
        if p_restore <= 0:
            return
        g = self.generator
        for p, p0 in zip(self.backbone.parameters(), self._source_params, strict=True):
            mask = torch.rand(p.shape, generator=g, device=g.device).to(p.device) < p_restore
            p.copy_(torch.where(mask, p0.to(p.device), p))

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> the teacher's logits ``[B, num_classes]`` (before the update)."""
        self.train(self.training)
        out = None
        for _ in range(self.hparams.steps):
            target = self._teacher_logits(x)
            out = target if out is None else out
            loss = soft_cross_entropy(self.backbone(x), target).mean()
            self._step(loss)
            self._update_teacher_and_restore()
        assert out is not None
        return out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The teacher's logits ``[B, num_classes]`` (CoTTA predicts with the teacher)."""
        return self.teacher(x)
