"""TPT: test-time prompt tuning of a CLIP classifier, one test image at a time.

The backbone is a :class:`~shiftlab.backbones.clip.ClipClassifier` (an ``open_clip``
model + class names + a learnable prompt context; build one with
:func:`~shiftlab.backbones.clip.load_clip_classifier`), so TPT fits the
:class:`~shiftlab.methods.base.TestTimeMethod` contract unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.backbones.clip import ClipClassifier
from shiftlab.data.augment import augmix, hflip, random_resized_crop
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import entropy, marginal_entropy
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import TtaMethod
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class TptHparams:
    """Hyper-parameters of :class:`Tpt` (Shu et al., NeurIPS 2022, Sec. 3.2 and 4.1).

    Attributes:
        n_views: views per test image, the image itself included (paper: 64 = the
            original + 63 augmented).
        selection_p: fraction of the views kept, the most confident (lowest entropy)
            ones (paper: 0.1).
        selection_round: how ``selection_p * n_views`` becomes a count: ``floor`` as in
            the authors' code (``int(64 * 0.1) = 6`` views), or ``ceil`` (7 of 64); at
            least one view is always kept.
        steps: optimisation steps on the context per image (paper: 1). The views kept at
            the first step are kept for the later ones, as in the authors' code.
        crop_scale: area range of the random resized crops (torchvision's default
            ``(0.08, 1)``, which TPT uses).
        hflip: random horizontal flip of the crops (TPT's pre-augmentation).
        augmix: AugMix on top of the crops; the paper uses it for the fine-grained
            datasets and plain random resized crops for ImageNet and its OOD variants
            (so ``False`` by default).
        aug_severity: AugMix severity when ``augmix`` (TPT: 1).
        seed: seed of the augmentation generator (re-seeded by every reset, so each
            image sees the same set of random crops and its prediction does not depend
            on the order of the images).

    The optimizer is the factory passed in; default AdamW, lr 5e-3, weight decay 0.01
    (the paper's, with torch's default decay as in the authors' code), fresh per image.
    """

    n_views: int = 64
    selection_p: float = 0.1
    selection_round: Literal["floor", "ceil"] = "floor"
    steps: int = 1
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    augmix: bool = False
    aug_severity: float = 1.0
    seed: int = 0


def n_confident(n_views: int, p: float, rounding: str = "floor") -> int:
    """How many of ``n_views`` views the confidence selection keeps (at least 1)."""
    k = math.ceil(n_views * p - 1e-9) if rounding == "ceil" else int(n_views * p + 1e-9)
    return max(1, min(n_views, k))


def select_confident(logits: Tensor, k: int) -> Tensor:
    """Indices ``[k]`` of the ``k`` rows of ``logits: [N, C]`` with the lowest entropy
    (the most confident), most confident first; ties keep the lower index."""
    with torch.no_grad():
        return torch.argsort(entropy(logits.float()), stable=True)[:k]


@METHODS.register(
    "tpt",
    summary="TPT: per test image, tunes CLIP's prompt context to minimise the entropy of the "
    "averaged prediction over its most confident augmented views (needs a CLIP backbone)",
    paper="Shu et al., 'Test-Time Prompt Tuning for Zero-Shot Generalization in "
    "Vision-Language Models', NeurIPS 2022",
    family="tta",
)
class Tpt(TtaMethod):
    """Episodic, single-image test-time prompt tuning of CLIP.

    For each test image ``x_i``: the prompt context is reset to its initial value (e.g.
    the embedding of ``"a photo of a"``) and the optimizer to a fresh one; ``n_views``
    views are made (``x_i`` itself, resized to the model's input, then ``n_views - 1``
    random resized crops with flips, optionally AugMix, computed as one batch); their
    image features are computed once (the image encoder is frozen); the ``selection_p``
    most confident views are kept; ``steps`` AdamW steps on the context minimise
    ``H(mean_{kept} softmax(logits))``; the tuned prompt then classifies ``x_i`` (the
    features of view 0, which is ``x_i``). Only the context learns: every CLIP weight
    is frozen, so :meth:`reset` restores the context (and optimizer and generator) and
    with them the source model exactly.

    Attributes:
        backbone_kind: ``"clip"``: the backbone must be a
            :class:`~shiftlab.backbones.clip.ClipClassifier`.
        last_selected: the view indices kept for the last image (``[k]``), for inspection.
    """

    Hparams = TptHparams
    default_optimizer = OptimizerFactory(name="adamw", lr=5e-3, weight_decay=0.01)
    backbone_kind: ClassVar[str] = "clip"

    def __init__(self, backbone: Backbone, num_classes: int, hparams: TptHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        if not isinstance(backbone, ClipClassifier):
            raise RecipeError(
                f"method 'tpt' tunes the text prompt of a CLIP model, but the backbone is "
                f"{type(backbone).__name__}. Build a CLIP classifier with "
                "shiftlab.backbones.clip.load_clip_classifier(model_name, checkpoint, "
                "classnames) (needs `pip install shiftlab[clip]`)."
            )
        if num_classes != backbone.num_classes:
            raise RecipeError(
                f"method 'tpt': num_classes={num_classes} but the CLIP classifier has "
                f"{backbone.num_classes} class names"
            )
        h = hparams
        if h.n_views < 1 or h.steps < 1 or not 0 < h.selection_p <= 1:
            raise RecipeError(
                f"method 'tpt': need n_views >= 1, steps >= 1 and 0 < selection_p <= 1, got "
                f"{h.n_views}, {h.steps} and {h.selection_p}"
            )
        if h.selection_round not in ("floor", "ceil"):
            raise RecipeError(f"method 'tpt': selection_round must be floor or ceil, got {h.selection_round!r}")
        super().__init__(backbone, num_classes, hparams, optimizer)
        self.backbone: ClipClassifier
        self.n_selected = n_confident(h.n_views, h.selection_p, h.selection_round)
        self.generator = torch.Generator()
        self.last_selected: Tensor | None = None
        self._freeze_all_but([backbone.ctx])
        backbone.ctx.requires_grad_(True)
        self._finish_init()

    # -- state: only the context changes, so only it is kept (a CLIP copy is large)
    def adapted_parameters(self) -> list[nn.Parameter]:
        """The prompt context ``[n_ctx, width]``, nothing else."""
        return [self.backbone.ctx]

    def _finish_init(self) -> None:
        self._source = {"backbone.ctx": self.backbone.ctx.detach().clone()}
        self._build_optimizer()
        self._reset_state()

    def _reset_state(self) -> None:
        self.generator.manual_seed(self.hparams.seed)
        self.last_selected = None

    @torch.no_grad()
    def reset(self) -> None:
        """Restore the initial context exactly, a fresh optimizer and the generator (the
        frozen CLIP weights are never written)."""
        self.backbone.ctx.copy_(self._source["backbone.ctx"])
        self._build_optimizer()
        self._reset_state()

    # -- the method
    def views(self, x: Tensor) -> Tensor:
        """``x: [1, C, H, W]`` in [0, 1] -> ``[n_views, 3, h, w]``: view 0 is ``x`` at the
        model's input size, the others random resized crops (+ flip, + AugMix)."""
        h = self.hparams
        bb = self.backbone
        original = bb.prepare(x)
        if h.n_views == 1:
            return original
        x3 = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
        crops = random_resized_crop(x3.expand(h.n_views - 1, -1, -1, -1), bb.image_size,
                                    scale=h.crop_scale, generator=self.generator)
        if h.hflip:
            crops = hflip(crops, 0.5, generator=self.generator)
        if h.augmix:
            crops = augmix(crops, self.generator, severity=h.aug_severity)
        return torch.cat([original, crops.clamp(0, 1)], dim=0)

    def adapt_one(self, x: Tensor) -> Tensor:
        """Reset, tune the context on one image ``x: [1, C, H, W]``, return its logits ``[1, C]``."""
        self.reset()
        bb = self.backbone
        with torch.no_grad():
            feats = bb.encode_images(self.views(x))  # [n_views, D], frozen encoder
        selected = None
        for _ in range(self.hparams.steps):
            logits = bb.logits(feats, bb.text_features())
            if selected is None:
                selected = select_confident(logits, self.n_selected)
            self._step(marginal_entropy(logits[selected]))
        self.last_selected = selected
        with torch.no_grad():
            return bb.logits(feats[:1], bb.text_features())

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` in [0, 1] -> logits ``[B, num_classes]``, each image tuned on
        its own from the initial context (the context is left tuned to the last image)."""
        if x.ndim != 4:
            raise ValueError(f"tpt expects images [B, C, H, W], got {tuple(x.shape)}")
        return torch.cat([self.adapt_one(x[i : i + 1]) for i in range(x.shape[0])], dim=0)
