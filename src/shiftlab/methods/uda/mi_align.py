"""MI alignment: DANN, then fine-tuning that maximises the mutual information between
same-class source and pseudo-labelled target projections (the MNIST -> MNIST-M study)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.batches import DomainPair
from shiftlab.errors import RecipeError
from shiftlab.losses.mutual_info import dot_critic, jsd_mi
from shiftlab.methods import METHODS
from shiftlab.methods.uda.common import grl_coefficient
from shiftlab.methods.uda.dann import DANN, DannHparams
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class MiAlignHparams(DannHparams):
    """Hyper-parameters of :class:`MIAlign` (defaults: the MNIST-DomainAdaptation study).

    Attributes:
        dann_epochs: length of stage 1 (DANN) in epochs (40).
        mi_epochs: length of stage 2 (DANN losses + MI maximisation) in epochs (40). The
            recipe's ``train.epochs`` must be ``dann_epochs + mi_epochs``.
        confidence: a target image is pseudo-labelled when the labeller's top softmax
            probability is at least this (0.9).
        mi_weight: weight of the negative JSD mutual-information bound in stage 2.
        proj_dim: output width of the projection head ``D -> D -> proj_dim``.
        temperature: the critic is ``cos(a, b) / temperature``.
        pseudo_labeler: ``frozen`` (the model as it was at the end of stage 1, as in the
            study) or ``current`` (the model being trained, in eval mode).

    The DANN fields (``trade_off``, ``lambda_schedule``, ``gamma``, ``disc_hidden``,
    ``disc_input``, ``disc_dropout``, ``disc_layers``, ``lr_schedule``) are :class:`~shiftlab.methods.uda.dann.DannHparams`'
    and act in both stages; the ``ganin`` ramp of lambda runs over stage 1, then stays 1.
    """

    dann_epochs: int = 40
    mi_epochs: int = 40
    confidence: float = 0.9
    mi_weight: float = 1.0
    proj_dim: int = 64
    temperature: float = 0.5
    pseudo_labeler: str = "frozen"


@METHODS.register(
    "mi_align",
    summary="Two stages: DANN, then + projection head maximising JSD mutual information of same-class source/target",
    paper="Sharma et al., 'MaNi: Maximizing Mutual Information for Nuclei Cross-Domain Unsupervised "
    "Segmentation', MICCAI 2022, applied to MNIST -> MNIST-M by YashSharma/MNIST-DomainAdaptation",
    family="uda",
)
class MIAlign(DANN):
    """Stage 1 (the first ``dann_epochs``) is :class:`~shiftlab.methods.uda.dann.DANN`
    (its ``lambda`` ramp runs over stage 1 only, then stays at 1).
    Stage 2 keeps the class and domain losses and adds ``-mi_weight * I_JSD``, the
    Jensen-Shannon mutual-information bound between projections ``p = proj(f)`` of source
    images and of confidently pseudo-labelled target images, where a (source, target) pair
    is positive when the source label equals the target pseudo-label.

    Shapes: ``f: [B, D]`` features, ``p: [B, proj_dim]`` projections, critic scores
    ``[B, M]`` for the ``M`` confident target images of the batch.
    """

    Hparams = MiAlignHparams

    def __init__(
        self, backbone: Backbone, num_classes: int, hparams: MiAlignHparams, optimizer: OptimizerFactory
    ) -> None:
        if hparams.dann_epochs < 1 or hparams.mi_epochs < 1:
            raise RecipeError("mi_align: dann_epochs and mi_epochs must both be >= 1.")
        if hparams.pseudo_labeler not in ("frozen", "current"):
            raise RecipeError(f"mi_align: pseudo_labeler must be frozen or current, got {hparams.pseudo_labeler!r}.")
        super().__init__(backbone, num_classes, hparams, optimizer)  # the discriminator
        d = backbone.num_features
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, hparams.proj_dim))
        # The stage-1 model, frozen at the switch (always present so checkpoints have one layout).
        self.labeler = copy.deepcopy(backbone).requires_grad_(False)
        self.register_buffer("stage2_started", torch.zeros((), dtype=torch.bool))
        self.opt = optimizer([p for p in self.parameters() if p.requires_grad])  # + projection, - labeler

    @property
    def switch(self) -> float:
        """Training progress at which stage 2 starts."""
        h = self.hparams
        return h.dann_epochs / (h.dann_epochs + h.mi_epochs)

    def set_schedule(self, epochs: int, steps_per_epoch: int) -> None:
        super().set_schedule(epochs, steps_per_epoch)
        h = self.hparams
        if epochs != h.dann_epochs + h.mi_epochs:
            raise RecipeError(
                f"mi_align runs {h.dann_epochs} DANN epochs then {h.mi_epochs} MI epochs, but train.epochs "
                f"is {epochs}. Set train.epochs={h.dann_epochs + h.mi_epochs}, or change "
                "method.hparams.dann_epochs / mi_epochs so that they add up to train.epochs."
            )

    def adversarial_weight(self) -> float:
        h = self.hparams
        return grl_coefficient(min(self.progress / self.switch, 1.0), h.lambda_schedule, h.gamma)

    @torch.no_grad()
    def _pseudo_labels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pseudo-labels ``[B']`` and the confident mask ``[B']`` for target images ``x``."""
        net = self.labeler if self.hparams.pseudo_labeler == "frozen" else self.backbone
        was = net.training
        net.eval()
        conf, label = torch.softmax(net(x), dim=1).max(dim=1)
        net.train(was)
        return label, conf >= self.hparams.confidence

    def update(self, batch: DomainPair) -> dict[str, float]:
        """One step; returns ``loss``, ``cls``, ``domain``, ``domain_acc``, ``lambda``, and in
        stage 2 also ``mi`` (the JSD bound) and ``pseudo_frac`` (confident target fraction)."""
        self.train()
        h = self.hparams
        stage2 = self.progress >= self.switch
        if stage2 and not bool(self.stage2_started):
            self.labeler.load_state_dict(self.backbone.state_dict())
            self.stage2_started.fill_(True)
        loss, feats, out = self.dann_losses(batch)
        b = len(batch.source.y)
        f_s, f_t = feats[:b], feats[b:]
        if stage2:
            labels, keep = self._pseudo_labels(batch.target_x)
            mi = torch.zeros((), device=f_s.device)
            if keep.any():
                scores = dot_critic(self.projection(f_s), self.projection(f_t[keep]), h.temperature)
                positive = batch.source.y[:, None] == labels[keep][None, :]
                mi = jsd_mi(scores, positive)
            loss = loss - h.mi_weight * mi
            out.update(mi=mi.item(), pseudo_frac=keep.float().mean().item())
        self.step(loss)
        return {"loss": loss.item(), **out}
