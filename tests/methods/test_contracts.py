"""Contract tests over the whole method registry: a method is tested the day it is registered."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from shiftlab.backbones import create_backbone
from shiftlab.batches import DomainPair, Labeled
from shiftlab.data.augment import byol_digits
from shiftlab.data.sources import load_dataset
from shiftlab.data.transforms import fit_dataset
from shiftlab.methods import (
    METHODS,
    FewShotClassifier,
    TrainableMethod,
    create_method,
    hparam_fields,
)
from shiftlab.methods.ssl.monitor import extract_features, knn_accuracy
from shiftlab.optim import OptimizerFactory


@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_has_frozen_hparams_summary_and_paper(name: str) -> None:
    entry = METHODS.entry(name)
    cls = entry.obj
    assert entry.summary and entry.paper, f"{name}: cite the paper and give a summary"
    assert dataclasses.is_dataclass(cls.Hparams) and cls.Hparams.__dataclass_params__.frozen
    assert cls.__doc__, f"{name}: document the method"
    hparam_fields(name)  # every field has a default (the paper's)
    cls.Hparams()


# Few-shot methods are trainable too, but predict over an episode's classes after
# fit_support; their contract test is tests/methods/fewshot/test_fewshot_methods.py.
# Self-supervised methods (batch kind "views") learn features, not a classifier: they have
# their own contract below.
TRAINABLE = [
    n
    for n in METHODS.names()
    if issubclass(METHODS.get(n), TrainableMethod)
    and not issubclass(METHODS.get(n), FewShotClassifier)
    and METHODS.get(n).batch_kind != "views"
]
SELF_SUPERVISED = [
    n for n in METHODS.names() if issubclass(METHODS.get(n), TrainableMethod) and METHODS.get(n).batch_kind == "views"
]


@pytest.mark.parametrize("name", TRAINABLE)
def test_trainable_method_learns_on_real_digits(name: str) -> None:
    """Within a CPU-time budget of a few seconds, accuracy on held-out digits rises far above 10%."""
    torch.manual_seed(0)
    train = fit_dataset(load_dataset("digits", "train"), 28, 3)
    test = fit_dataset(load_dataset("digits", "test"), 28, 3)
    target = fit_dataset(load_dataset("digits_m", "train"), 28, 3)
    backbone = create_backbone("lenet", in_chans=3, num_classes=10, image_size=28)
    method = create_method(name, backbone=backbone, num_classes=10, optimizer=OptimizerFactory(lr=2e-3))
    assert isinstance(method, TrainableMethod)
    gen = torch.Generator().manual_seed(0)
    steps = 0
    for epoch in range(3):
        method.set_progress(epoch / 3)
        for batch in train.batches(32, shuffle=True, generator=gen, drop_last=True):
            if method.batch_kind == "domain_pair":
                idx = torch.randint(len(target), (32,), generator=gen)
                batch = DomainPair(batch, target.float_x(idx))
            else:
                assert method.batch_kind == "labeled"
                batch = Labeled(batch.x, batch.y)
            losses = method.update(batch)
            assert losses and all(isinstance(v, float) for v in losses.values())
            steps += 1
    method.eval()
    logits = method.predict(test.float_x())
    assert logits.shape == (len(test), 10)
    acc = (logits.argmax(1) == test.y).float().mean().item()
    assert acc > 0.10 + 0.50, f"{name}: accuracy {acc:.3f} after {steps} steps"


@pytest.mark.parametrize("name", SELF_SUPERVISED)
def test_self_supervised_method_trains_on_two_views_of_real_digits(name: str) -> None:
    """With its paper-default hyper-parameters, a ``views`` method takes two augmented views
    per update (2 epochs of digits at 16 px, batch 64): every update returns finite float
    losses, the loss of the second epoch is below the first's, the backbone's untrained
    classification head does not move, and the features stay informative (k-NN accuracy
    with 10 labelled digits per class > 40%; chance is 10%). One torch thread (batches of
    64 small images)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_views_method(name)
    finally:
        torch.set_num_threads(threads)


def _check_views_method(name: str) -> None:
    torch.manual_seed(0)
    train = fit_dataset(load_dataset("digits", "train"), 16, 1, "resize")
    test = fit_dataset(load_dataset("digits", "test"), 16, 1, "resize")
    backbone = create_backbone("lenet", in_chans=1, num_classes=10, image_size=16)
    head = [p.detach().clone() for p in backbone.head.parameters()]
    method = create_method(name, backbone=backbone, num_classes=10, optimizer=OptimizerFactory(lr=1e-3))
    assert isinstance(method, TrainableMethod) and method.family == "ssl"
    views_of = byol_digits(16)
    gen = torch.Generator().manual_seed(0)
    per_epoch: list[float] = []
    for epoch in range(2):
        total, n = 0.0, 0
        for i, batch in enumerate(train.batches(64, shuffle=True, generator=gen, drop_last=True)):
            method.set_progress((epoch * 21 + i) / 42)
            losses = method.update(views_of.apply(batch.x, gen))
            assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
            total, n = total + losses["loss"], n + 1
        per_epoch.append(total / n)
    assert per_epoch[1] < per_epoch[0], f"{name}: loss per epoch {per_epoch}"
    assert all(torch.equal(a, b) for a, b in zip(head, backbone.head.parameters(), strict=True))
    bank = torch.cat([torch.nonzero(train.y == c).squeeze(1)[:10] for c in range(10)])
    acc = knn_accuracy(extract_features(backbone, train.subset(bank)), train.y[bank],
                       extract_features(backbone, test), test.y)
    assert acc > 0.40, f"{name}: k-NN accuracy {acc:.3f}"
    assert method.predict(test.float_x(slice(0, 5))).shape == (5, 10)
