"""Episode, pair and triplet samplers and class splits: shapes, seeding, and no leaks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.data.episodes import (
    CIFAR100_SUPERCLASSES,
    ClassIndex,
    EpisodeSampler,
    PairSampler,
    TripletSampler,
    alphabet_split,
    cifar_fs,
    class_ratio_split,
    csv_classes,
    fc100,
    held_out_alphabets,
    load_csv_split,
    merge_omniglot,
    parse_ratio,
    random_affine,
    select_classes,
    with_rotated_classes,
)
from shiftlab.data.sources import load_dataset
from shiftlab.data.tensors import TensorData
from shiftlab.errors import DataError, RecipeError


def _data(counts: list[int], side: int = 4) -> TensorData:
    """Images whose every pixel holds its own row index (so rows can be recovered from pixels)."""
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    rows = torch.arange(len(y), dtype=torch.float32)
    x = rows[:, None, None, None].expand(-1, 1, side, side).clone()
    return TensorData(x, y, "synthetic", "train", tuple(f"c{c}" for c in range(len(counts))))


def _rows(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].round().long().tolist()


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 9), min_size=2, max_size=14),
    way=st.integers(2, 6),
    shot=st.integers(1, 4),
    query=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_episode_never_leaks_between_support_and_query(counts: list[int], way: int, shot: int, query: int, seed: int) -> None:
    data = _data(counts)
    usable = [c for c, n in enumerate(counts) if n >= shot + query]
    if len(usable) < way:
        with pytest.raises(RecipeError):
            EpisodeSampler(data, way, shot, query)
        return
    ep = EpisodeSampler(data, way, shot, query).sample(torch.Generator().manual_seed(seed))
    s_rows, q_rows = _rows(ep.support_x), _rows(ep.query_x)
    assert len(set(s_rows)) == len(s_rows) == way * shot
    assert len(set(q_rows)) == len(q_rows) == way * query
    assert not set(s_rows) & set(q_rows), "an image is in both support and query"
    assert ep.support_y.tolist() == [c for c in range(way) for _ in range(shot)]
    assert ep.query_y.tolist() == [c for c in range(way) for _ in range(query)]
    # every episode label maps to exactly one dataset class, and distinct labels to distinct classes
    label_to_class: dict[int, int] = {}
    for rows, labels in ((s_rows, ep.support_y), (q_rows, ep.query_y)):
        for r, lab in zip(rows, labels.tolist(), strict=True):
            assert label_to_class.setdefault(lab, int(data.y[r])) == int(data.y[r])
    assert len(set(label_to_class.values())) == way
    assert set(label_to_class.values()) <= set(usable)


@settings(max_examples=40, deadline=None)
@given(n_classes=st.integers(2, 60), ratio=st.sampled_from(["90-10", "80-20", "50-50", "70-30"]),
       seed=st.integers(0, 1000))
def test_class_ratio_split_is_a_partition(n_classes: int, ratio: str, seed: int) -> None:
    tr, te = class_ratio_split(n_classes, ratio, seed)
    assert not set(tr.tolist()) & set(te.tolist())
    assert sorted(tr.tolist() + te.tolist()) == list(range(n_classes))
    assert len(tr) >= 1 and len(te) >= 1
    if n_classes >= 10:
        assert abs(len(tr) - n_classes * parse_ratio(ratio)[0] / 100) <= 1


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(2, 8), min_size=4, max_size=12), seed=st.integers(0, 1000))
def test_train_and_test_splits_share_no_class_and_no_image(counts: list[int], seed: int) -> None:
    data = _data(counts)
    tr, te = class_ratio_split(len(counts), "50-50", seed)
    train, test = select_classes(data, tr), select_classes(data, te)
    assert not set(_rows(train.x)) & set(_rows(test.x))
    assert not set(train.info["source_classes"]) & set(test.info["source_classes"])
    assert set(train.info["source_rows"]) == set(_rows(train.x))
    # episodes from each side only ever contain that side's images
    for part, other in ((train, test), (test, train)):
        if part.num_classes >= 2:
            ep = EpisodeSampler(part, 2, 1, 1).sample(torch.Generator().manual_seed(seed))
            assert not set(_rows(torch.cat([ep.support_x, ep.query_x]))) & set(_rows(other.x))


def test_episodes_are_seeded_and_within_group() -> None:
    data = _data([5] * 12)
    s = EpisodeSampler(data, 3, 1, 2)
    a = [_rows(e.support_x) for e in s.episodes(5, seed=3)]
    b = [_rows(e.support_x) for e in s.episodes(5, seed=3)]
    c = [_rows(e.support_x) for e in s.episodes(5, seed=4)]
    assert a == b and a != c
    groups = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    g = EpisodeSampler(data, 4, 1, 1, class_groups=groups, within_group=True)
    for ep in g.episodes(20, seed=0):
        cls = {int(data.y[r]) for r in _rows(ep.support_x)}
        assert len({int(groups[c]) for c in cls}) == 1
    with pytest.raises(RecipeError):
        EpisodeSampler(data, 5, 1, 1, class_groups=groups, within_group=True)


def test_class_index_pads_and_draws_distinct_rows() -> None:
    y = torch.tensor([2, 0, 2, 1, 2, 0])
    idx = ClassIndex.build(y)
    assert idx.classes.tolist() == [0, 1, 2] and idx.counts.tolist() == [2, 1, 3]
    assert sorted(idx.table[2].tolist()) == [0, 2, 4] and idx.table[1].tolist()[1:] == [-1, -1]
    rows = idx.draw(torch.tensor([2, 2]), 3, torch.Generator().manual_seed(0))
    assert all(sorted(r) == [0, 2, 4] for r in rows.tolist())


def test_pairs_are_balanced_and_labelled_correctly() -> None:
    data = _data([4] * 10)
    ps = PairSampler(data)
    a, b, same = ps.sample_rows(200, torch.Generator().manual_seed(0))
    assert int(same.sum()) == 100
    for i, j, s in zip(a.tolist(), b.tolist(), same.tolist(), strict=True):
        assert i != j
        assert (data.y[i] == data.y[j]).item() == bool(s)
    p = ps.sample(8, torch.Generator().manual_seed(1))
    assert p.x1.shape == (8, 1, 4, 4) and p.same.dtype == torch.float32


def test_triplets_have_matching_positive_and_other_negative() -> None:
    data = _data([3] * 20)
    ts = TripletSampler(data, classes_per_batch=5)
    a, p, n, ay, ny = ts.sample_rows(100, torch.Generator().manual_seed(0))
    assert (data.y[a] == data.y[p]).all() and (a != p).all() and (data.y[a] != data.y[n]).all()
    assert (ay != ny).all() and len(set(data.y[a].tolist()) | set(data.y[n].tolist())) <= 5
    t = ts.sample(4, torch.Generator().manual_seed(0))
    assert t.anchor.shape == t.negative.shape == (4, 1, 4, 4)


def test_rotated_classes_are_new_classes() -> None:
    x = torch.arange(2 * 9, dtype=torch.uint8).view(2, 1, 3, 3)
    data = TensorData(x, torch.tensor([0, 1]), "t", "train", ("a", "b"), {"alphabet": ["A", "B"]})
    r = with_rotated_classes(data)
    assert len(r) == 8 and r.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert r.classes[2] == "a@rot90" and r.info["alphabet"] == ["A", "B"] * 4
    assert torch.equal(torch.rot90(r.x[2], k=-1, dims=(-2, -1)), x[0])
    with pytest.raises(RecipeError):
        with_rotated_classes(data, (0, 45))


def test_random_affine_is_seeded_and_keeps_shape() -> None:
    x = torch.rand(6, 1, 28, 28)
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_minimal_omniglot_sets_overlap_and_held_out_alphabets_remove_it(shared_data: Path) -> None:
    s1 = load_dataset("omniglot", "background_small1", data_dir=shared_data)
    s2 = load_dataset("omniglot", "background_small2", data_dir=shared_data)
    assert {"Greek", "Latin"} <= set(s1.info["alphabet"]) & set(s2.info["alphabet"])
    merged = merge_omniglot([s1, s2])
    assert merged.num_classes == 242 and len(merged) == 242 * 20  # 136 + 156 - 24 (Greek) - 26 (Latin)
    assert len(set(merged.classes)) == 242
    held = held_out_alphabets(s1, s2)
    assert set(held.info["alphabet"]) == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    assert held.info["dropped_alphabets"] == ["Greek", "Latin"]
    assert not set(held.classes) & set(s1.classes)
    back = held_out_alphabets(s2, s1)
    assert set(back.info["alphabet"]) == {"Balinese", "Early_Aramaic", "Korean"}
    tr, te = alphabet_split(s1, ["Korean"])
    assert len(te) == 40 and len(tr) == 96
    with pytest.raises(DataError):
        alphabet_split(s1, ["Klingon"])


def _write_cifar100_fixture(root: Path, per_class: int = 2) -> None:
    names = [n for fine in CIFAR100_SUPERCLASSES.values() for n in fine]
    names_sorted = sorted(names)  # CIFAR-100's fine_label_names are alphabetical
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = [c for c in range(100) for _ in range(per_class)]
    for split in ("train", "test"):
        blob = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), "fine_labels": labels}
        (folder / split).write_bytes(pickle.dumps(blob))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names_sorted}))


def test_cifar_fs_and_fc100_splits_on_a_fixture(tmp_path: Path) -> None:
    _write_cifar100_fixture(tmp_path)
    data = load_dataset("cifar100", "train", data_dir=tmp_path)
    fs = {s: cifar_fs(data, s) for s in ("train", "val", "test")}
    assert [fs[s].num_classes for s in ("train", "val", "test")] == [64, 16, 20]
    assert not set(fs["train"].classes) & set(fs["test"].classes)
    assert not set(fs["val"].classes) & (set(fs["train"].classes) | set(fs["test"].classes))
    assert "whale" in fs["test"].classes and len(fs["test"]) == 40
    fc = {s: fc100(data, s) for s in ("train", "val", "test")}
    assert [fc[s].num_classes for s in ("train", "val", "test")] == [60, 20, 20]
    sup = {n: s for s, fine in CIFAR100_SUPERCLASSES.items() for n in fine}
    supers = {s: {sup[n] for n in fc[s].classes} for s in fc}
    assert len(supers["train"]) == 12 and not supers["train"] & supers["test"] and not supers["val"] & supers["test"]
    with pytest.raises(RecipeError):
        cifar_fs(data, "holdout")


def test_ravi_larochelle_csv_split_on_a_fixture(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    rows = {"train": ["n01", "n02"], "test": ["n03"]}
    for split, wnids in rows.items():
        lines = ["filename,label"]
        for w in wnids:
            for i in range(3):
                name = f"{w}{i:08d}.jpg"
                Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / "images" / name)
                lines.append(f"{name},{w}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    train = load_csv_split(tmp_path, "train", image_size=8)
    assert train.x.shape == (6, 3, 8, 8) and train.classes == ("n01", "n02") and train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert csv_classes(tmp_path / "test.csv") == ["n03"]
    with pytest.raises(DataError, match="val.csv"):
        load_csv_split(tmp_path, "val")
