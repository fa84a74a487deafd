"""Contract tests over every registered test-time method (family ``tta``): frozen
hyper-parameters, ``forward_and_adapt`` shapes, exact ``reset``, clear error without BatchNorm."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tta_support import SIZE, small_bn_cnn

from shiftlab.backbones import create_backbone
from shiftlab.errors import RecipeError
from shiftlab.methods import METHODS, base, create_method
from shiftlab.methods.tta.common import TtaMethod, batchnorm_layers
from shiftlab.optim import OptimizerFactory

TTA = [n for n in METHODS.names() if issubclass(METHODS.get(n), base.TestTimeMethod)
       and getattr(METHODS.get(n), "backbone_kind", "any") == "any"]
# methods that need a CLIP backbone (tpt) have their contract test in test_tpt.py
# small settings so the contract runs in well under a second per method
FAST = {"memo": {"n_augmentations": 4, "hflip": False}, "cotta": {"n_augmentations": 3, "aug_threshold": 1.0}}


def test_the_tta_family_is_registered() -> None:
    assert {"source", "norm", "tent", "memo", "eata", "sar", "cotta", "shot"} <= set(TTA)
    for name in TTA:
        assert METHODS.entry(name).tags.get("family") == "tta"


def _batches(n: int = 3, b: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(b, 1, SIZE, SIZE, generator=g) for _ in range(n)]


def _state(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("name", TTA)
def test_hparams_frozen_shapes_and_exact_reset(name: str) -> None:
    cls = METHODS.get(name)
    assert dataclasses.is_dataclass(cls.Hparams) and cls.Hparams.__dataclass_params__.frozen
    # an aggressive optimizer so that every adapting method visibly moves its weights
    method = create_method(name, backbone=small_bn_cnn(0), num_classes=10, hparams=FAST.get(name, {}),
                           optimizer=OptimizerFactory(name="sgd", lr=0.5, momentum=0.9))
    if name in ("eata", "sar"):  # an untrained net is unsure: let every sample count
        method.e0 = float("inf")
    assert isinstance(method, TtaMethod)
    source = _state(method)
    opt0 = method.opt.state_dict() if method.opt is not None else None
    xs = _batches()
    first = method.forward_and_adapt(xs[0])
    assert first.shape == (8, 10) and torch.isfinite(first).all()
    for x in xs[1:]:
        assert method.forward_and_adapt(x).shape == (8, 10)
    moved = any(not torch.equal(v, source[k]) for k, v in method.state_dict().items())
    assert moved == (name not in ("source", "norm")), f"{name}: adapted state moved={moved}"
    # the BatchNorm running statistics of the source are never overwritten by adaptation
    for k, v in method.state_dict().items():
        if k.endswith(("running_mean", "running_var")) and name != "memo":
            assert torch.equal(v, source[k]), k
    method.reset()
    after = method.state_dict()
    assert after.keys() == source.keys()
    for k, v in after.items():
        assert torch.equal(v, source[k]), f"{name}: reset did not restore {k}"
    if opt0 is not None:
        assert method.opt.state_dict() == opt0  # fresh optimizer: no momentum / moments
    # after reset the method behaves exactly as a fresh one (weights, optimizer, generators)
    assert torch.equal(method.forward_and_adapt(xs[0]), first)
    assert method.predict(xs[1]).shape == (8, 10)


@pytest.mark.parametrize("name", TTA)
def test_methods_needing_batchnorm_name_the_cause(name: str) -> None:
    lenet = create_backbone("lenet", in_chans=1, num_classes=10, image_size=SIZE)
    assert not batchnorm_layers(lenet)
    if name in ("source", "shot"):  # shot adapts the whole feature extractor: BatchNorm is optional
        m = create_method(name, backbone=lenet, num_classes=10)
        assert m.forward_and_adapt(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 10)
        return
    with pytest.raises(RecipeError, match=r"BatchNorm.*LeNet5|LeNet5.*BatchNorm"):
        create_method(name, backbone=lenet, num_classes=10, hparams=FAST.get(name, {}))


def test_memo_rejects_a_zero_bn_prior_at_construction() -> None:
    with pytest.raises(RecipeError, match="bn_prior must be > 0"):
        create_method("memo", backbone=small_bn_cnn(), num_classes=10, hparams={"bn_prior": 0.0})


def test_memo_without_bn_prior_runs_on_a_backbone_without_batchnorm() -> None:
    lenet = create_backbone("lenet", in_chans=1, num_classes=10, image_size=SIZE)
    m = create_method("memo", backbone=lenet, num_classes=10,
                      hparams={"bn_prior": None, "n_augmentations": 4, "hflip": False})
    assert m.forward_and_adapt(torch.rand(3, 1, SIZE, SIZE)).shape == (3, 10)


def test_unknown_or_mistyped_hparams_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match="no hyper-parameter"):
        create_method("tent", backbone=small_bn_cnn(), num_classes=10, hparams={"step": 2})
    with pytest.raises(RecipeError, match="steps must be >= 1"):
        create_method("tent", backbone=small_bn_cnn(), num_classes=10, hparams={"steps": 0})


def test_two_methods_cannot_share_one_backbone() -> None:
    net = small_bn_cnn()
    create_method("tent", backbone=net, num_classes=10)
    with pytest.raises(RecipeError, match="already adapted"):
        create_method("norm", backbone=net, num_classes=10)


def test_norm_at_batch_size_one_without_prior_is_a_clear_error() -> None:
    m = create_method("norm", backbone=small_bn_cnn(), num_classes=10)
    with pytest.raises(RecipeError, match="more than one value per channel"):
        m.forward_and_adapt(torch.rand(1, 1, SIZE, SIZE))
    m16 = create_method("norm", backbone=small_bn_cnn(), num_classes=10, hparams={"prior_strength": 16})
    assert m16.forward_and_adapt(torch.rand(1, 1, SIZE, SIZE)).shape == (1, 10)
