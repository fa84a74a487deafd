"""Helpers of the SSL method tests (imported by name, like ``tta_support``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from shiftlab.backbones import create_backbone
from shiftlab.backbones.base import Backbone
from shiftlab.data import augment
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData
from shiftlab.data.transforms import fit_dataset
from shiftlab.experiment.ssl_run import draw_labelled
from shiftlab.methods import create_method
from shiftlab.methods.ssl.common import SslMethod
from shiftlab.methods.ssl.monitor import extract_features, knn_accuracy
from shiftlab.optim import OptimizerFactory

SIZE = 16


def load_digits16() -> tuple[TensorData, TensorData, TensorData]:
    """``(train, bank, test)``: the 1,347 training digits at 16 px, a bank of 10 labelled
    training digits per class (seeded draw) and the 450 test digits."""
    train = fit_dataset(load_dataset("digits", "train"), SIZE, 1, "resize")
    test = fit_dataset(load_dataset("digits", "test"), SIZE, 1, "resize")
    bank_idx, _ = draw_labelled(train, 10, torch.Generator().manual_seed(0))
    return train, train.subset(bank_idx), test


def knn10(net: Backbone, bank: TensorData, test: TensorData) -> float:
    """Weighted k-NN accuracy (k=20, T=0.07) of ``net``'s features: bank -> test digits."""
    return knn_accuracy(extract_features(net, bank), bank.y, extract_features(net, test), test.y)


@dataclass(frozen=True)
class Pretrained:
    """What :func:`pretrain` measured: k-NN accuracy before/after, per-step losses, seconds."""

    init_knn: float
    knn: float
    losses: list[float]
    steps_per_epoch: int
    seconds: float

    def epoch_loss(self, epoch: int) -> float:
        """Mean loss of one epoch (``-1``: the last)."""
        s = self.steps_per_epoch
        part = self.losses[epoch * s:(epoch + 1) * s] if epoch >= 0 else self.losses[-s:]
        return sum(part) / len(part)


def pretrain(method: str, hparams: dict[str, Any], lr: float, epochs: int, batch_size: int,
             digits: tuple[TensorData, TensorData, TensorData], seed: int = 0) -> Pretrained:
    """Pre-train ``method`` on a LeNet over the 16 px training digits with
    :func:`~shiftlab.data.augment.byol_digits` views (Adam ``lr``), and score the k-NN
    monitor (:func:`knn10`) before and after."""
    train, bank, test = digits
    torch.manual_seed(seed)
    net = create_backbone("lenet", in_chans=1, num_classes=10, image_size=SIZE)
    m = create_method(method, backbone=net, num_classes=10, hparams=hparams, optimizer=OptimizerFactory(lr=lr))
    assert isinstance(m, SslMethod) and m.batch_kind == "views"
    init = knn10(net, bank, test)
    views_of = augment.byol_digits(SIZE)
    steps = len(train) // batch_size
    losses: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(100 + epoch + 1000 * seed)
        order = torch.Generator().manual_seed(epoch + 1000 * seed)
        for i, batch in enumerate(train.batches(batch_size, shuffle=True, generator=order, drop_last=True)):
            m.set_progress((epoch * steps + i) / (epochs * steps))
            losses.append(m.update(views_of.apply(batch.x, gen))["loss"])
    seconds = time.perf_counter() - t0
    return Pretrained(init, knn10(net, bank, test), losses, steps, seconds)
