"""Test-time adaptation on MNIST-C (issue 6): errors over seeds, and MEMO's speed.

Parts:

* ``mnist_c``: runs ``recipes/tta/mnist_c.yaml`` (dann_cnn + BatchNorm trained 2 epochs on
  MNIST; the MNIST test set under the 15 corruptions at severity 5; source, norm, tent,
  memo, eata, sar, cotta) for each seed in resume-safe run folders under
  ``benchmarks/runs/tta-mnist_c/``. Rows: per method, the mean error over the 15
  corruptions (mean ± 95% CI over seeds, :func:`shiftlab.stats.summarize`), and per
  (method, corruption) the error; MEMO is single-sample (reset per test point) on the first
  1,000 digits of each corruption, compared with the source model on the same digits
  (``source_memo_subset``).
* ``memo_speed``: MEMO's time per test point with B = 32 augmented copies, ours (the
  copies made by the batched torch AugMix of :mod:`shiftlab.data.augment`) against a
  per-copy PIL AugMix loop as in the original MEMO code (Zhang et al.,
  ``zhangmarvin/memo``, ``aug()`` of AugMix's ``augment_and_mix`` on a PIL image per copy,
  then one forward over the stacked copies). Same model (seed 0's source model), same
  optimizer step, same test points, interleaved in one run; only the augmentation differs.

Usage::

    python benchmarks/bench_tta.py --seeds 0 1 2                 # both parts, the full test set
    python benchmarks/bench_tta.py --limit 200 --train-limit 2000 # a quick look (other run folders)
    python benchmarks/bench_tta.py --part memo_speed --points 200

Writes ``benchmarks/results/tta.json`` (``--out``); with ``--part`` only that part's rows
are replaced, the other part's are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from shiftlab.experiment.dispatch import run_recipe
from shiftlab.experiment.report import merge_rows, write_benchmark
from shiftlab.experiment.run import RunOptions
from shiftlab.stats import summarize

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tta" / "mnist_c.yaml"


# ----------------------------------------------------------------------------- MNIST-C


def overrides(limit: int | None, train_limit: int | None) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    if limit:
        ov["eval.limit"] = limit
    if train_limit:
        ov["source.train.limit"] = train_limit
    return ov


def mnist_c(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    opts = RunOptions(runs_dir=args.runs_dir, data_dir=args.data_dir, resume=True, progress=False)
    t0 = time.perf_counter()
    results = run_recipe(RECIPE, overrides(args.limit, args.train_limit), opts, args.seeds)
    wall = time.perf_counter() - t0
    from shiftlab.experiment.tta_run import CORRUPTIONS

    labels = list(results[0]["per_shift"])
    rows: list[dict[str, Any]] = []
    for lb in labels:
        s = summarize([r["metrics"][f"{lb}/err"] for r in results])
        secs = summarize([r["method_seconds"][lb] for r in results])
        row = {"task": "MNIST-C severity 5, mean over 15 corruptions", "method": lb, "metric": "mean/err",
               "mean": s.mean, "ci95": s.ci95, "n": s.n, "seconds": secs.mean,
               "per_seed": [r["metrics"][f"{lb}/err"] for r in results]}
        rows.append(row)
    for c in CORRUPTIONS:
        for lb in labels:
            s = summarize([r["per_shift"][lb][f"{c}-5"] for r in results])
            rows.append({"task": f"MNIST-C {c} severity 5", "method": lb, "metric": "corruption/err",
                         "mean": s.mean, "ci95": s.ci95, "n": s.n, "seconds": None})
    clean = summarize([r["metrics"]["clean/acc"] for r in results])
    rows.append({"task": "MNIST test (clean), source model", "method": "source", "metric": "clean/acc",
                 "mean": clean.mean, "ci95": clean.ci95, "n": clean.n,
                 "seconds": summarize([r["source"]["train_seconds"] for r in results]).mean})
    for r in results:
        print(r["seed"], {k: round(100 * v, 2) for k, v in r["metrics"].items() if "/" in k and
                          not k.startswith("per_shift/")}, r["seconds"])
    cfg = json.dumps({k: v for k, v in _methods_used(args).items()})
    note = (f"recipes/tta/mnist_c.yaml, overrides {overrides(args.limit, args.train_limit) or 'none'}; "
            f"seeds {args.seeds}; wall {wall:.0f} s for the seeds run now (finished seeds are reused). "
            "Source: dann_cnn + BatchNorm, 2 epochs Adam 1e-3 on MNIST (one model per seed). Corruptions: "
            "ImageNet-C parameter table (the imagecorruptions package), severity 5, quantised to uint8. "
            "Protocol: online, batch 64, reset before each corruption (Tent's); memo: single-sample, "
            "B=32, on the first 1,000 digits of each corruption (source_memo_subset: the source model on "
            "the same digits); memo uses the paper's BatchNorm prior N=16, memo_n1 N=1 (chosen on a "
            "validation stream of corrupted MNIST train rows, not on the test digits); shot = SHOT-IM. "
            f"Methods as run: {cfg}")
    return rows, note


def _methods_used(args: argparse.Namespace) -> dict[str, Any]:
    from shiftlab.config import read_recipe_mapping
    from shiftlab.experiment.tta_run import _resolved_methods, load_tta_recipe

    rec, _ = load_tta_recipe(read_recipe_mapping(RECIPE), overrides(args.limit, args.train_limit))
    return {lb: {"optimizer": m["optimizer"], "hparams": {k: v for k, v in m["hparams"].items()},
                 "limit": m["limit"], "protocol": m["protocol"]} for lb, m in _resolved_methods(rec).items()}


# ----------------------------------------------------------------------------- MEMO speed
# The per-copy PIL AugMix of the original MEMO code (zhangmarvin/memo, which uses AugMix's
# augmentations.py): written here for the comparison, never used by shiftlab itself.


def _int_parameter(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _sample_level(n: float, rng: np.random.Generator) -> float:
    return float(rng.uniform(low=0.1, high=n))


def _pil_ops(size: int) -> list[Any]:
    def autocontrast(img: Image.Image, _: float, rng: np.random.Generator) -> Image.Image:
        return ImageOps.autocontrast(img)

    def equalize(img: Image.Image, _: float, rng: np.random.Generator) -> Image.Image:
        return ImageOps.equalize(img)

    def posterize(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        return ImageOps.posterize(img, 4 - _int_parameter(_sample_level(level, rng), 4))

    def rotate(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        deg = _int_parameter(_sample_level(level, rng), 30)
        return img.rotate(-deg if rng.uniform() > 0.5 else deg, resample=Image.BILINEAR)

    def solarize(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        return ImageOps.solarize(img, 256 - _int_parameter(_sample_level(level, rng), 256))

    def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
        return img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)

    def _signed(v: float, rng: np.random.Generator) -> float:
        return -v if rng.uniform() > 0.5 else v

    def shear_x(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        return _affine(img, (1, _signed(_float_parameter(_sample_level(level, rng), 0.3), rng), 0, 0, 1, 0))

    def shear_y(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        return _affine(img, (1, 0, 0, _signed(_float_parameter(_sample_level(level, rng), 0.3), rng), 1, 0))

    def translate_x(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        return _affine(img, (1, 0, _signed(_int_parameter(_sample_level(level, rng), size / 3), rng), 0, 1, 0))

    def translate_y(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        return _affine(img, (1, 0, 0, 0, 1, _signed(_int_parameter(_sample_level(level, rng), size / 3), rng)))

    return [autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def pil_augmix_copy(x: torch.Tensor, rng: np.random.Generator, ops: list[Any], crop_padding: int,
                    hflip: bool, severity: float = 3.0, width: int = 3, depth: int = -1) -> torch.Tensor:
    """One augmented copy of ``x: [C, H, W]`` as MEMO's code makes it: PIL random crop (+ flip),
    then AugMix's ``augment_and_mix`` with PIL ops, ``ToTensor`` per chain."""
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    size = img.size[0]
    if crop_padding:  # transforms.RandomCrop(size, padding=p)
        padded = ImageOps.expand(img, border=crop_padding, fill=0)
        i, j = rng.integers(0, 2 * crop_padding + 1, 2)
        img = padded.crop((int(j), int(i), int(j) + size, int(i) + size))
    if hflip and rng.uniform() < 0.5:
        img = ImageOps.mirror(img)
    ws = np.float32(rng.dirichlet([1.0] * width))
    m = np.float32(rng.beta(1.0, 1.0))
    mix = torch.zeros_like(_to_tensor(img))
    for i in range(width):
        aug = img.copy()
        for _ in range(depth if depth > 0 else int(rng.integers(1, 4))):
            aug = ops[int(rng.integers(len(ops)))](aug, severity, rng)
        mix += float(ws[i]) * _to_tensor(aug)
    return (1 - float(m)) * _to_tensor(img) + float(m) * mix


def memo_speed(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    from shiftlab.config import overrides_id, read_recipe_mapping
    from shiftlab.experiment.tta_run import (
        ShiftSpec,
        _load_sets,
        build_source_model,
        load_tta_recipe,
        make_segment,
    )
    from shiftlab.losses.entropy import marginal_entropy
    from shiftlab.methods import create_method

    ov = overrides(args.limit, args.train_limit)
    rec, ov = load_tta_recipe(read_recipe_mapping(RECIPE), ov)
    spec = rec.active_methods()["memo"]
    seed = args.seeds[0]
    opts = RunOptions(runs_dir=args.runs_dir, data_dir=args.data_dir, progress=False)
    train, sets = _load_sets(rec, opts)
    cache = Path(args.runs_dir) / rec.name / overrides_id(ov) / f"seed-{seed}" / "source_model"
    cache.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    model, info = build_source_model(rec, seed, train.num_classes if train else 10, device, train, cache,
                                     args.data_dir)
    seg = make_segment(ShiftSpec(f"{args.corruption}-5", "corruption", args.corruption, 5, rec.eval.dataset.key),
                       sets, seed, rec.eval.table)
    n = min(args.points, len(seg.y))
    memo = create_method("memo", backbone=model, num_classes=10, hparams=spec.hparams,
                         optimizer=spec.optimizer.factory() if spec.optimizer else None)
    h = memo.hparams
    ops = _pil_ops(seg.x.shape[-1])
    rng = np.random.default_rng(seed)

    def peer_views(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([pil_augmix_copy(x[0], rng, ops, h.crop_padding, h.hflip, h.aug_severity,
                                            h.mixture_width, h.mixture_depth) for _ in range(h.n_augmentations)])

    def peer_one(x: torch.Tensor) -> torch.Tensor:
        memo.reset()
        for _ in range(h.steps):
            with torch.no_grad():
                views = peer_views(x)
            memo._step(marginal_entropy(memo.backbone(views)))
        with torch.no_grad():
            return memo.backbone(x)

    ours_t, peer_t, ours_ok, peer_ok, ours_aug, peer_aug = 0.0, 0.0, 0, 0, 0.0, 0.0
    for i in range(n):  # interleaved: both see the same machine load
        x, y = seg.x[i : i + 1], int(seg.y[i])
        t = time.perf_counter()
        ours_ok += int(memo.adapt_one(x).argmax(1).item() == y)
        ours_t += time.perf_counter() - t
        t = time.perf_counter()
        peer_ok += int(peer_one(x).argmax(1).item() == y)
        peer_t += time.perf_counter() - t
        t = time.perf_counter()  # the augmentation alone (B copies), each side
        with torch.no_grad():
            memo.augment(x)
        ours_aug += time.perf_counter() - t
        t = time.perf_counter()
        peer_views(x)
        peer_aug += time.perf_counter() - t
    ours_s, peer_s = ours_t / n, peer_t / n
    print(f"memo per point (B={h.n_augmentations}): ours {1000 * ours_s:.1f} ms, PIL loop {1000 * peer_s:.1f} ms, "
          f"speed-up {peer_s / ours_s:.2f}x; augmentation alone: ours {1000 * ours_aug / n:.1f} ms, PIL "
          f"{1000 * peer_aug / n:.1f} ms ({peer_aug / max(ours_aug, 1e-12):.2f}x); error ours {1 - ours_ok / n:.3f}, "
          f"PIL loop {1 - peer_ok / n:.3f}")
    rows = [
        {"task": f"MEMO speed, {args.corruption}-5, {n} points", "method": "memo (batched torch AugMix)",
         "metric": "point/err", "mean": 1 - ours_ok / n, "ci95": None, "n": n, "seconds": ours_t,
         "ms_per_point": 1000 * ours_s},
        {"task": f"MEMO speed, {args.corruption}-5, {n} points", "method": "memo (per-copy PIL AugMix loop)",
         "metric": "point/err", "mean": 1 - peer_ok / n, "ci95": None, "n": n, "seconds": peer_t,
         "ms_per_point": 1000 * peer_s},
    ]
    ratios = {f"memo_per_point_B{h.n_augmentations}": {
        "ours_s": ours_s, "peer_s": peer_s,
        "note": (f"seconds per test point (reset, {h.n_augmentations} copies, forward+backward, SGD step, "
                 f"prediction), mean over {n} {args.corruption}-5 MNIST test digits; same dann_cnn+BN source "
                 f"model (seed {seed}, {info.origin}) and step, only the augmentation differs; "
                 f"torch threads {torch.get_num_threads()}")},
        f"memo_augmentation_B{h.n_augmentations}": {
        "ours_s": ours_aug / n, "peer_s": peer_aug / n,
        "note": (f"the augmentation alone: {h.n_augmentations} AugMix copies of one test point (batched torch vs "
                 "per-copy PIL), mean over the same points; the rest of a MEMO step (forward, backward, "
                 "optimizer step, prediction) is the same on both sides")}}
    note = ("memo_speed: the peer side is the per-copy PIL AugMix of MEMO's original code (AugMix's "
            "augment_and_mix: 3 chains of 1-3 of autocontrast/equalize/posterize/rotate/solarize/shear/translate "
            "at severity 3, Dirichlet/Beta mixing, ToTensor per chain), preceded by the PIL random crop "
            f"(padding {h.crop_padding}){' and flip' if h.hflip else ''}, written in this script.")
    return rows, ratios, note


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["mnist_c", "memo_speed"], help="run one part (default: both)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--limit", type=int, help="use the first N test images (a quick look; own run folders)")
    ap.add_argument("--train-limit", type=int, help="train the source model on the first N MNIST images")
    ap.add_argument("--points", type=int, default=200, help="memo_speed: test points timed")
    ap.add_argument("--corruption", default="gaussian_noise", help="memo_speed: the corruption (severity 5)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: small batches gain nothing from more on a busy machine)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--runs-dir", type=Path, default=REPO / "benchmarks" / "runs")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tta.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = [args.part] if args.part else ["mnist_c", "memo_speed"]
    old: dict[str, Any] = {}
    if args.out.is_file():
        old = json.loads(args.out.read_text(encoding="utf-8"))
    rows: list[dict[str, Any]] = []
    ratios = {k: v for k, v in (old.get("ratios") or {}).items() if "memo_speed" not in parts}
    notes = {k: v for k, v in (old.get("part_notes") or {}).items() if k not in parts}
    if "mnist_c" in parts:
        new, notes["mnist_c"] = mnist_c(args)
        rows += [{**r, "part": "mnist_c"} for r in new]
    if "memo_speed" in parts:
        new, ratios, notes["memo_speed"] = memo_speed(args)
        rows += [{**r, "part": "memo_speed"} for r in new]
    cmd = " ".join(["python", *sys.argv])
    rows = merge_rows(args.out, rows, key=lambda r: r.get("part"))  # rows of the parts not run are kept
    write_benchmark(args.out, "tta", cmd, rows, ratios, " ".join(notes.values()))
    doc = json.loads(args.out.read_text(encoding="utf-8"))
    doc["part_notes"] = notes
    from shiftlab.io import atomic_write_json

    atomic_write_json(args.out, doc)
    print("written", args.out)


if __name__ == "__main__":
    main()
