"""AdaMatch: FixMatch-style self-training for domain adaptation, with random logit
interpolation, distribution alignment and a relative confidence threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.backbones.base import Backbone
from shiftlab.batches import DomainPair
from shiftlab.data.augment import Augment, digits_strong, digits_uda
from shiftlab.errors import RecipeError
from shiftlab.methods import METHODS
from shiftlab.methods.uda.common import UdaMethod
from shiftlab.optim import OptimizerFactory

AUGMENTS = {"digits_uda": lambda size: digits_uda(), "digits_strong": digits_strong}


@dataclass(frozen=True)
class AdaMatchHparams:
    """Hyper-parameters of :class:`AdaMatch` (defaults: Berthelot et al., ICLR 2022).

    Attributes:
        tau: relative confidence threshold: a target pseudo-label is kept when its
            (aligned) probability is at least ``tau`` times the mean top probability on
            the weakly augmented source batch (0.9).
        uratio: target images per source image in a batch; the engine gives equal batch
            sizes, so this is informational (1 here; 3 in the paper).
        logit_interpolation: random logit interpolation between a joint source+target
            forward pass and a source-only one (matters with BatchNorm backbones).
        distribution_alignment: rescale target probabilities by ``mean p_source / mean p_target``.
        weak: weak augmentation preset (``digits_uda``: crop + mild colour jitter).
        strong: strong augmentation preset (``digits_strong``).
        lr_schedule: ``constant``, ``dann`` or ``cosine``.
    """

    tau: float = 0.9
    uratio: int = 1
    logit_interpolation: bool = True
    distribution_alignment: bool = True
    weak: str = "digits_uda"
    strong: str = "digits_strong"
    lr_schedule: str = "constant"


def unlabeled_weight(progress: float) -> float:
    """AdaMatch's warm-up of the target loss: ``0.5 - cos(min(pi, 2 pi p)) / 2`` (0 -> 1 over
    the first half of training)."""
    return 0.5 - math.cos(min(math.pi, 2.0 * math.pi * progress)) / 2.0


@METHODS.register(
    "adamatch",
    summary="AdaMatch: weak/strong-augmentation self-training with distribution alignment and relative threshold",
    paper="Berthelot, Roelofs, Sohn, Carlini & Kurakin, 'AdaMatch: A Unified Approach to Semi-Supervised "
    "Learning and Domain Adaptation', ICLR 2022",
    family="uda",
)
class AdaMatch(UdaMethod):
    """Per step (``B`` source and ``B'`` target images, all augmentations batched):

    1. weak and strong views of both domains, one forward pass ``[2B + 2B', C]`` logits;
    2. with ``logit_interpolation``, a second pass over the source views alone and a random
       per-sample mix of the two source logits;
    3. source loss: cross-entropy of both source views;
    4. pseudo-labels from the weak target view, distribution-aligned to the source's class
       marginal, kept where their confidence is >= ``tau * mean(max p_source_weak)``;
    5. target loss: cross-entropy of the strong target view on the kept pseudo-labels,
       weighted by the warm-up :func:`unlabeled_weight`.
    """

    Hparams = AdaMatchHparams

    def __init__(self, backbone: Backbone, num_classes: int, hparams: AdaMatchHparams, optimizer: OptimizerFactory) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        for key in ("weak", "strong"):
            if getattr(hparams, key) not in AUGMENTS:
                raise RecipeError(f"adamatch: {key}={getattr(hparams, key)!r}; use one of {', '.join(AUGMENTS)}.")
        size = getattr(backbone, "image_size", 32)
        self.weak: Augment = AUGMENTS[hparams.weak](size)
        self.strong: Augment = AUGMENTS[hparams.strong](size)
        self.opt = optimizer(self.parameters())

    def _views(self, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.weak.apply(x, gen), self.strong.apply(x, gen)

    def update(self, batch: DomainPair) -> dict[str, float]:
        """One step; returns ``loss``, ``source``, ``target``, ``mask`` (kept fraction) and
        ``threshold``."""
        self.train()
        h = self.hparams
        # the augmentation generator is drawn from the global RNG, which checkpoints restore
        gen = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**62, ())))
        xs, ys, xt = batch.source.x, batch.source.y, batch.target_x
        xs_w, xs_s = self._views(xs, gen)
        xt_w, xt_s = self._views(xt, gen)
        b, bt = len(xs), len(xt)
        logits = self.backbone(torch.cat([xs_w, xs_s, xt_w, xt_s]))
        src_joint, lt_w, lt_s = logits[: 2 * b], logits[2 * b : 2 * b + bt], logits[2 * b + bt :]
        if h.logit_interpolation:
            src_alone = self.backbone(torch.cat([xs_w, xs_s]))
            lam = torch.rand(2 * b, 1, device=logits.device)
            src = lam * src_joint + (1.0 - lam) * src_alone
        else:
            src = src_joint
        source_loss = F.cross_entropy(src, torch.cat([ys, ys]))
        with torch.no_grad():
            p_s = torch.softmax(src[:b], dim=1)
            p_t = torch.softmax(lt_w, dim=1)
            if h.distribution_alignment:
                p_t = p_t * p_s.mean(0) / p_t.mean(0).clamp_min(1e-6)
                p_t = p_t / p_t.sum(1, keepdim=True)
            threshold = h.tau * p_s.max(1).values.mean()
            conf, pseudo = p_t.max(1)
            mask = (conf >= threshold).float()
        target_loss = (F.cross_entropy(lt_s, pseudo, reduction="none") * mask).mean()
        loss = source_loss + unlabeled_weight(self.progress) * target_loss
        self.step(loss)
        return {"loss": loss.item(), "source": source_loss.item(), "target": target_loss.item(),
                "mask": mask.mean().item(), "threshold": float(threshold)}
