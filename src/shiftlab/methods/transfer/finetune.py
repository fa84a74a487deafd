"""Fine-tuning a source-trained network on a labelled target set: all layers, the head only
(linear probe) or all but the first ``k`` blocks, with optional discriminative learning rates.

A **block** here is a convolution or linear layer together with the normalisation layers
that follow it before the next convolution or linear layer (found by walking the backbone's
modules in registration order, which is their forward order in every shiftlab backbone).
``backbone_blocks(create_backbone("lenet"))`` has four: conv1, conv2, fc1, fc2 (the head is
not a block). Frozen blocks keep their BatchNorm statistics too (their norm layers stay in
eval mode while the method trains).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import Labeled
from shiftlab.errors import RecipeError
from shiftlab.methods import METHODS
from shiftlab.methods.base import TrainableMethod
from shiftlab.methods.erm import cross_entropy_step
from shiftlab.optim import OptimizerFactory

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def backbone_blocks(net: Backbone) -> list[list[nn.Module]]:
    """The backbone's blocks in forward order, the head excluded (see the module doc)."""
    head = getattr(net, "head", None)
    skip = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    blocks: list[list[nn.Module]] = []
    for m in net.modules():
        if id(m) in skip:
            continue
        if isinstance(m, _LAYERS):
            blocks.append([m])
        elif isinstance(m, _NORMS) and any(p is not None for p in m.parameters(recurse=False)):
            if blocks:
                blocks[-1].append(m)
            else:
                blocks.append([m])
    return blocks


@dataclass(frozen=True)
class FineTuneHparams:
    """Hyper-parameters of :class:`FineTune`.

    Attributes:
        mode: ``full`` (every layer), ``head`` (the head only: a linear probe on frozen
            features) or ``partial`` (freeze the first ``freeze_blocks`` blocks).
        freeze_blocks: blocks frozen in ``partial`` mode.
        lr_decay: discriminative learning rates (Howard & Ruder, ULMFiT, ACL 2018): the head
            trains at the optimizer's lr and block ``i`` of ``n`` (counted from the input)
            at ``lr * lr_decay ** (n - i)``; 1.0 gives one learning rate.
        reset_head: replace the head by a fresh linear layer (needed when the target has
            other classes than the source).
        label_smoothing: cross-entropy label smoothing.
        lr_schedule: ``constant``, ``cosine`` or ``dann`` annealing over the fine-tuning.
    """

    mode: Literal["full", "head", "partial"] = "full"
    freeze_blocks: int = 0
    lr_decay: float = 1.0
    reset_head: bool = False
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"


@METHODS.register(
    "finetune",
    summary="Fine-tune a source-trained network on target labels: full, head only (linear probe) or partial",
    paper="Yosinski et al., 'How transferable are features in deep neural networks?', NeurIPS 2014; "
    "discriminative learning rates: Howard & Ruder, ULMFiT, ACL 2018",
    family="transfer",
)
class FineTune(TrainableMethod):
    """Cross-entropy fine-tuning of a (pre-trained) ``backbone`` with some blocks frozen.

    ``update`` takes :class:`~shiftlab.batches.Labeled` batches ``x: [B, C, H, W]``,
    ``y: [B]``; ``predict`` gives logits ``[B, num_classes]``.
    """

    Hparams = FineTuneHparams
    batch_kind = "labeled"

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: FineTuneHparams, optimizer: OptimizerFactory
    ) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.mode not in ("full", "head", "partial"):
            raise RecipeError(f"finetune.mode must be full, head or partial, got {hparams.mode!r}")
        if hparams.lr_decay <= 0:
            raise RecipeError(f"finetune.lr_decay must be > 0, got {hparams.lr_decay}")
        self.lr_schedule = hparams.lr_schedule
        if hparams.reset_head or getattr(backbone, "num_classes", num_classes) != num_classes:
            backbone.reset_head(num_classes)
        blocks = backbone_blocks(backbone)
        n = len(blocks)
        frozen = {"full": 0, "head": n, "partial": hparams.freeze_blocks}[hparams.mode]
        if frozen < 0 or frozen > n:
            raise RecipeError(f"finetune.freeze_blocks must be in 0..{n} for this backbone ({n} blocks), got {frozen}")
        self.frozen_modules: list[nn.Module] = [m for b in blocks[:frozen] for m in b]
        for m in self.frozen_modules:
            m.requires_grad_(False)
        groups: list[dict] = []
        seen: set[int] = set()
        for i, block in enumerate(blocks[frozen:], start=frozen):
            params = [p for m in block for p in m.parameters(recurse=False) if p.requires_grad]
            seen.update(id(p) for m in block for p in m.parameters(recurse=False))
            if params:
                groups.append({"params": params, "lr": optimizer.lr * hparams.lr_decay ** (n - i)})
        for m in blocks[:frozen]:
            seen.update(id(p) for mod in m for p in mod.parameters(recurse=False))
        rest = [p for p in backbone.parameters() if id(p) not in seen and p.requires_grad]
        groups.append({"params": rest, "lr": optimizer.lr})  # the head (and any unblocked parameter)
        self.num_frozen_blocks = frozen
        self.num_blocks = n
        self.opt = optimizer([g for g in groups if g["params"]])

    def train(self, mode: bool = True) -> FineTune:
        super().train(mode)
        for m in self.frozen_modules:  # frozen blocks keep their normalisation statistics
            m.eval()
        return self

    def update(self, batch: Labeled) -> dict[str, float]:
        """One cross-entropy step on ``batch.x: [B, C, H, W]``, ``batch.y: [B]``."""
        self.train()  # frozen blocks stay in eval mode (see train())
        return cross_entropy_step(self.backbone, self.opt, batch, self.hparams.label_smoothing)
