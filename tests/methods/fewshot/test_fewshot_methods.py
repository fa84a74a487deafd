"""Few-shot methods: the contract, exactness of the fast paths, and learning on tiny Omniglot tasks."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from shiftlab.backbones import create_backbone
from shiftlab.batches import Episode, Labeled
from shiftlab.data.episodes import (
    EpisodeSampler,
    PairSampler,
    TripletSampler,
    class_ratio_split,
    select_classes,
)
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData
from shiftlab.data.transforms import fit_images
from shiftlab.experiment.fewshot_run import evaluate_episodes
from shiftlab.losses.metric import batch_hard_triplet_loss, semihard_triplet_loss, triplet_loss
from shiftlab.methods import METHODS, create_method
from shiftlab.methods.fewshot.common import FewShotMethod
from shiftlab.optim import OptimizerFactory

FEWSHOT = [n for n in METHODS.names() if METHODS.entry(n).tags.get("family") == "fewshot"]


def test_at_least_seven_fewshot_methods_are_registered() -> None:
    assert {"protonet", "siamese", "triplet", "reptile", "maml", "baseline_pp", "matching"} <= set(FEWSHOT)


def _method(
    name: str, hparams: dict | None = None, num_classes: int = 10, lr: float = 1e-3, hidden: int = 16
) -> FewShotMethod:
    torch.manual_seed(0)
    bb = create_backbone("conv4", in_chans=1, num_classes=0, image_size=28, hidden=hidden)
    m = create_method(name, backbone=bb, num_classes=num_classes, hparams=hparams, optimizer=OptimizerFactory(lr=lr))
    assert isinstance(m, FewShotMethod)
    return m


@pytest.mark.parametrize("name", FEWSHOT)
def test_contract_any_way_and_frozen_hparams(name: str) -> None:
    entry = METHODS.entry(name)
    cls = entry.obj
    assert entry.paper and entry.summary and cls.__doc__
    assert dataclasses.is_dataclass(cls.Hparams) and cls.Hparams.__dataclass_params__.frozen
    assert cls.family == "fewshot" and cls.batch_kind in ("episode", "pairs", "triplets", "labeled")
    quick = {"maml": {"eval_inner_steps": 2}, "reptile": {"eval_inner_steps": 2}, "baseline_pp": {"finetune_epochs": 3}}
    m = _method(name, quick.get(name))
    for way, shot in ((3, 1), (7, 2)):  # test ways differ from any training way
        sx, sy = torch.rand(way * shot, 1, 28, 28), torch.arange(way).repeat_interleave(shot)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        m.fit_support(sx, sy)
        logits = m.predict(torch.rand(4, 1, 28, 28))
        assert logits.shape == (4, way) and torch.isfinite(logits).all()
        after = m.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{name}: evaluation changed the model"
    sims = m.similarity(torch.rand(5, 1, 28, 28), torch.rand(5, 1, 28, 28))
    assert sims.shape == (5,)


@pytest.mark.parametrize("name", [n for n in FEWSHOT if METHODS.get(n).embeds_independently])
def test_cached_embedding_evaluation_equals_fit_support_predict(name: str) -> None:
    m = _method(name, {"finetune_epochs": 3} if name == "baseline_pp" else None)
    g = torch.Generator().manual_seed(0)
    data = TensorData((torch.rand(60, 1, 28, 28, generator=g) * 255).to(torch.uint8), torch.arange(12).repeat(5))
    fast = evaluate_episodes(m, data, 4, 2, 3, 5, seed=7, use_cache=True)
    slow = evaluate_episodes(m, data, 4, 2, 3, 5, seed=7, use_cache=False)
    assert fast == pytest.approx(slow)


def test_maml_second_order_differs_from_first_order() -> None:
    ep = Episode(torch.rand(5, 1, 28, 28), torch.arange(5), torch.rand(10, 1, 28, 28), torch.arange(5).repeat(2))
    grads = {}
    for fo in (False, True):
        m = _method("maml", {"first_order": fo, "meta_batch": 1})
        m.opt.step = lambda: None  # keep the weights, inspect the gradient
        m.update(ep)
        grads[fo] = torch.cat([p.grad.flatten() for p in m.backbone.parameters() if p.grad is not None])
    assert grads[False].shape == grads[True].shape
    assert not torch.allclose(grads[False], grads[True])


def test_triplet_losses_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(12, 3, generator=g), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    d = torch.cdist(emb, emb).pow(2)
    hard, semi = [], []
    for a in range(12):
        pos = [p for p in range(12) if labels[p] == labels[a] and p != a]
        neg = [n for n in range(12) if labels[n] != labels[a]]
        hard.append(max(0.0, max(d[a, p] for p in pos) - min(d[a, n] for n in neg) + 0.5))
        for p in pos:
            farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
            dn = min(farther) if farther else max(d[a, n] for n in neg)
            semi.append(max(0.0, d[a, p] - dn + 0.5))
    assert batch_hard_triplet_loss(emb, labels, 0.5).item() == pytest.approx(float(sum(hard) / len(hard)), rel=1e-4)
    assert semihard_triplet_loss(emb, labels, 0.5).item() == pytest.approx(float(sum(semi) / len(semi)), rel=1e-4)
    a, p, n = emb[:4], emb[4:8], emb[8:]
    manual = torch.relu((a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + 0.2).mean()
    assert triplet_loss(a, p, n, 0.2).item() == pytest.approx(manual.item())


# ----------------------------------------------------------------------------- learning on Omniglot


@pytest.fixture(scope="module")
def omniglot_tiny(shared_data: Path) -> tuple[TensorData, TensorData]:
    """``images_background_small1`` at 28x28, classes split 80-20 (109 meta-train / 27 test classes)."""
    data = load_dataset("omniglot", "background_small1", data_dir=shared_data)
    data = data.with_x(fit_images(data.x, 28, "resize"))
    tr, te = class_ratio_split(data.num_classes, "80-20", seed=0)
    return select_classes(data, tr), select_classes(data, te)


# (method, hparams, iterations, test episodes, required 5-way 1-shot accuracy on held-out
# classes = chance 0.20 + the stated margin). Conv-4 with 32 channels, lr 1e-3.
LEARNING = [
    ("protonet", {}, 30, 40, 0.20 + 0.30),
    ("protonet", {"distance": "l2"}, 30, 40, 0.20 + 0.30),
    ("protonet", {"distance": "cosine"}, 30, 40, 0.20 + 0.30),
    ("protonet", {"distance": "parametric"}, 60, 40, 0.20 + 0.15),
    ("matching", {}, 30, 40, 0.20 + 0.30),
    ("siamese", {}, 80, 40, 0.20 + 0.15),
    ("triplet", {}, 30, 40, 0.20 + 0.30),
    ("maml", {"meta_batch": 2, "eval_inner_steps": 3}, 20, 20, 0.20 + 0.10),
    ("maml", {"meta_batch": 2, "first_order": True, "eval_inner_steps": 3}, 20, 20, 0.20 + 0.10),
    ("reptile", {"meta_batch": 2, "eval_inner_steps": 10}, 15, 20, 0.20 + 0.25),
    ("baseline_pp", {"scale": 10.0, "finetune_epochs": 20}, 60, 40, 0.20 + 0.30),
]


@pytest.mark.parametrize(("name", "hparams", "iterations", "episodes", "required"), LEARNING,
                         ids=[f"{n}-{'-'.join(map(str, h.values())) or 'default'}" for n, h, *_ in LEARNING])
def test_method_beats_chance_on_held_out_omniglot_classes(
    omniglot_tiny: tuple[TensorData, TensorData], name: str, hparams: dict, iterations: int, episodes: int,
    required: float,
) -> None:
    """Meta-train for a few CPU-seconds (budget: 60 CPU-s), test 5-way 1-shot on unseen classes."""
    train, test = omniglot_tiny
    m = _method(name, hparams, num_classes=train.num_classes, hidden=32)
    m.use_channels_last()
    gen = torch.Generator().manual_seed(0)
    es, ps, ts = EpisodeSampler(train, 5, 1, 5), PairSampler(train), TripletSampler(train)
    t0 = time.process_time()
    for i in range(iterations):
        m.set_progress(i / iterations)
        if m.batch_kind == "episode":
            eps = [es.sample(gen) for _ in range(m.episodes_per_update)]
            batch = eps[0] if len(eps) == 1 else eps
        elif m.batch_kind == "pairs":
            batch = ps.sample(32, gen)
        elif m.batch_kind == "triplets":
            batch = ts.sample(32, gen)
        else:
            idx = torch.randint(len(train), (64,), generator=gen)
            batch = Labeled(train.float_x(idx), train.y[idx])
        losses = m.update(batch)
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    accs = evaluate_episodes(m, test, 5, 1, 5, episodes, seed=1)
    acc = sum(accs) / len(accs)
    cpu = time.process_time() - t0
    assert acc >= required, f"{name} {hparams}: 5-way 1-shot accuracy {acc:.3f} < {required:.2f} after {iterations} updates"
    assert cpu < 60, f"{name}: {cpu:.1f} CPU-seconds, over the test budget"


def test_l2_distance_logits_are_minus_the_plain_euclidean_distance() -> None:
    """A hand-computed case: query (3, 4) against prototypes (0, 0) and (3, 0): distances 5
    and 4, so logits (-5, -4); the squared ones would be (-25, -16)."""
    from shiftlab.methods.fewshot.common import euclidean_logits, sq_euclidean_logits

    q, protos = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(euclidean_logits(q, protos), torch.tensor([[-5.0, -4.0]]))
    torch.testing.assert_close(sq_euclidean_logits(q, protos), torch.tensor([[-25.0, -16.0]]))


def test_shift_views_and_test_time_shift_average_the_shifted_embeddings() -> None:
    from shiftlab.methods.fewshot.common import shift_views

    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 1.0
    views = shift_views(x, 1)
    assert len(views) == 5 and shift_views(x, 0) == [x]
    hot = sorted(tuple(int(i) for i in (v[0, 0] == 1).nonzero()[0]) for v in views)
    assert hot == [(1, 3), (2, 2), (2, 3), (2, 4), (3, 3)]  # the pixel itself and one step each way

    m = _method("protonet")
    xs = torch.rand(4, 1, 28, 28)
    plain = m.embed_eval(xs)
    with m.test_time_shift(2):
        tta = m.embed_eval(xs)
    want = torch.stack([m.embed_eval(v) for v in shift_views(xs, 2)]).mean(0)
    assert torch.allclose(tta, want) and not torch.allclose(tta, plain)
    assert torch.equal(m.embed_eval(xs), plain)  # leaving the block restores plain embeddings
    with pytest.raises(ValueError, match="adapts"):
        with _method("maml").test_time_shift(1):
            pass


def test_ensemble_is_the_mean_log_probability_and_works_with_the_cache_and_shifts() -> None:
    from shiftlab.methods.fewshot.ensemble import FewShotEnsemble

    a, b = _method("protonet", {"distance": "l2"}), _method("matching", hidden=8)
    ens = FewShotEnsemble([a, b])
    g = torch.Generator().manual_seed(1)
    sx, sy, qx = torch.rand(6, 1, 28, 28, generator=g), torch.arange(3).repeat(2), torch.rand(5, 1, 28, 28, generator=g)
    ens.fit_support(sx, sy)
    got = ens.predict(qx)
    want = []
    for m in (a, b):
        m.fit_support(sx, sy)
        want.append(m.predict(qx).log_softmax(1))
    assert torch.allclose(got, torch.stack(want).mean(0), atol=1e-6)
    assert ens.embed_eval(qx).shape == (5, a.embed_eval(qx[:1]).shape[1] + b.embed_eval(qx[:1]).shape[1])
    data = TensorData((torch.rand(60, 1, 28, 28, generator=g) * 255).to(torch.uint8), torch.arange(12).repeat(5))
    fast = evaluate_episodes(ens, data, 4, 2, 3, 5, seed=3, use_cache=True)  # type: ignore[arg-type]
    assert fast == pytest.approx(evaluate_episodes(ens, data, 4, 2, 3, 5, seed=3, use_cache=False))  # type: ignore[arg-type]
    with ens.test_time_shift(1):
        assert a.eval_shift == 1 and b.eval_shift == 1
    assert a.eval_shift == 0 and b.eval_shift == 0
    with pytest.raises(ValueError, match="metric methods"):
        FewShotEnsemble([a, _method("maml")])
