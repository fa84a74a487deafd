"""Contract tests over the whole method registry: a method is tested the day it is registered."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shiftlab.backbones import create_backbone
from shiftlab.batches import DomainPair, Labeled
from shiftlab.data.sources import load_dataset
from shiftlab.data.transforms import fit_dataset
from shiftlab.methods import (
    METHODS,
    FewShotClassifier,
    TrainableMethod,
    create_method,
    hparam_fields,
)
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
TRAINABLE = [
    n
    for n in METHODS.names()
    if issubclass(METHODS.get(n), TrainableMethod)
    and not issubclass(METHODS.get(n), FewShotClassifier)
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
