"""BYOL: the target moves only by EMA, the loss is symmetric, and pre-training on digits
raises the k-NN accuracy of the features above the random initialisation's."""

from __future__ import annotations

import math

import pytest
import torch
from ssl_support import SIZE, pretrain

from shiftlab.backbones import create_backbone
from shiftlab.batches import Views
from shiftlab.data import augment
from shiftlab.data.tensors import TensorData
from shiftlab.methods import create_method
from shiftlab.methods.ssl import cosine_momentum
from shiftlab.methods.ssl.byol import BYOL
from shiftlab.optim import OptimizerFactory

SMALL = {"projection_hidden": 256, "predictor_hidden": 256, "projection_dim": 64}


def _byol(**hp: object) -> BYOL:
    torch.manual_seed(0)
    net = create_backbone("lenet", in_chans=1, num_classes=10, image_size=SIZE)
    m = create_method("byol", backbone=net, num_classes=10, hparams={**SMALL, **hp},
                      optimizer=OptimizerFactory(lr=1e-3))
    assert isinstance(m, BYOL)
    return m


def _views(train: TensorData, n: int = 32, seed: int = 0) -> Views:
    return augment.byol_digits(SIZE).apply(train.float_x(slice(0, n)), torch.Generator().manual_seed(seed))


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.996, 0.25) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)


def test_target_moves_only_by_ema(digits16: tuple[TensorData, TensorData, TensorData]) -> None:
    """No gradient reaches the target; after an update, target == tau * old + (1 - tau) * online
    exactly (same float ops), with tau from the cosine schedule at the current progress."""
    m = _byol(base_momentum=0.9)  # a visible step
    target, online = m.ema_pairs()
    assert target and all(not t.requires_grad for t in target)
    assert len(target) == len(online) and all(t.shape == o.shape for t, o in zip(target, online, strict=True))
    # the target is a copy of the online backbone (no head) + projector, not shared storage
    assert all(torch.equal(t, o) and t.data_ptr() != o.data_ptr() for t, o in zip(target, online, strict=True))
    views = _views(digits16[0])
    m.set_progress(0.3)
    m.update(views)  # a first step so that target and online differ
    old = [t.detach().clone() for t in m.ema_pairs()[0]]
    m.set_progress(0.6)
    out = m.update(views)
    tau = cosine_momentum(0.9, 0.6)
    assert out["tau"] == pytest.approx(tau) and m.tau == tau
    new_target, new_online = m.ema_pairs()
    moved = 0
    for o_old, t_new, o_new in zip(old, new_target, new_online, strict=True):
        assert t_new.grad is None
        expected = o_old.mul(tau).add_(o_new.detach(), alpha=1.0 - tau)
        assert torch.equal(t_new, expected)
        moved += int(not torch.equal(t_new, o_old))
    assert moved > len(old) // 2  # the EMA really moved the target
    # the target's BN layers and weights never enter the optimizer
    opt_params = {id(p) for g in m.opt.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in m.target.parameters()}
    assert not opt_params & {id(p) for p in m.backbone.head.parameters()}


def test_byol_loss_is_symmetric_in_the_views(digits16: tuple[TensorData, TensorData, TensorData]) -> None:
    views = _views(digits16[0], 48, seed=3)
    for joint in (True, False):
        m = _byol(joint_forward=joint)
        m.train()
        with torch.no_grad():
            a, _ = m.loss(views)
            b, _ = m.loss(Views(views.v2, views.v1))
        assert 0.0 < a.item() < 8.0
        assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_byol_on_digits_beats_a_random_backbone(digits16: tuple[TensorData, TensorData, TensorData]) -> None:
    """BYOL pre-training on the 1,347 unlabelled digits (16 px, LeNet, heads 512/128, Adam
    1e-3, 15 epochs of batch 32 = 630 steps, about 15 s on one core) raises the k-NN
    accuracy of the features (weighted k-NN, k=20, T=0.07; a bank of 10 labelled training
    digits per class, the 450 test digits as queries) from 58.9% (random initialisation,
    seed 0) to 72.9%. The test asks for a margin of 6 points (8 points of headroom).

    Measured with the same budget for other seeds: seed 1 63.3% -> 71.3%, seed 2 66.7% ->
    66.9% (no gain). BYOL is slow to start on such a short schedule: its k-NN accuracy first
    dips, which is why ``base_momentum`` is 0.95 here (the paper's 0.996 is for 300k
    steps). For reference, raw pixels score 89.8% with
    this bank: the random LeNet loses information that BYOL's invariances partly recover.
    """
    r = pretrain("byol", {"projection_hidden": 512, "predictor_hidden": 512, "projection_dim": 128,
                          "base_momentum": 0.95}, 1e-3, 15, 32, digits16)
    assert r.init_knn == pytest.approx(0.589, abs=0.02)
    assert all(math.isfinite(v) for v in r.losses)
    assert r.epoch_loss(-1) < 0.5 * r.epoch_loss(0)  # measured 1.98 -> 0.66
    assert r.knn > r.init_knn + 0.06, f"k-NN accuracy {r.init_knn:.3f} -> {r.knn:.3f} in {r.seconds:.1f} s"
