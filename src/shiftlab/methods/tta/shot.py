"""SHOT-IM: test-time information maximisation of the feature extractor, the classifier frozen."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import marginal_entropy, mean_entropy
from shiftlab.methods import METHODS
from shiftlab.methods.tta.common import BatchNormAdapter, TtaMethod, batchnorm_layers
from shiftlab.optim import OptimizerFactory


@dataclass(frozen=True)
class ShotHparams:
    """Hyper-parameters of :class:`Shot` (Liang, Hu & Feng, ICML 2020).

    Attributes:
        diversity_weight: weight of the diversity term ``-H(mean_b p_b)`` (paper: 1).
        pseudo_label_weight: ``beta``, weight of the self-supervised pseudo-label
            cross-entropy (paper: 0.3 on Office, 0.1 on digits; 0 gives SHOT-IM, the
            default here: an online stream has no epoch to cluster over, so the labels
            come from the batch's own centroids).
        steps: optimisation steps per test batch.
        adapt_bn_stats: normalise with test-batch BatchNorm statistics (when the backbone
            has BatchNorm; the paper trains the target model in training mode, which does
            the same).

    The optimizer is the factory passed in; default Adam, lr 1e-4 (the paper's offline
    SGD lr 0.01 for 30 epochs moves an online model too far from one batch).
    """

    diversity_weight: float = 1.0
    pseudo_label_weight: float = 0.0
    steps: int = 1
    adapt_bn_stats: bool = True


def centroid_pseudo_labels(features: Tensor, probs: Tensor) -> Tensor:
    """SHOT's self-supervised labels (Sec. 3.3), on one batch.

    Class centroids are the probability-weighted mean features, each sample takes the
    class of its nearest centroid (cosine distance), and one more round recomputes the
    centroids from those hard labels.

    Args:
        features: ``[B, D]``; probs: ``[B, C]`` softmax outputs.

    Returns:
        ``[B]`` int64 labels.
    """
    f = F.normalize(features.detach(), dim=1)
    c = probs.detach().T @ f / probs.detach().sum(0, keepdim=True).T.clamp_min(1e-8)  # [C, D]
    labels = (f @ F.normalize(c, dim=1).T).argmax(1)
    onehot = F.one_hot(labels, probs.shape[1]).to(f.dtype)
    c = onehot.T @ f / onehot.sum(0, keepdim=True).T.clamp_min(1e-8)
    return (f @ F.normalize(c, dim=1).T).argmax(1)


@METHODS.register(
    "shot",
    summary="SHOT-IM: entropy + diversity (information maximisation) on the feature extractor, head frozen",
    paper="Liang, Hu & Feng, 'Do We Really Need to Access the Source Data? Source Hypothesis Transfer "
    "for Unsupervised Domain Adaptation', ICML 2020",
    family="tta",
)
class Shot(TtaMethod):
    """Online source-hypothesis transfer: the classifier head (the source hypothesis) stays
    fixed and every other weight of the backbone is updated on each test batch by
    ``L = mean_b H(p_b) - diversity_weight * H(mean_b p_b) + beta * CE(p, y_hat)``
    (``y_hat`` from :func:`centroid_pseudo_labels`). The diversity term keeps the
    predictions spread over the classes, so that entropy minimisation of the whole
    feature extractor does not collapse to one class. The returned logits are those of
    the forward pass the update uses (before the step)."""

    Hparams = ShotHparams
    default_optimizer = OptimizerFactory(name="adam", lr=1e-4)

    def __init__(self, backbone: Backbone, num_classes: int, hparams: ShotHparams,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams, optimizer)
        if hparams.steps < 1 or hparams.diversity_weight < 0 or hparams.pseudo_label_weight < 0:
            raise RecipeError("method 'shot': need steps >= 1 and non-negative weights, got "
                              f"{hparams.steps}, {hparams.diversity_weight}, {hparams.pseudo_label_weight}")
        self.bn = (BatchNormAdapter(self.backbone, 0.0, None, "shot")
                   if hparams.adapt_bn_stats and batchnorm_layers(self.backbone) else None)
        head = {id(p) for p in self.backbone.head.parameters()}
        self._params = [p for p in self.backbone.parameters() if id(p) not in head]
        if not self._params:
            raise RecipeError("method 'shot': the backbone has no parameters outside its head to adapt.")
        self._freeze_all_but(self._params)
        self._finish_init()

    def adapted_parameters(self) -> list[nn.Parameter]:
        """Every backbone parameter except the head's."""
        return self._params

    def loss(self, features: Tensor, logits: Tensor) -> Tensor:
        """The SHOT objective of one batch (scalar); ``features: [B, D]``, ``logits: [B, C]``."""
        h = self.hparams
        loss = mean_entropy(logits) - h.diversity_weight * marginal_entropy(logits)
        if h.pseudo_label_weight > 0:
            labels = centroid_pseudo_labels(features, logits.softmax(1))
            loss = loss + h.pseudo_label_weight * F.cross_entropy(logits, labels)
        return loss

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]``; ``steps`` SHOT steps."""
        if x.shape[0] < 2:
            raise RecipeError("method 'shot' needs test batches of at least 2 images (its diversity "
                              "term is over the batch); use the online or episodic protocol with batch_size > 1.")
        self.backbone.eval()
        for _ in range(self.hparams.steps):
            f = self.backbone.forward_features(x)
            logits = self.backbone.head(f)
            self._step(self.loss(f, logits))
        return logits.detach()
