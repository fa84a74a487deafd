"""SimSiam and SimCLR learn on digits: the loss falls and the k-NN accuracy of the features
rises above the random initialisation's (same protocol as BYOL's test, see ssl_support)."""

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
from shiftlab.methods.ssl.simclr import SimCLR
from shiftlab.methods.ssl.simsiam import SimSiam


def test_simclr_on_digits_beats_a_random_backbone(digits16: tuple[TensorData, TensorData, TensorData]) -> None:
    """SimCLR (paper defaults: head 84 -> 128, temperature 0.5; Adam 1e-3) for 10 epochs of
    batch 32 (420 steps, about 7 s on one core): k-NN accuracy 58.9% -> 75.1% (seed 0;
    seeds 1 and 2: 63.3% -> 78.2%, 66.7% -> 71.1%). Margin asked: 10 points."""
    r = pretrain("simclr", {}, 1e-3, 10, 32, digits16)
    assert all(math.isfinite(v) for v in r.losses)
    assert r.epoch_loss(0) == pytest.approx(3.8, abs=0.2)  # near log(2B - 1) = log(63) = 4.14 at the start
    assert r.epoch_loss(-1) < r.epoch_loss(0) - 0.6  # measured 3.81 -> 2.92
    assert r.knn > r.init_knn + 0.10, f"k-NN accuracy {r.init_knn:.3f} -> {r.knn:.3f} in {r.seconds:.1f} s"


def test_simsiam_on_digits_beats_a_random_backbone(digits16: tuple[TensorData, TensorData, TensorData]) -> None:
    """SimSiam (2-layer 512 projector as the paper's CIFAR variant, predictor bottleneck 128,
    Adam 1e-3 on all parameters) for 15 epochs of batch 64 (315 steps, about 10 s on one
    core): loss -0.17 -> -0.78, k-NN accuracy 58.9% -> 70.0% (seed 0). Margin asked: 5
    points. Other seeds gain less in this budget (seed 1 63.3% -> 64.9%, seed 2 66.7% ->
    69.1%); SimSiam, like BYOL, starts slowly."""
    r = pretrain("simsiam", {"projection_hidden": 512, "projection_dim": 512, "predictor_hidden": 128,
                             "projection_layers": 2, "fix_predictor_lr": False}, 1e-3, 15, 64, digits16)
    assert all(math.isfinite(v) for v in r.losses) and all(-1.0 <= v <= 1.0 for v in r.losses)
    assert r.epoch_loss(-1) < r.epoch_loss(0) - 0.4
    assert r.knn > r.init_knn + 0.05, f"k-NN accuracy {r.init_knn:.3f} -> {r.knn:.3f} in {r.seconds:.1f} s"


def test_simsiam_stop_gradient_and_fixed_predictor_lr(digits16: tuple[TensorData, TensorData, TensorData]) -> None:
    torch.manual_seed(0)
    net = create_backbone("lenet", in_chans=1, num_classes=10, image_size=SIZE)
    m = create_method("simsiam", backbone=net, num_classes=10,
                      hparams={"projection_hidden": 64, "projection_dim": 64, "predictor_hidden": 16})
    assert isinstance(m, SimSiam)
    views = augment.byol_digits(SIZE).apply(digits16[0].float_x(slice(0, 32)), torch.Generator().manual_seed(0))
    m.train()
    with torch.no_grad():
        a, _ = m.loss(views)
        b, _ = m.loss(Views(views.v2, views.v1))
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    m.set_progress(0.0)
    m.set_progress(0.5)  # cosine: half the base rate, except the predictor's (fixed_lr)
    lrs = [g["lr"] for g in m.opt.param_groups]
    assert lrs[0] == pytest.approx(0.5 * 1e-3) and lrs[1] == pytest.approx(1e-3)
    out = m.update(views)
    assert set(out) == {"loss", "z_std"} and 0.0 < out["z_std"] < 1.0


def test_simclr_loss_is_symmetric_and_logs_positive_accuracy(
    digits16: tuple[TensorData, TensorData, TensorData],
) -> None:
    torch.manual_seed(0)
    net = create_backbone("lenet", in_chans=1, num_classes=10, image_size=SIZE)
    m = create_method("simclr", backbone=net, num_classes=10)
    assert isinstance(m, SimCLR) and m.projector[0].in_features == net.num_features
    views = augment.byol_digits(SIZE).apply(digits16[0].float_x(slice(0, 32)), torch.Generator().manual_seed(1))
    m.train()
    with torch.no_grad():
        a, logs = m.loss(views)
        b, _ = m.loss(Views(views.v2, views.v1))
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    assert 0.0 <= logs["pos_acc"] <= 1.0
    with pytest.raises(ValueError, match="temperature"):
        create_method("simclr", backbone=net, num_classes=10, hparams={"temperature": 0.0})
