"""Test-time methods lower the error of a trained BatchNorm CNN on strongly corrupted real digits.

Source model: see conftest.py (``dann_cnn`` + BatchNorm on the embedded digits, 16x16,
about 97% clean test accuracy). Shift: ``contrast`` at severity 5 on the 450 test digits
(seeded). Measured (online, batch 64, 2-core CPU shared with other jobs): source 30.9%,
norm 96.7%, tent 96.7%, eata 96.7%, sar 96.7%, cotta 89.8%, shot 96.0%.

MEMO (single point, B = 16, first 240 test digits): with the paper's BatchNorm prior N = 16 its
gain on this tiny model depends on the source model's seed (measured over seeds 0-2: +3.8,
+1.2, -1.3 points), and CI's CPU trains a slightly different source model than this machine,
so the test uses the weak prior N = 0.5 (the regime where MEMO wins on digits, see
``memo_n1`` in README). Measured over source-model seeds 0-9 at N = 0.5: the smallest gain
is +11.6 points (seed 1: 29.2% -> 40.8%); seed 0: 30.4% -> 70.4%.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from shiftlab.backbones.base import Backbone
from shiftlab.data.tensors import TensorData
from shiftlab.errors import RecipeError
from shiftlab.methods import create_method
from shiftlab.methods.tta import StreamSegment, corruption_stream, run_protocol
from shiftlab.methods.tta.common import bn_affine_parameters
from shiftlab.optim import OptimizerFactory

ADAM = OptimizerFactory(name="adam", lr=1e-3)


@pytest.fixture(scope="module")
def contrast5(digits_test: TensorData) -> list[StreamSegment]:
    return corruption_stream(digits_test, ["contrast"], [5], torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def source_acc(source_model: Callable[[], Backbone], contrast5: list[StreamSegment],
               digits_test: TensorData) -> float:
    m = create_method("source", backbone=source_model(), num_classes=10)
    clean = run_protocol(m, [StreamSegment("clean", digits_test.float_x(), digits_test.y)], "online", 64)
    assert clean.accuracy > 0.9  # a real source model
    return run_protocol(m, contrast5, "online", 64).accuracy


@pytest.mark.parametrize(
    ("name", "hparams", "optimizer", "margin"),
    [
        ("norm", {}, None, 0.5),
        ("tent", {}, None, 0.5),
        ("eata", {}, ADAM, 0.5),
        ("sar", {}, ADAM, 0.5),
        ("cotta", {"hflip": False}, None, 0.4),
        ("shot", {}, ADAM, 0.5),
    ],
)
def test_online_adaptation_beats_source_on_contrast5(
    name: str, hparams: dict, optimizer: OptimizerFactory | None, margin: float,
    source_model: Callable[[], Backbone], contrast5: list[StreamSegment], source_acc: float,
) -> None:
    assert source_acc < 0.45  # the shift is strong
    method = create_method(name, backbone=source_model(), num_classes=10, hparams=hparams, optimizer=optimizer)
    acc = run_protocol(method, contrast5, "online", 64).accuracy
    assert acc >= source_acc + margin, f"{name}: {acc:.3f} vs source {source_acc:.3f}"


def test_memo_single_sample_beats_source(source_model: Callable[[], Backbone],
                                         contrast5: list[StreamSegment]) -> None:
    seg = contrast5[0]
    few = [StreamSegment(seg.name, seg.x[:240], seg.y[:240])]
    src = run_protocol(create_method("source", backbone=source_model(), num_classes=10), few, "single")
    memo = create_method("memo", backbone=source_model(), num_classes=10,
                         hparams={"n_augmentations": 16, "hflip": False, "crop_padding": 2, "bn_prior": 0.5})
    res = run_protocol(memo, few, "single")
    assert res.batch_size == 1 and res.n == 240
    assert res.accuracy >= src.accuracy + 0.05, f"memo {res.accuracy:.3f} vs source {src.accuracy:.3f}"


def test_tent_updates_only_batchnorm_affine_parameters(source_model: Callable[[], Backbone],
                                                       contrast5: list[StreamSegment]) -> None:
    tent = create_method("tent", backbone=source_model(), num_classes=10)
    before = {k: v.clone() for k, v in tent.backbone.state_dict().items()}
    affine = {id(p) for p in bn_affine_parameters(tent.backbone)}
    affine_names = {n for n, p in tent.backbone.named_parameters() if id(p) in affine}
    for i in range(0, 128, 64):
        tent.forward_and_adapt(contrast5[0].x[i : i + 64])
    after = tent.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= affine_names, changed - affine_names
    assert {n for n, p in tent.backbone.named_parameters() if p.requires_grad} == affine_names


def test_shot_updates_everything_but_the_head(source_model: Callable[[], Backbone],
                                              contrast5: list[StreamSegment]) -> None:
    shot = create_method("shot", backbone=source_model(), num_classes=10, optimizer=ADAM)
    before = {k: v.clone() for k, v in shot.backbone.named_parameters()}
    for i in range(0, 128, 64):
        shot.forward_and_adapt(contrast5[0].x[i : i + 64])
    after = dict(shot.backbone.named_parameters())
    head = {n for n in after if n.startswith("head.")}
    assert head, "the backbone names its classifier 'head'"
    for n, p in after.items():
        assert torch.equal(p, before[n]) == (n in head), n  # the head frozen, every other weight moved
    with pytest.raises(RecipeError, match="at least 2"):
        shot.forward_and_adapt(contrast5[0].x[:1])


@pytest.mark.parametrize("name", ["tent", "memo", "cotta"])
def test_episodic_predictions_do_not_depend_on_batch_order(
    name: str, source_model: Callable[[], Backbone], contrast5: list[StreamSegment],
) -> None:
    hp = {"memo": {"n_augmentations": 4, "hflip": False}, "cotta": {"n_augmentations": 2, "hflip": False}}
    n, bs = (6, 3) if name == "memo" else (96, 32)
    x, y = contrast5[0].x[:n], contrast5[0].y[:n]
    method = create_method(name, backbone=source_model(), num_classes=10, hparams=hp.get(name, {}))

    def episodic(order: list[int]) -> dict[int, torch.Tensor]:
        out = {}
        for b in order:
            method.reset()
            out[b] = method.forward_and_adapt(x[b * bs : (b + 1) * bs])
        return out

    forward, backward = episodic(list(range(n // bs))), episodic(list(reversed(range(n // bs))))
    for b in forward:
        assert torch.equal(forward[b], backward[b])
    # and run_protocol's episodic accuracy is the same whichever way the stream is cut
    seg = StreamSegment("s", x, y)
    rev = StreamSegment("s", x.flip(0), y.flip(0))
    if name == "tent":
        a = run_protocol(method, [seg], "episodic", bs).accuracy
        assert a == pytest.approx(run_protocol(method, [rev], "episodic", bs).accuracy, abs=1.5 / n)
