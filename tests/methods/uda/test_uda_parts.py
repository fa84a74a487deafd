"""The gradient reversal layer, Ganin's schedule and the UDA methods' step contract."""

from __future__ import annotations

import math

import pytest
import torch

from shiftlab.backbones import create_backbone
from shiftlab.batches import DomainPair, Labeled
from shiftlab.errors import RecipeError
from shiftlab.methods import METHODS, create_method
from shiftlab.methods.uda.adamatch import unlabeled_weight
from shiftlab.methods.uda.cdan import multilinear_map
from shiftlab.methods.uda.common import GradientReversal, grad_reverse, grl_coefficient

UDA = [n for n in METHODS.names() if METHODS.entry(n).tags.get("family") == "uda"]


def test_every_uda_method_is_registered() -> None:
    assert {"source_only", "dann", "cdan", "mcc", "mi_align", "adamatch"} <= set(UDA)


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_gradient_is_minus_coeff_times_the_numerical_one(coeff: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64)

    def f(inp: torch.Tensor) -> torch.Tensor:
        return (w * torch.tanh(grad_reverse(inp, coeff))).sum()

    f(x).backward()
    # central differences of the forward map (the layer is the identity forward)
    eps = 1e-6
    num = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.numel()):
            d = torch.zeros_like(x).view(-1)
            d[i] = eps
            d = d.view_as(x)
            num.view(-1)[i] = (f(x + d) - f(x - d)) / (2 * eps)
    assert torch.allclose(x.grad, -coeff * num, atol=1e-8)
    assert torch.equal(GradientReversal(coeff)(x), x)


def test_ganin_schedule() -> None:
    assert grl_coefficient(0.0, "ganin") == 0.0
    assert grl_coefficient(0.5, "ganin") == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_coefficient(1.0, "ganin") == pytest.approx(0.99991, abs=1e-5)
    assert grl_coefficient(0.2, "constant", max_value=0.3) == 0.3
    with pytest.raises(ValueError, match="schedule"):
        grl_coefficient(0.1, "linear")


def test_adamatch_warmup_and_cdan_map() -> None:
    assert unlabeled_weight(0.0) == 0.0
    assert unlabeled_weight(0.25) == pytest.approx(0.5)
    assert unlabeled_weight(0.5) == pytest.approx(1.0) and unlabeled_weight(0.9) == pytest.approx(1.0)
    f, g = torch.randn(2, 3), torch.randn(2, 4)
    m = multilinear_map(f, g)
    assert m.shape == (2, 12)
    assert torch.allclose(m[1].view(4, 3), torch.outer(g[1], f[1]))


def _pair(b: int = 8) -> DomainPair:
    g = torch.Generator().manual_seed(0)
    return DomainPair(
        Labeled(torch.rand(b, 3, 28, 28, generator=g), torch.randint(10, (b,), generator=g)),
        torch.rand(b, 3, 28, 28, generator=g),
    )


@pytest.mark.parametrize("name", UDA)
def test_uda_step_changes_weights_and_reports_finite_losses(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_backbone("dann_cnn", in_chans=3, num_classes=10, image_size=28, norm=True)
    method = create_method(name, backbone=backbone, num_classes=10)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    method.set_progress(0.6)  # past mi_align's stage switch, past adamatch's warm-up start
    batch = _pair()
    losses = method.update(batch if method.batch_kind == "domain_pair" else batch.source)
    assert losses and all(math.isfinite(v) for v in losses.values())
    changed = sum(not torch.equal(a, p) for a, p in zip(before, method.backbone.parameters(), strict=True))
    assert changed > 0
    method.eval()
    assert method.predict(batch.target_x).shape == (8, 10)


def test_mi_align_checks_its_stage_lengths_against_the_recipe() -> None:
    backbone = create_backbone("dann_cnn", in_chans=3, num_classes=10, image_size=28)
    method = create_method("mi_align", backbone=backbone, num_classes=10,
                           hparams={"dann_epochs": 2, "mi_epochs": 3})
    method.set_schedule(5, 10)
    with pytest.raises(RecipeError, match="train.epochs=5"):
        method.set_schedule(8, 10)
    # stage 2 freezes the stage-1 model as pseudo-labeller at the switch
    method.set_progress(0.39)
    method.update(_pair())
    assert not bool(method.stage2_started)
    method.set_progress(0.41)
    losses = method.update(_pair())
    assert bool(method.stage2_started) and "mi" in losses and "pseudo_frac" in losses


def test_dann_discriminator_dropout_is_a_hyper_parameter() -> None:
    """``disc_dropout=0`` gives a plain 3-layer MLP (pytorch-adapt's Discriminator shape)."""
    from shiftlab.methods import make_hparams

    backbone = create_backbone("dann_cnn", in_chans=3, num_classes=10, image_size=28)
    hp = make_hparams("dann", {"disc_input": "features", "disc_hidden": 256, "disc_dropout": 0.0})
    method = create_method("dann", backbone=backbone, num_classes=10, hparams=hp)
    drops = [m for m in method.discriminator.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)
    linears = [m for m in method.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 256), (256, 256), (256, 1)]
    method.train()
    x = torch.rand(6, 128)
    assert torch.equal(method.discriminator(x), method.discriminator(x))  # no dropout noise


def test_dann_discriminator_depth_is_a_hyper_parameter() -> None:
    """``disc_layers=1`` is Ganin et al.'s MNIST domain classifier: trunk -> 100 -> 1."""
    from shiftlab.methods import make_hparams

    backbone = create_backbone("ganin_cnn", in_chans=3, num_classes=10, image_size=28)
    hp = make_hparams("dann", {"disc_hidden": 100, "disc_layers": 1})
    method = create_method("dann", backbone=backbone, num_classes=10, hparams=hp)
    linears = [m for m in method.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 100), (100, 1)]
    with pytest.raises(RecipeError, match="at least one hidden layer"):
        create_method("dann", backbone=backbone, num_classes=10, hparams=make_hparams("dann", {"disc_layers": 0}))


@pytest.mark.parametrize("name", ["dann", "cdan", "mcc"])
def test_separate_domain_forward_normalises_each_domain_by_its_own_statistics(name: str) -> None:
    """``domain_forward='separate'`` changes nothing without BatchNorm and, with BatchNorm,
    gives each domain's rows the outputs of a pass over that domain alone."""
    from shiftlab.methods import make_hparams

    batch = _pair(b=6)
    batch = DomainPair(batch.source, batch.target_x * 3.0 + 1.0)  # a target with other moments
    for norm in (False, True):
        outs = {}
        for mode in ("joint", "separate"):
            torch.manual_seed(0)
            backbone = create_backbone("ganin_cnn", in_chans=3, num_classes=10, image_size=28, norm=norm)
            method = create_method(name, backbone=backbone, num_classes=10,
                                   hparams=make_hparams(name, {"domain_forward": mode}))
            method.train()
            backbone.fc.apply(lambda m: m.eval() if isinstance(m, torch.nn.Dropout) else None)
            outs[mode] = method.trunk_features_and_logits(batch)[2]
        if norm:
            assert not torch.allclose(outs["joint"], outs["separate"], atol=1e-3)
            torch.manual_seed(0)
            alone = create_backbone("ganin_cnn", in_chans=3, num_classes=10, image_size=28, norm=True).train()
            assert torch.allclose(outs["separate"][6:], alone(batch.target_x), atol=1e-5)
        else:
            assert torch.allclose(outs["joint"], outs["separate"], atol=1e-5)
    with pytest.raises(RecipeError, match="domain_forward"):
        create_method(name, backbone=create_backbone("ganin_cnn", in_chans=3, num_classes=10, image_size=28),
                      num_classes=10, hparams=make_hparams(name, {"domain_forward": "both"}))
