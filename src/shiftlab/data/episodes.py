"""Few-shot data: episode, pair and triplet samplers over in-memory tensors, and class splits.

Everything here slices a :class:`~shiftlab.data.tensors.TensorData` held in memory: the
per-class index lists are computed once (a padded ``[C, max_n]`` table), and a sampler
draws a whole episode with a handful of vectorised tensor ops from an explicit
``torch.Generator`` (never the global RNG), so the same ``(seed, episode)`` always gives
the same episode and no per-item ``DataLoader`` is involved (on 2 CPU cores a
per-item ``Dataset`` + ``DataLoader`` + ``collate`` pipeline is several times slower).

Samplers:

* :class:`EpisodeSampler`: N-way K-shot Q-query :class:`~shiftlab.batches.Episode`
  (Vinyals et al. 2016; Snell et al. 2017), optionally *within one group* (Omniglot
  alphabet), which is how Lake et al.'s 20-way one-shot runs are built.
* :class:`PairSampler`: balanced same/different :class:`Pairs` (Koch et al. 2015).
* :class:`TripletSampler`: (anchor, positive, negative) :class:`Triplets` (Schroff et
  al. 2015), with class labels so that a method can mine harder triplets in the batch.

Class splits (a class never appears on both sides; images are never shared):

* :func:`class_ratio_split`: ``"90-10"``, ``"80-20"``, ``"50-50"`` of the classes, as in
  the one-shot document (seeded permutation of the classes).
* :func:`alphabet_split` / :func:`held_out_alphabets`: Omniglot alphabet-level splits.
  **Note:** the two minimal background sets share two alphabets (Greek and Latin are in
  both ``images_background_small1`` and ``images_background_small2``, the same images),
  so "train on small1, test on small2" must drop them from the test side;
  :func:`held_out_alphabets` does that, and :func:`merge_omniglot` de-duplicates them
  when the two sets are combined.
* :func:`with_rotated_classes`: the usual 90° rotation class augmentation (each
  rotation of a character is a new class; Santoro et al. 2016, Snell et al. 2017).
* :func:`cifar_fs` / :func:`fc100`: CIFAR-FS (Bertinetto et al. 2019; 64/16/20 classes)
  and FC100 (Oreshkin et al. 2018; 12/4/4 super-classes = 60/20/20 classes) from CIFAR-100.
* :func:`read_split_csv` / :func:`load_csv_split`: Ravi & Larochelle's mini-ImageNet split
  CSVs (``filename,label``) for users who have mini-ImageNet as a folder.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from shiftlab.batches import Episode
from shiftlab.data.tensors import TensorData, to_float
from shiftlab.errors import DataError, RecipeError

log = logging.getLogger(__name__)

__all__ = [
    "CIFAR100_SUPERCLASSES",
    "ClassIndex",
    "EpisodeSampler",
    "PairSampler",
    "Pairs",
    "TripletSampler",
    "Triplets",
    "alphabet_split",
    "cifar_fs",
    "class_ratio_split",
    "csv_classes",
    "fc100",
    "held_out_alphabets",
    "load_csv_split",
    "merge_omniglot",
    "parse_ratio",
    "random_affine",
    "read_split_csv",
    "select_classes",
    "with_rotated_classes",
]


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Pairs:
    """A batch of image pairs for verification (same class or not).

    Attributes:
        x1: ``[B, C, H, W]`` float in [0, 1].
        x2: ``[B, C, H, W]`` float in [0, 1].
        same: ``[B]`` float, 1.0 when ``x1[i]`` and ``x2[i]`` share a class, else 0.0.
    """

    x1: Tensor
    x2: Tensor
    same: Tensor

    def to(self, device: torch.device | str) -> Pairs:
        return Pairs(self.x1.to(device), self.x2.to(device), self.same.to(device))


@dataclass(frozen=True)
class Triplets:
    """A batch of (anchor, positive, negative) triplets.

    Attributes:
        anchor: ``[B, C, H, W]`` float in [0, 1].
        positive: ``[B, C, H, W]``, same class as ``anchor`` (another image).
        negative: ``[B, C, H, W]``, another class.
        anchor_y: ``[B]`` int64 class of anchor and positive (batch-local ids, used for mining).
        negative_y: ``[B]`` int64 class of the negative (same id space).
    """

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    anchor_y: Tensor
    negative_y: Tensor

    def to(self, device: torch.device | str) -> Triplets:
        return Triplets(*(t.to(device) for t in (self.anchor, self.positive, self.negative, self.anchor_y,
                                                  self.negative_y)))


# ----------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ClassIndex:
    """Per-class row indices of a dataset, as a padded table.

    Attributes:
        classes: ``[C]`` int64, the dataset labels that have at least ``min_count`` images.
        table: ``[C, max_n]`` int64 row indices, class ``classes[c]`` in row ``c``; padding is -1.
        counts: ``[C]`` int64 number of valid entries per row.
        groups: ``[C]`` int64 group id per class (e.g. the Omniglot alphabet), or ``None``.
    """

    classes: Tensor
    table: Tensor
    counts: Tensor
    groups: Tensor | None = None

    @staticmethod
    def build(
        y: Tensor,
        classes: Sequence[int] | Tensor | None = None,
        min_count: int = 1,
        class_groups: Tensor | None = None,
    ) -> ClassIndex:
        """Index the rows of ``y: [N]`` by class.

        Args:
            y: ``[N]`` int64 labels.
            classes: labels to keep (default: every label present).
            min_count: drop classes with fewer images (logged).
            class_groups: ``[num_labels]`` group id of every label (indexed by label).
        """
        y = y.to(torch.int64)
        wanted = torch.unique(y) if classes is None else torch.as_tensor(classes, dtype=torch.int64).unique()
        order = torch.argsort(y, stable=True)
        ys = y[order]
        starts = torch.searchsorted(ys, wanted)
        ends = torch.searchsorted(ys, wanted, right=True)
        counts = ends - starts
        keep = counts >= min_count
        if (~keep).any():
            log.info("dropping %d classes with fewer than %d images", int((~keep).sum()), min_count)
        wanted, starts, counts = wanted[keep], starts[keep], counts[keep]
        max_n = int(counts.max()) if len(counts) else 0
        ar = torch.arange(max_n)
        pos = starts[:, None] + ar[None, :]
        valid = ar[None, :] < counts[:, None]
        table = torch.where(valid, order[pos.clamp(max=max(len(order) - 1, 0))], torch.full_like(pos, -1))
        groups = None if class_groups is None else torch.as_tensor(class_groups, dtype=torch.int64)[wanted]
        return ClassIndex(wanted, table, counts, groups)

    def __len__(self) -> int:
        return int(self.classes.numel())

    def draw(self, rows: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` distinct images from each class row in ``rows: [M]`` -> row indices ``[M, n]``.

        Vectorised: random keys, padding pushed to the end, argsort, take the first ``n``.
        """
        keys = torch.rand(len(rows), self.table.shape[1], generator=generator)
        keys = keys.masked_fill(self.table[rows] < 0, 2.0)
        pick = keys.argsort(dim=1)[:, :n]
        return self.table[rows].gather(1, pick)


def _float_images(data: TensorData, idx: Tensor) -> Tensor:
    return to_float(data.x[idx.reshape(-1)])


# ----------------------------------------------------------------------------- samplers


class EpisodeSampler:
    """Seeded N-way K-shot Q-query episodes sliced from an in-memory dataset.

    Support and query images of an episode are distinct rows (drawn without replacement
    within each class); labels are re-indexed to ``0..N-1`` in the order the classes were
    drawn. The support is class-major (``support_y = [0]*K + [1]*K + ...``), the query too.

    Args:
        data: the images; ``x: [N, C, H, W]`` uint8 or float.
        way: N, classes per episode.
        shot: K, support images per class.
        query: Q, query images per class.
        classes: dataset labels the episodes may use (default: all); classes with fewer
            than ``shot + query`` images are dropped.
        class_groups: ``[num_labels]`` group id per label (e.g. Omniglot alphabet); with
            ``within_group=True`` all N classes of an episode come from one group (groups
            with fewer than N usable classes are never drawn).
        within_group: draw the N classes from a single group (Lake et al.'s protocol).

    Raises:
        RecipeError: fewer usable classes than ``way`` (or no group with ``way`` classes).

    Example:
        >>> sampler = EpisodeSampler(data, way=5, shot=1, query=15)
        >>> ep = sampler.sample(torch.Generator().manual_seed(0))
        >>> ep.support_x.shape, ep.query_x.shape
        (torch.Size([5, 1, 28, 28]), torch.Size([75, 1, 28, 28]))
    """

    def __init__(
        self,
        data: TensorData,
        way: int,
        shot: int,
        query: int,
        classes: Sequence[int] | Tensor | None = None,
        class_groups: Tensor | Sequence[int] | None = None,
        within_group: bool = False,
    ) -> None:
        if way < 1 or shot < 1 or query < 0:
            raise RecipeError(f"episodes need way >= 1, shot >= 1, query >= 0 (got {way}, {shot}, {query}).")
        self.data = data
        self.way, self.shot, self.query = way, shot, query
        groups = None if class_groups is None else torch.as_tensor(class_groups, dtype=torch.int64)
        if within_group and groups is None:
            raise RecipeError("within_group=True needs class_groups (e.g. the Omniglot alphabet of each class).")
        self.index = ClassIndex.build(data.y, classes, shot + query, groups)
        self.within_group = within_group
        if len(self.index) < way:
            raise RecipeError(
                f"{data.name}/{data.split}: only {len(self.index)} classes have at least {shot + query} images "
                f"(shot {shot} + query {query}); a {way}-way episode needs {way}. Lower way, shot or query."
            )
        if within_group:
            assert self.index.groups is not None
            gids, gcount = torch.unique(self.index.groups, return_counts=True)
            self._groups = gids[gcount >= way]
            if len(self._groups) == 0:
                raise RecipeError(f"no group has {way} classes with {shot + query} images; lower way.")

    def sample_rows(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Row indices of one episode: support ``[N, K]`` and query ``[N, Q]`` (class-major)."""
        if self.within_group:
            assert self.index.groups is not None
            g = self._groups[torch.randint(len(self._groups), (1,), generator=generator)]
            members = torch.nonzero(self.index.groups == g).flatten()
            rows = members[torch.randperm(len(members), generator=generator)[: self.way]]
        else:
            rows = torch.randperm(len(self.index), generator=generator)[: self.way]
        idx = self.index.draw(rows, self.shot + self.query, generator)
        return idx[:, : self.shot], idx[:, self.shot :]

    def sample(self, generator: torch.Generator) -> Episode:
        """One :class:`~shiftlab.batches.Episode`; images float in [0, 1]."""
        s_idx, q_idx = self.sample_rows(generator)
        ar = torch.arange(self.way)
        return Episode(
            _float_images(self.data, s_idx),
            ar.repeat_interleave(self.shot),
            _float_images(self.data, q_idx),
            ar.repeat_interleave(self.query),
        )

    def episodes(self, n: int, seed: int) -> Iterator[Episode]:
        """``n`` episodes from a generator seeded with ``seed`` (the same every call)."""
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            yield self.sample(gen)


class PairSampler:
    """Balanced same/different image pairs (Koch et al. 2015's verification task).

    Half of each batch (rounded down) are pairs of two distinct images of one class, the
    rest pairs of images of two distinct classes; then the batch is shuffled.

    Args:
        data: the images.
        classes: labels to use (default: all with at least two images).
    """

    def __init__(self, data: TensorData, classes: Sequence[int] | Tensor | None = None) -> None:
        self.data = data
        self.index = ClassIndex.build(data.y, classes, 2)
        if len(self.index) < 2:
            raise RecipeError(f"{data.name}: pairs need at least 2 classes with 2 images each.")

    def sample(self, batch_size: int, generator: torch.Generator) -> Pairs:
        """``batch_size`` pairs (images float in [0, 1]), shuffled."""
        a, b, same = self.sample_rows(batch_size, generator)
        return Pairs(_float_images(self.data, a), _float_images(self.data, b), same)

    def sample_rows(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Row indices ``a, b: [B]`` and ``same: [B]`` float of ``batch_size`` shuffled pairs."""
        n_same = batch_size // 2
        n_diff = batch_size - n_same
        n_cls = len(self.index)
        same_rows = self.index.draw(torch.randint(n_cls, (n_same,), generator=generator), 2, generator)
        c1 = torch.randint(n_cls, (n_diff,), generator=generator)
        c2 = (c1 + torch.randint(1, n_cls, (n_diff,), generator=generator)) % n_cls
        a = torch.cat([same_rows[:, 0], self.index.draw(c1, 1, generator)[:, 0]])
        b = torch.cat([same_rows[:, 1], self.index.draw(c2, 1, generator)[:, 0]])
        same = torch.cat([torch.ones(n_same), torch.zeros(n_diff)])
        perm = torch.randperm(batch_size, generator=generator)
        return a[perm], b[perm], same[perm]


class TripletSampler:
    """(anchor, positive, negative) triplets drawn from ``P`` classes per batch.

    A batch draws ``classes_per_batch`` classes; each triplet takes its anchor class and
    its negative class among them (different classes), so a method can also mine harder
    triplets across the batch using ``anchor_y`` / ``negative_y``.

    Args:
        data: the images.
        classes: labels to use (default: all with at least two images).
        classes_per_batch: ``P``, classes drawn per batch (at most the number of classes).
    """

    def __init__(
        self, data: TensorData, classes: Sequence[int] | Tensor | None = None, classes_per_batch: int = 16
    ) -> None:
        self.data = data
        self.index = ClassIndex.build(data.y, classes, 2)
        if len(self.index) < 2:
            raise RecipeError(f"{data.name}: triplets need at least 2 classes with 2 images each.")
        self.classes_per_batch = max(2, min(classes_per_batch, len(self.index)))

    def sample(self, batch_size: int, generator: torch.Generator) -> Triplets:
        """``batch_size`` triplets; labels are batch-local ids ``0..P-1``."""
        a, p, n, ay, ny = self.sample_rows(batch_size, generator)
        return Triplets(
            _float_images(self.data, a), _float_images(self.data, p), _float_images(self.data, n), ay, ny
        )

    def sample_rows(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Row indices ``anchor, positive, negative: [B]`` and labels ``anchor_y, negative_y: [B]``."""
        pcls = torch.randperm(len(self.index), generator=generator)[: self.classes_per_batch]
        P = len(pcls)
        ay = torch.randint(P, (batch_size,), generator=generator)
        ny = (ay + torch.randint(1, P, (batch_size,), generator=generator)) % P
        ap = self.index.draw(pcls[ay], 2, generator)
        neg = self.index.draw(pcls[ny], 1, generator)[:, 0]
        return ap[:, 0], ap[:, 1], neg, ay, ny


# ----------------------------------------------------------------------------- augmentation


def random_affine(
    x: Tensor,
    generator: torch.Generator,
    degrees: float = 10.0,
    shear: float = 0.3,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 2.0 / 28.0,
) -> Tensor:
    """Per-image random affine distortions of a batch ``x: [B, C, H, W]`` float (Koch et al. 2015).

    Rotation in ``[-degrees, degrees]``, shear in ``[-shear, shear]`` on each axis, scale in
    ``scale`` on each axis and translation up to ``translate`` of the image side, each
    applied with probability 0.5 as in Koch et al.; one ``affine_grid`` + ``grid_sample``
    for the whole batch; zero fill outside the image.
    """
    b = x.shape[0]
    if b == 0:
        return x

    def u(lo: float, hi: float, n: int = 1) -> Tensor:
        return lo + (hi - lo) * torch.rand(b, n, generator=generator).squeeze(1)

    def on() -> Tensor:
        return (torch.rand(b, generator=generator) < 0.5).float()

    theta = u(-degrees, degrees) * torch.pi / 180 * on()
    sh = u(-shear, shear, 2) * on()[:, None]
    sc = 1 + (u(scale[0], scale[1], 2) - 1) * on()[:, None]
    tr = u(-translate, translate, 2) * 2 * on()[:, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # [B, 2, 2]
    shm = torch.stack([torch.stack([torch.ones(b), sh[:, 0]], 1), torch.stack([sh[:, 1], torch.ones(b)], 1)], 1)
    a = rot @ shm @ torch.diag_embed(1.0 / sc)
    mat = torch.cat([a, tr[:, :, None]], 2).to(x.dtype)
    grid = torch.nn.functional.affine_grid(mat.to(x.device), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------- splits


def parse_ratio(ratio: str) -> tuple[int, int]:
    """``"90-10"`` -> ``(90, 10)`` (percentages of the classes; they must add to 100)."""
    m = re.fullmatch(r"\s*(\d+)\s*[-/:]\s*(\d+)\s*", ratio)
    if not m or int(m.group(1)) + int(m.group(2)) != 100 or min(int(m.group(1)), int(m.group(2))) < 1:
        raise RecipeError(f"class ratio {ratio!r}: expected TRAIN-TEST percentages adding to 100, e.g. '90-10'.")
    return int(m.group(1)), int(m.group(2))


def class_ratio_split(
    classes: Sequence[int] | Tensor | int, ratio: str, seed: int | None = 0
) -> tuple[Tensor, Tensor]:
    """Split classes ``train:test`` by a ratio such as ``"90-10"``, ``"80-20"`` or ``"50-50"``.

    Args:
        classes: the class labels (or their number ``C``: labels ``0..C-1``).
        ratio: ``"TRAIN-TEST"`` percentages.
        seed: seed of the class permutation; ``None`` keeps the given order (the first
            classes train).

    Returns:
        ``(train_classes, test_classes)``, disjoint int64 tensors, each sorted; the train
        side has ``round(C * TRAIN / 100)`` classes (at least 1 on each side).
    """
    labels = torch.arange(classes) if isinstance(classes, int) else torch.as_tensor(classes, dtype=torch.int64)
    train_pct, _ = parse_ratio(ratio)
    c = len(labels)
    if c < 2:
        raise RecipeError("a class split needs at least 2 classes.")
    n_train = min(max(round(c * train_pct / 100), 1), c - 1)
    perm = labels if seed is None else labels[torch.randperm(c, generator=torch.Generator().manual_seed(seed))]
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def select_classes(data: TensorData, classes: Sequence[int] | Tensor, split: str | None = None) -> TensorData:
    """The rows of ``data`` whose label is in ``classes``, relabelled ``0..len(classes)-1``.

    ``classes`` order defines the new labels. ``info["source_classes"]`` records the
    original label of each new one (so splits can be checked for leaks), and per-class
    Omniglot fields (``alphabet``, ``class_alphabet``) are carried over.
    """
    cls = torch.as_tensor(classes, dtype=torch.int64)
    if len(torch.unique(cls)) != len(cls):
        raise ValueError("select_classes: duplicate classes")
    lut = torch.full((max(int(data.y.max()) + 1, int(cls.max()) + 1 if len(cls) else 0),), -1, dtype=torch.int64)
    lut[cls] = torch.arange(len(cls))
    new_y = lut[data.y]
    keep = torch.nonzero(new_y >= 0).flatten()
    info: dict[str, Any] = dict(data.info)
    src = info.get("source_classes")
    info["source_classes"] = [int(src[c]) if src is not None else int(c) for c in cls.tolist()]
    for key in ("alphabet", "class_alphabet"):
        if isinstance(info.get(key), (list, tuple)) and len(info[key]) == data.num_classes:
            vals = list(info[key])
            info[key] = [vals[c] for c in cls.tolist()]
    if "source_rows" in data.info:
        info["source_rows"] = [data.info["source_rows"][i] for i in keep.tolist()]
    else:
        info["source_rows"] = keep.tolist()
    classes_names = tuple(data.classes[c] for c in cls.tolist()) if data.classes is not None else None
    return replace(
        data, x=data.x[keep], y=new_y[keep], classes=classes_names, info=info, split=split or data.split
    )


def _alphabets(data: TensorData) -> list[str]:
    alpha = data.info.get("alphabet")
    if not isinstance(alpha, (list, tuple)) or len(alpha) != data.num_classes:
        raise DataError(f"{data.name}: no per-class 'alphabet' in info; alphabet splits need Omniglot.")
    return list(alpha)


def alphabet_split(data: TensorData, test_alphabets: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Classes of ``data`` split by alphabet: ``(train_classes, test_classes)``.

    Raises:
        DataError: an alphabet named in ``test_alphabets`` is not in ``data``.
    """
    alpha = _alphabets(data)
    unknown = sorted(set(test_alphabets) - set(alpha))
    if unknown:
        raise DataError(f"{data.name}: unknown alphabet(s) {', '.join(unknown)}; known: {', '.join(sorted(set(alpha)))}.")
    test = torch.tensor([i for i, a in enumerate(alpha) if a in set(test_alphabets)], dtype=torch.int64)
    train = torch.tensor([i for i, a in enumerate(alpha) if a not in set(test_alphabets)], dtype=torch.int64)
    return train, test


def held_out_alphabets(train: TensorData, test: TensorData) -> TensorData:
    """``test`` restricted to alphabets that ``train`` does not contain (a true held-out set).

    The minimal Omniglot sets share Greek and Latin (identical images), so without this
    a "held-out" evaluation would test on characters seen in meta-training.
    """
    seen = set(_alphabets(train))
    alpha = _alphabets(test)
    keep = [i for i, a in enumerate(alpha) if a not in seen]
    if not keep:
        raise DataError(f"{test.name}/{test.split}: every alphabet is also in {train.split}; nothing is held out.")
    dropped = sorted({a for a in alpha if a in seen})
    if dropped:
        log.info("held-out evaluation on %s drops alphabets also in %s: %s", test.split, train.split, dropped)
    out = select_classes(test, keep)
    return replace(out, info={**out.info, "dropped_alphabets": dropped})


def merge_omniglot(parts: Sequence[TensorData]) -> TensorData:
    """Concatenate Omniglot sets, de-duplicating classes with the same ``Alphabet/character`` name.

    Labels are renumbered over the union (sorted class names); per-class ``alphabet``,
    ``alphabets`` and ``class_alphabet`` are rebuilt.
    """
    xs, names = [], []
    seen: set[str] = set()
    for part in parts:
        if part.classes is None:
            raise DataError(f"{part.name}: merging needs class names.")
        keep_cls = [c for c, n in enumerate(part.classes) if n not in seen]
        seen.update(part.classes)
        if not keep_cls:
            continue
        sub = select_classes(part, keep_cls)
        xs.append(sub)
        names += [n for n in sub.classes or ()]
    order = sorted(range(len(names)), key=lambda i: names[i])
    rank = torch.empty(len(names), dtype=torch.int64)
    rank[torch.tensor(order)] = torch.arange(len(names))
    x_all, y_all, offset = [], [], 0
    for sub in xs:
        x_all.append(sub.x)
        y_all.append(rank[sub.y + offset])
        offset += sub.num_classes
    classes = tuple(names[i] for i in order)
    alphabet = [n.split("/", 1)[0] for n in classes]
    alphabets = sorted(set(alphabet))
    info = {
        "merged_from": [p.split for p in parts],
        "alphabet": alphabet,
        "alphabets": alphabets,
        "class_alphabet": [alphabets.index(a) for a in alphabet],
        "files": [f for p in parts for f in p.info.get("files", [])],
    }
    split = "+".join(p.split for p in parts)
    return TensorData(torch.cat(x_all), torch.cat(y_all), parts[0].name, split, classes, info)


def with_rotated_classes(data: TensorData, angles: Sequence[int] = (0, 90, 180, 270)) -> TensorData:
    """Each rotation of each class becomes its own class (Omniglot's class augmentation).

    Args:
        data: square images ``[N, C, H, H]``.
        angles: multiples of 90 degrees; 0 keeps the originals.

    Returns:
        ``[len(angles) * N, C, H, H]`` with label ``y + r * num_classes`` for rotation ``r``
        (so each original class keeps its label for angle 0). Per-class info is repeated.
    """
    if any(a % 90 for a in angles) or len(set(a % 360 for a in angles)) != len(angles):
        raise RecipeError(f"rotation angles must be distinct multiples of 90, got {list(angles)}.")
    c = data.num_classes
    xs = [torch.rot90(data.x, k=(a // 90) % 4, dims=(-2, -1)) for a in angles]
    ys = [data.y + r * c for r in range(len(angles))]
    info: dict[str, Any] = dict(data.info)
    for key in ("alphabet", "class_alphabet", "source_classes"):
        if isinstance(info.get(key), (list, tuple)) and len(info[key]) == c:
            info[key] = list(info[key]) * len(angles)
    info["rotations"] = list(angles)
    classes = None
    if data.classes is not None:
        classes = tuple(f"{n}@rot{a}" if a else n for a in angles for n in data.classes)
    return replace(data, x=torch.cat(xs).contiguous(), y=torch.cat(ys), classes=classes, info=info)


# ----------------------------------------------------------------------------- CIFAR-100 splits

CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
"""CIFAR-100's 20 super-classes and their 5 fine classes each (Krizhevsky 2009)."""

_CIFAR_FS = {
    "val": ("beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea", "camel",
            "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor"),
    "test": ("whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard", "plain",
             "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck", "rocket"),
}
_FC100 = {
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}


def _cifar_classes(split: str, named: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    all_names = tuple(n for fine in CIFAR100_SUPERCLASSES.values() for n in fine)
    if split in named:
        return named[split]
    if split == "train":
        held = {n for v in named.values() for n in v}
        return tuple(n for n in all_names if n not in held)
    raise RecipeError(f"unknown few-shot split {split!r}; use train, val or test.")


def _by_names(data: TensorData, names: Sequence[str], what: str) -> TensorData:
    if data.classes is None:
        raise DataError(f"{what} needs CIFAR-100 class names (the meta file's fine_label_names).")
    pos = {n: i for i, n in enumerate(data.classes)}
    missing = [n for n in names if n not in pos]
    if missing:
        raise DataError(f"{what}: {data.name} lacks the class(es) {', '.join(missing)}; is it CIFAR-100?")
    return select_classes(data, [pos[n] for n in sorted(names, key=lambda n: pos[n])])


def cifar_fs(data: TensorData, split: str) -> TensorData:
    """CIFAR-FS (Bertinetto et al., ICLR 2019): 64 train / 16 val / 20 test classes of CIFAR-100.

    Few-shot splits are over classes, so pass the union of CIFAR-100's train and test
    images (600 per class), or either one. Labels are renumbered ``0..n-1``.
    """
    return replace(_by_names(data, _cifar_classes(split, _CIFAR_FS), "CIFAR-FS"),
                   split=f"cifar_fs-{split}")


def fc100(data: TensorData, split: str) -> TensorData:
    """FC100 (Oreshkin et al., NeurIPS 2018): CIFAR-100 split by super-class, 12 / 4 / 4 (60/20/20 classes)."""
    supers = {k: tuple(n for s in v for n in CIFAR100_SUPERCLASSES[s]) for k, v in _FC100.items()}
    return replace(_by_names(data, _cifar_classes(split, supers), "FC100"), split=f"fc100-{split}")


# ----------------------------------------------------------------------------- mini-ImageNet


def read_split_csv(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(filename, label)`` of a Ravi & Larochelle split CSV (header ``filename,label``).

    Raises:
        DataError: missing file or malformed rows.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"Split file {p} does not exist. Ravi & Larochelle's mini-ImageNet split is train.csv, val.csv and "
            "test.csv (columns filename,label) beside the images/ folder."
        )
    rows: list[tuple[str, str]] = []
    with p.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if i == 0 and row and row[0].strip().lower() == "filename":
                continue
            if not row:
                continue
            if len(row) != 2:
                raise DataError(f"{p}: line {i + 1} is not 'filename,label': {row!r}.")
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise DataError(f"{p} lists no images.")
    return rows


def load_csv_split(root: str | Path, split: str, image_size: int = 84) -> TensorData:
    """Mini-ImageNet (or any set) from ``root/<split>.csv`` and the images in ``root/images/``.

    Images are read with PIL, converted to RGB and resized (bilinear) to
    ``image_size`` × ``image_size`` as in Ravi & Larochelle (ICLR 2017). Labels index the
    split's sorted class ids (wnids).

    Returns:
        ``x: [N, 3, image_size, image_size]`` uint8.
    """
    from PIL import Image

    root = Path(root)
    rows = read_split_csv(root / f"{split}.csv")
    classes = sorted({label for _, label in rows})
    cid = {c: i for i, c in enumerate(classes)}
    x = torch.empty(len(rows), 3, image_size, image_size, dtype=torch.uint8)
    for i, (fname, _) in enumerate(rows):
        path = root / "images" / fname
        if not path.is_file():
            raise DataError(f"{root / f'{split}.csv'} lists {fname}, but {path} does not exist.")
        with Image.open(path) as im:
            im = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            x[i] = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3).permute(2, 0, 1)
    y = torch.tensor([cid[label] for _, label in rows], dtype=torch.int64)
    info = {"files": [f"{split}.csv"], "variant": "ravi-larochelle csv", "image_size": image_size}
    return TensorData(x, y, f"csv:{root}", split, tuple(classes), info)


def csv_classes(path: str | Path) -> list[str]:
    """The class ids (wnids) a split CSV lists, sorted (to select them from a ``folder:`` dataset)."""
    return sorted({label for _, label in read_split_csv(path)})
