"""Contract tests over every data-selection strategy, and crafted cases for each score."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.data.tensors import TensorData
from shiftlab.errors import RecipeError
from shiftlab.methods.transfer.selection import (
    SELECTIONS,
    SelectionContext,
    create_selection,
    rank_top,
)


class Logits(Backbone):
    """Features = the input flattened; the head is ``scale * features + bias`` (so a crafted
    pool's images *are* its logits)."""

    def __init__(self, num_classes: int, bias: Tensor | None = None) -> None:
        super().__init__()
        self.num_features = num_classes
        self.in_chans = 1
        self.head = nn.Identity()
        self.register_buffer("bias", torch.zeros(num_classes) if bias is None else bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1) + self.bias


def _pool(logits: Tensor, y: Tensor) -> TensorData:
    return TensorData(logits.view(len(logits), 1, 1, -1).float(), y.long(), name="crafted")


def _ctx(pool: TensorData, model: Backbone | None = None) -> SelectionContext:
    model = model or Logits(pool.x.shape[-1])

    def brief(m: Backbone, idx: Tensor, seed: int) -> Backbone:  # the probe "learns" class 0
        return Logits(pool.x.shape[-1], torch.tensor([3.0] + [0.0] * (pool.x.shape[-1] - 1)))

    return SelectionContext(model=model, pool=pool, brief_finetune=brief, batch_size=7)


def _random_pool(n: int = 60, c: int = 5, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    return _pool(3 * torch.randn(n, c, generator=g), torch.randint(c, (n,), generator=g))


@pytest.mark.parametrize("name", SELECTIONS.names())
@pytest.mark.parametrize("k", [1, 17, 60])
def test_every_strategy_returns_k_distinct_indices_deterministically(name: str, k: int) -> None:
    entry = SELECTIONS.entry(name)
    assert entry.summary and entry.paper and entry.obj.__doc__
    pool = _random_pool()
    strategy = create_selection(name)
    a = strategy.select(_ctx(pool), k, torch.Generator().manual_seed(1))
    b = strategy.select(_ctx(pool), k, torch.Generator().manual_seed(1))
    assert a.dtype == torch.int64 and a.shape == (k,)
    assert torch.unique(a).numel() == k and int(a.min()) >= 0 and int(a.max()) < len(pool)
    assert torch.equal(a, b), "same seed, same pool: same selection"


@pytest.mark.parametrize("name", SELECTIONS.names())
def test_every_strategy_rejects_a_bad_k(name: str) -> None:
    with pytest.raises(ValueError, match="cannot select"):
        create_selection(name).select(_ctx(_random_pool()), 61, torch.Generator().manual_seed(0))


def test_random_differs_between_seeds_and_is_uniform() -> None:
    pool = _random_pool(n=100)
    s = create_selection("random")
    picks = [set(s.select(_ctx(pool), 50, torch.Generator().manual_seed(i)).tolist()) for i in range(200)]
    assert picks[0] != picks[1]
    counts = torch.zeros(100)
    for p in picks:
        counts[list(p)] += 1
    assert counts.min() > 0.3 * 200 and counts.max() < 0.7 * 200  # each image about half the time


def test_entropy_most_and_least_pick_the_highest_and_lowest_entropy() -> None:
    # row i has logits (a_i, 0, 0, 0): entropy falls as a_i grows, so the order is known
    a = torch.tensor([0.0, 5.0, 1.0, 8.0, 0.5, 3.0, 12.0, 2.0])
    logits = torch.zeros(8, 4)
    logits[:, 0] = a
    pool = _pool(logits, torch.zeros(8))
    g = torch.Generator().manual_seed(0)
    most = create_selection("entropy_most").select(_ctx(pool), 3, g)
    least = create_selection("entropy_least").select(_ctx(pool), 3, g)
    assert most.tolist() == [0, 4, 2]  # a = 0, 0.5, 1: the most uncertain first
    assert least.tolist() == [6, 3, 1]  # a = 12, 8, 5: the most confident first


def test_error_picks_misclassified_first_then_the_highest_loss() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 6.0], [0.2, 0.0]])
    y = torch.tensor([0, 0, 0, 0, 0])  # rows 1 and 3 are wrong (3 more so), 4 then 2 are the weakest right
    order = create_selection("error").select(_ctx(_pool(logits, y)), 5, torch.Generator().manual_seed(0))
    assert order.tolist() == [3, 1, 4, 2, 0]


def test_margin_picks_the_closest_top_two() -> None:
    logits = torch.tensor([[2.0, 1.9, -5.0], [5.0, 0.0, 0.0], [1.0, 0.0, 0.99], [3.0, 0.0, 1.0]])
    order = create_selection("margin").select(_ctx(_pool(logits, torch.zeros(4))), 2, torch.Generator())
    assert set(order.tolist()) == {0, 2} and order[0].item() == 2


def test_el2n_ranks_by_distance_to_the_one_hot_label() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.5, 0.0]])
    y = torch.tensor([0, 0, 0])
    hard = create_selection("el2n").select(_ctx(_pool(logits, y)), 3, torch.Generator())
    easy = create_selection("el2n", {"keep": "easiest"}).select(_ctx(_pool(logits, y)), 3, torch.Generator())
    assert hard.tolist() == [1, 2, 0] and easy.tolist() == [0, 2, 1]


def test_kcenter_covers_every_cluster_first() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0], [25.0, 100.0]])
    pts = torch.cat([c + 0.5 * torch.randn(20, 2, generator=g) for c in centres])
    order = create_selection("kcenter").select(_ctx(_pool(pts, torch.zeros(100))), 5, torch.Generator().manual_seed(3))
    assert sorted((order // 20).tolist()) == [0, 1, 2, 3, 4]  # one point from each of the 5 clusters


def test_kcenter_with_duplicate_points_still_returns_distinct_indices() -> None:
    pts = torch.zeros(10, 3)
    pts[5:] = 1.0  # two distinct points, five copies each
    order = create_selection("kcenter").select(_ctx(_pool(pts, torch.zeros(10))), 7, torch.Generator().manual_seed(0))
    assert torch.unique(order).numel() == 7


def test_differential_ranks_by_the_loss_drop_after_the_probe() -> None:
    # the probe adds +3 to class 0's logit: samples of class 0 gain, others lose
    logits = torch.zeros(6, 3)
    y = torch.tensor([0, 1, 0, 2, 0, 1])
    pool = _pool(logits, y)
    most = create_selection("differential").select(_ctx(pool), 3, torch.Generator().manual_seed(0))
    least = create_selection("differential", {"direction": "least"}).select(_ctx(pool), 3,
                                                                           torch.Generator().manual_seed(0))
    assert set(most.tolist()) == {0, 2, 4} and set(least.tolist()) == {1, 3, 5}


def test_rank_top_breaks_ties_by_seed_only() -> None:
    s = torch.zeros(10)
    a = rank_top(s, 4, torch.Generator().manual_seed(0))
    b = rank_top(s, 4, torch.Generator().manual_seed(0))
    c = rank_top(s, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_hparams_name_the_key() -> None:
    with pytest.raises(RecipeError, match="probe_fractoin"):
        create_selection("differential", {"probe_fractoin": 0.2})
    with pytest.raises(RecipeError, match="direction"):
        create_selection("differential", {"direction": "up"})


def test_class_balanced_selection_keeps_the_pool_class_ratios() -> None:
    # class 0 has every high-entropy sample; unbalanced entropy_most takes only class 0
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.zeros(30, 3), 10 * torch.eye(3)[torch.randint(3, (60,), generator=g)]])
    y = torch.cat([torch.zeros(30), torch.ones(30), 2 * torch.ones(30)]).long()
    pool = _pool(logits, y)
    plain = create_selection("entropy_most").select(_ctx(pool), 30, torch.Generator().manual_seed(0))
    assert set(y[plain].tolist()) == {0}
    ctx = _ctx(pool)
    ctx.class_balanced = True
    bal = create_selection("entropy_most").select(ctx, 31, torch.Generator().manual_seed(0))
    counts = torch.bincount(y[bal], minlength=3).tolist()
    assert sorted(counts) == [10, 10, 11] and torch.unique(bal).numel() == 31
    assert set(bal[y[bal] == 0].tolist()) <= set(range(30))
