"""Monitors of a representation: weighted k-NN accuracy and linear-probe accuracy.

Both score frozen backbone features ``forward_features(x): [N, D]`` with labels that the
self-supervised method never saw:

* :func:`knn_accuracy`: the weighted k-nearest-neighbour classifier of Wu et al.,
  "Unsupervised Feature Learning via Non-Parametric Instance Discrimination" (InstDisc),
  CVPR 2018, sec. 3.4, as DINO (Caron et al., ICCV 2021) uses it to monitor training:
  cosine similarities between l2-normalised query and bank features, the ``k`` most
  similar bank items vote for their class with weight ``exp(s / T)``, the class with the
  largest summed weight wins. DINO's defaults: ``k = 20``, ``T = 0.07`` (InstDisc used
  ``k = 200``).
* :func:`linear_probe`: a linear classifier (multinomial logistic regression) trained on
  frozen features, the standard linear evaluation. Features are standardised with the
  training features' mean and std first (an affine map, so still a linear probe; it makes
  the optimisation independent of the feature scale); full-batch Adam with weight decay,
  deterministic for a given seed.

:func:`extract_features` computes the features in eval mode (BatchNorm running
statistics, no dropout) under ``torch.no_grad``, in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.data.tensors import TensorData, to_float

__all__ = ["ProbeResult", "extract_features", "knn_accuracy", "knn_predict", "linear_probe"]


@torch.no_grad()
def extract_features(
    backbone: Backbone, x: Tensor | TensorData, device: torch.device | str = "cpu", batch_size: int = 512
) -> Tensor:
    """``backbone.forward_features`` of every image, in eval mode, on CPU.

    Args:
        backbone: the network (its training flag is restored afterwards).
        x: ``[N, C, H, W]`` images (uint8 or float in [0, 1]) or a :class:`TensorData`.
        device: where the network runs.
        batch_size: images per forward pass.

    Returns:
        ``[N, D]`` float32 features on CPU.
    """
    images = x.x if isinstance(x, TensorData) else x
    was_training = backbone.training
    backbone.eval()
    try:
        out = [backbone.forward_features(to_float(images[i : i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        backbone.train(was_training)
    if not out:
        return torch.zeros(0, backbone.num_features)
    return torch.cat(out)


@torch.no_grad()
def knn_predict(
    bank: Tensor, bank_y: Tensor, query: Tensor, k: int = 20, temperature: float = 0.07,
    num_classes: int | None = None, chunk: int = 1024,
) -> Tensor:
    """Weighted k-NN predictions (InstDisc / DINO; see the module docstring).

    Args:
        bank: ``[N, D]`` labelled features.
        bank_y: ``[N]`` int64 labels.
        query: ``[M, D]`` features to classify.
        k: neighbours (capped at ``N``).
        temperature: ``T`` of the weights ``exp(cos / T)``.
        num_classes: classes (default ``bank_y.max() + 1``).
        chunk: queries per similarity matrix.

    Returns:
        ``[M]`` int64 predicted classes.
    """
    if bank.ndim != 2 or query.ndim != 2 or bank.shape[1] != query.shape[1]:
        raise ValueError(f"knn_predict: bank {tuple(bank.shape)} and query {tuple(query.shape)} must be [N, D], [M, D]")
    if len(bank) != len(bank_y) or len(bank) == 0:
        raise ValueError(f"knn_predict: {len(bank)} bank features and {len(bank_y)} labels (need >= 1)")
    if temperature <= 0 or k < 1:
        raise ValueError(f"knn_predict: need k >= 1 and temperature > 0, got {k}, {temperature}")
    c = int(num_classes if num_classes is not None else int(bank_y.max()) + 1)
    k = min(k, len(bank))
    bank_n = F.normalize(bank.float(), dim=1)
    out = []
    for i in range(0, len(query), chunk):
        q = F.normalize(query[i : i + chunk].float(), dim=1)
        sim, idx = (q @ bank_n.T).topk(k, dim=1)  # [m, k]
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), c, dtype=weights.dtype).scatter_add_(1, bank_y[idx], weights)
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def knn_accuracy(
    bank: Tensor, bank_y: Tensor, query: Tensor, query_y: Tensor, k: int = 20, temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict` on ``query: [M, D]`` with labels ``query_y: [M]``."""
    if len(query) == 0:
        raise ValueError("knn_accuracy: no query features")
    pred = knn_predict(bank, bank_y, query, k, temperature, num_classes)
    return (pred == query_y).float().mean().item()


@dataclass(frozen=True)
class ProbeResult:
    """A trained linear probe.

    Attributes:
        accuracy: top-1 accuracy on the evaluation features.
        train_accuracy: top-1 accuracy on the training features.
        mean: ``[D]`` standardisation mean (of the training features).
        std: ``[D]`` standardisation std.
        linear: the classifier ``Linear(D, C)`` on standardised features.
    """

    accuracy: float
    train_accuracy: float
    mean: Tensor
    std: Tensor
    linear: nn.Linear

    def logits(self, features: Tensor) -> Tensor:
        """``[M, D]`` features -> ``[M, C]`` logits."""
        with torch.no_grad():
            return self.linear((features - self.mean) / self.std)


def linear_probe(
    train: Tensor, train_y: Tensor, test: Tensor, test_y: Tensor, num_classes: int | None = None,
    steps: int = 300, lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0,
) -> ProbeResult:
    """Multinomial logistic regression on frozen features (see the module docstring).

    Args:
        train: ``[N, D]`` training features.
        train_y: ``[N]`` int64 labels.
        test: ``[M, D]`` evaluation features.
        test_y: ``[M]`` int64 labels.
        num_classes: classes (default: ``max label + 1`` over both sets).
        steps: full-batch Adam steps.
        lr: Adam learning rate.
        weight_decay: L2 penalty on the weights (Adam's coupled weight decay).
        seed: seed of the classifier's initialisation (a local generator; the global RNG
            is not touched).

    Returns:
        A :class:`ProbeResult`.
    """
    if len(train) == 0 or len(train) != len(train_y):
        raise ValueError(f"linear_probe: {len(train)} training features and {len(train_y)} labels")
    c = int(num_classes if num_classes is not None else int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1)
    train, test = train.float(), test.float()
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False).clamp_min(1e-6) if len(train) > 1 else torch.ones_like(mean)
    xtr = (train - mean) / std
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(train.shape[1], c)
    with torch.no_grad():
        bound = 1.0 / max(train.shape[1], 1) ** 0.5
        linear.weight.copy_(torch.rand(linear.weight.shape, generator=gen) * 2 * bound - bound)
        linear.bias.zero_()
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(linear(xtr), train_y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    result = ProbeResult(0.0, 0.0, mean, std, linear)
    train_acc = (result.logits(train).argmax(1) == train_y).float().mean().item()
    acc = (result.logits(test).argmax(1) == test_y).float().mean().item() if len(test) else float("nan")
    return ProbeResult(acc, train_acc, mean, std, linear)
