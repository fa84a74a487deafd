"""The ``finetune`` method: what each mode freezes, discriminative learning rates, learning."""

from __future__ import annotations

import pytest
import torch

from shiftlab.backbones import create_backbone
from shiftlab.batches import Labeled
from shiftlab.errors import RecipeError
from shiftlab.methods import create_method
from shiftlab.methods.transfer import backbone_blocks
from shiftlab.optim import OptimizerFactory


def _net(name: str = "conv4") -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, in_chans=1, num_classes=5, image_size=28)


def _step(method, n: int = 3) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        method.update(Labeled(torch.rand(16, 1, 28, 28, generator=g), torch.randint(5, (16,), generator=g)))


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_blocks_of_the_bundled_backbones() -> None:
    assert [len(b) for b in backbone_blocks(_net("conv4"))] == [2, 2, 2, 2]  # conv + BN each
    assert len(backbone_blocks(_net("lenet"))) == 4  # conv1, conv2, fc1, fc2; the head is not a block
    assert len(backbone_blocks(_net("dann_cnn"))) == 4


def test_head_mode_is_a_linear_probe_with_frozen_batchnorm() -> None:
    net = _net()
    before = _snapshot(net)
    m = create_method("finetune", backbone=net, num_classes=5, hparams={"mode": "head"},
                      optimizer=OptimizerFactory(lr=1e-2))
    _step(m)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}  # BN running statistics included: unchanged


def test_partial_mode_freezes_the_first_blocks_only() -> None:
    net = _net()
    before = _snapshot(net)
    m = create_method("finetune", backbone=net, num_classes=5, hparams={"mode": "partial", "freeze_blocks": 2},
                      optimizer=OptimizerFactory(lr=1e-2))
    _step(m)
    after = net.state_dict()
    changed = {k.split(".")[1] for k in before if k.startswith("encoder.") and not torch.equal(before[k], after[k])}
    assert changed == {"8", "9", "12", "13"}  # blocks 3 and 4 (conv, BN); blocks 1 and 2 are modules 0,1,4,5
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_discriminative_learning_rates_decay_towards_the_input() -> None:
    m = create_method("finetune", backbone=_net("lenet"), num_classes=5, hparams={"lr_decay": 0.5},
                      optimizer=OptimizerFactory(lr=1e-2))
    lrs = [g["lr"] for g in m.opt.param_groups]
    assert lrs == pytest.approx([1e-2 * 0.5**4, 1e-2 * 0.5**3, 1e-2 * 0.5**2, 1e-2 * 0.5, 1e-2])


def test_reset_head_and_bad_settings() -> None:
    net = _net("lenet")
    m = create_method("finetune", backbone=net, num_classes=3, hparams={}, optimizer=OptimizerFactory())
    assert m.backbone.head.out_features == 3  # another class count: a fresh head
    with pytest.raises(RecipeError, match="freeze_blocks"):
        create_method("finetune", backbone=_net("lenet"), num_classes=5,
                      hparams={"mode": "partial", "freeze_blocks": 9}, optimizer=OptimizerFactory())
    with pytest.raises(RecipeError, match="mode"):
        create_method("finetune", backbone=_net("lenet"), num_classes=5, hparams={"mode": "some"},
                      optimizer=OptimizerFactory())
