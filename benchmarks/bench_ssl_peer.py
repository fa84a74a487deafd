"""BYOL side by side with lightly 1.6.0 on MNIST: pre-training speed and k-NN accuracy, one run.

What is compared. Both sides pre-train the same network with BYOL on the same images, then
the same shiftlab code scores the learnt features:

* data: the first ``--train-limit`` MNIST training digits (uint8, 28x28, 1 channel) from
  ``../shared/data`` (``SHIFTLAB_DATA`` or ``--data-dir`` to change it);
* backbone: shiftlab's ``lenet`` (84 features), created on both sides right after
  ``torch.manual_seed(--seed)``, so both start from the same weights (a checksum of the
  initial parameters is recorded per side and compared);
* heads: projector ``84 -> 1024 -> 128`` and predictor ``128 -> 1024 -> 128`` (Linear - BN -
  ReLU - Linear), target/momentum network = EMA copy of backbone + projector, momentum
  ``0.99 -> 1`` on a cosine over the steps;
* optimiser: Adam, lr 1e-3, weight decay 1e-6 (the ``ssl`` recipes), our BYOL's per-step
  learning-rate schedule (linear warm-up over the first 1% of the steps, then cosine),
  reproduced on the peer side with a ``LambdaLR`` stepped every iteration;
* batch ``--batch-size`` (256) images, two views each, ``drop_last``, ``--epochs`` passes;
* augmentation: ours ``shiftlab.data.augment.byol_digits(28)`` on float batches (one batched
  call per view); theirs lightly's ``BYOLTransform(BYOLView1Transform, BYOLView2Transform)``
  on PIL "L" images, per image, in ``--peer-workers`` DataLoader workers, with the
  parameters set to match ``byol_digits`` (crop scale 0.5-1, no flips or rotations,
  jitter 0.4/0.4/0.2/0.1 with p 0.8 (``cj_strength=1``), grayscale p 0.2, blur p 1.0 / 0.1
  with sigma 0.1-1.0, solarisation p 0 / 0.2, no normalisation so both backbones see [0, 1]).

Ours is driven as ``shiftlab.experiment.ssl_run`` drives it (``create_method("byol", ...)``,
``set_schedule``, ``set_progress`` per step, in-memory shuffled batches, ``method.update``).
Theirs follows lightly's documented BYOL example (module with backbone, ``BYOLProjectionHead``,
``BYOLPredictionHead``, deep-copied momentum backbone and head with
``deactivate_requires_grad``, ``update_momentum`` with ``cosine_schedule``, symmetric
``NegativeCosineSimilarity`` loss, one forward per view and network), with the momentum
evaluated per step. Lightly runs in its own virtual environment ``benchmarks/.venvs/lightly``
(created here on first use: ``python -m venv``, a ``_shared_torch.pth`` pointing at this
environment's site-packages so that torch/torchvision are not installed again and both sides
run the same torch build, then ``pip install lightly==1.6.0``, whose missing dependencies
such as pytorch_lightning land in that venv only). The peer is this same file run by the
peer venv's python with ``--peer-worker CONFIG.json``; it gets the images as a ``.pt`` file
and hands its trained backbone back as a state dict, so the k-NN scoring of both sides runs
in this process with the same function.

Measured per side: images/second of pre-training (wall time of the training loop,
augmentation, data loading and update included, k-NN excluded; for the peer the DataLoader
worker start-up is inside the first epoch), seconds per epoch, final loss (ours also
converted to lightly's scale: ours = ``4 + 4 * theirs``), and the weighted k-NN accuracy
(``shiftlab.methods.ssl.monitor``, k=20, T=0.07) of ``backbone.forward_features``: bank =
the first ``--bank`` MNIST training images, queries = the first ``--query`` MNIST test
images, with a 95% Wilson interval over the queries. The randomly initialised LeNet (same
seed) gives the floor. The two sides run one after the other in one invocation (ours
first; ``--peer-first`` swaps), each with ``--threads`` torch threads.

Usage::

    python benchmarks/bench_ssl_peer.py                       # full size: 60k images, 5 epochs
    OMP_NUM_THREADS=1 python benchmarks/bench_ssl_peer.py --epochs 1 --train-limit 2048 \\
        --bank 1000 --query 1000 --threads 1 --peer-workers 1 --out /tmp/ssl_peer_smoke.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
PEER_ENV = REPO / "benchmarks" / ".venvs" / "lightly"
PEER_PACKAGE = "lightly==1.6.0"
DATA = os.environ.get("SHIFTLAB_DATA", str(REPO.parent / "shared" / "data"))
HPARAMS = {"projection_hidden": 1024, "predictor_hidden": 1024, "projection_dim": 128, "base_momentum": 0.99}
LR, WEIGHT_DECAY = 1e-3, 1e-6
KNN_K, KNN_T = 20, 0.07


def _src_on_path() -> None:
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def lr_multiplier(schedule: str, progress: float, warmup: float) -> float:
    """The learning-rate factor of our BYOL (``shiftlab.optim.lr_factor``), restated for the peer."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    raise ValueError(f"unsupported lr schedule {schedule!r}")


def param_checksum(module: torch.nn.Module) -> float:
    """A cheap fingerprint of a module's parameters (sum of |w| plus a position-weighted sum)."""
    with torch.no_grad():
        total = 0.0
        for i, p in enumerate(module.parameters()):
            total += float(p.double().abs().sum()) + (i + 1) * float(p.double().sum())
    return total


def _view_stats(v1: torch.Tensor, v2: torch.Tensor) -> dict[str, list[float]]:
    """Mean and std of each view of one batch (a coarse check that both pipelines look alike)."""
    with torch.no_grad():
        return {"mean": [float(v1.mean()), float(v2.mean())], "std": [float(v1.std()), float(v2.std())]}


# ----------------------------------------------------------------------------- the peer side
def peer_worker(cfg_path: Path) -> None:
    """lightly's BYOL (run by the peer venv's python); writes a JSON result and the backbone."""
    import random

    import numpy as np
    from PIL import Image
    from torch import nn

    cfg = json.loads(cfg_path.read_text())
    torch.set_num_threads(int(cfg["threads"]))
    _src_on_path()
    import lightly
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.byol_transform import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
    )
    from lightly.utils.scheduler import cosine_schedule

    from shiftlab.backbones import create_backbone

    seed = int(cfg["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    net = create_backbone("lenet", in_chans=1, num_classes=10, image_size=28)
    init_checksum = param_checksum(net)

    class Features(nn.Module):
        """The LeNet as a feature extractor: ``[B, 1, 28, 28] -> [B, 84]``."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_features(x)

    class BYOL(nn.Module):  # lightly's documented BYOL module
        def __init__(self, backbone: nn.Module, feat: int, hidden: int, dim: int) -> None:
            super().__init__()
            self.backbone = backbone
            self.projection_head = BYOLProjectionHead(feat, hidden, dim)
            self.prediction_head = BYOLPredictionHead(dim, cfg["predictor_hidden"], dim)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.backbone(x).flatten(start_dim=1)
            return self.prediction_head(self.projection_head(y))

        def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
            y = self.backbone_momentum(x).flatten(start_dim=1)
            return self.projection_head_momentum(y).detach()

    model = BYOL(Features(net), net.num_features, cfg["projection_hidden"], cfg["projection_dim"])

    common = dict(input_size=28, cj_prob=0.8, cj_strength=1.0, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.2,
                  cj_hue=0.1, min_scale=0.5, random_gray_scale=0.2, sigmas=(0.1, 1.0), vf_prob=0.0, hf_prob=0.0,
                  rr_prob=0.0, normalize=None)
    transform = BYOLTransform(BYOLView1Transform(gaussian_blur=1.0, solarization_prob=0.0, **common),
                              BYOLView2Transform(gaussian_blur=0.1, solarization_prob=0.2, **common))
    blob = torch.load(cfg["data"])
    x_all, y_all = blob["x"], blob["y"]

    class Digits(torch.utils.data.Dataset):
        """uint8 ``[N, 1, 28, 28]`` -> PIL "L" per item (as ``torchvision.datasets.MNIST``)."""

        def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Any) -> None:
            self.x, self.y, self.transform = x, y, transform

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            img = Image.fromarray(self.x[i, 0].numpy())  # 2-D uint8 -> mode "L"
            return self.transform(img), int(self.y[i])

    workers = int(cfg["workers"])
    loader = torch.utils.data.DataLoader(Digits(x_all, y_all, transform), batch_size=cfg["batch_size"], shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0)
    steps = len(loader)
    epochs = int(cfg["epochs"])
    total = epochs * steps
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(cfg["lr_schedule"], s / total, cfg["warmup"]))
    # the views are 1-channel: check once, outside the timed loop, that lightly keeps them so
    probe = transform(Image.fromarray(x_all[0, 0].numpy()))
    view_info = {"shape": list(probe[0].shape), "dtype": str(probe[0].dtype),
                 "min": float(min(v.min() for v in probe)), "max": float(max(v.max() for v in probe))}

    model.train()
    step, images, epoch_s, losses = 0, 0, [], []
    first_batch_s, view_stats = None, None
    t_start = time.perf_counter()
    for _epoch in range(epochs):
        t0 = time.perf_counter()
        total_loss = 0.0
        for batch in loader:
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t_start
            x0, x1 = batch[0]
            if view_stats is None:
                view_stats = _view_stats(x0, x1)
            momentum = cosine_schedule(step, total, cfg["base_momentum"], 1.0)
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            p0 = model(x0)
            z0 = model.forward_momentum(x0)
            p1 = model(x1)
            z1 = model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            total_loss += loss.detach()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            last_lr = optimizer.param_groups[0]["lr"]
            sched.step()
            step += 1
            images += x0.shape[0]
        losses.append(float(total_loss) / steps)
        epoch_s.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - t_start
    torch.save(net.state_dict(), cfg["backbone_out"])
    result = {
        "images": images, "steps": step, "steps_per_epoch": steps, "seconds": seconds, "epoch_seconds": epoch_s,
        "first_batch_s": first_batch_s, "images_per_s": images / seconds, "final_loss": losses[-1],
        "epoch_losses": losses, "last_step_lr": last_lr, "last_step_momentum": momentum,
        "torch_threads": torch.get_num_threads(), "workers": workers, "persistent_workers": workers > 0,
        "init_checksum": init_checksum, "final_checksum": param_checksum(net), "view": view_info,
        "first_batch_view_stats": view_stats,
        "versions": {"lightly": lightly.__version__, "torch": torch.__version__, "torch_file": torch.__file__,
                     "python": platform.python_version()},
    }
    Path(cfg["result_out"]).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- the peer venv
def ensure_peer_env() -> Path:
    """Create ``benchmarks/.venvs/lightly`` once (shared torch via ``.pth``); returns its python."""
    py = PEER_ENV / "bin" / "python"
    probe = [str(py), "-c", "import lightly, torch; print(lightly.__version__); print(torch.__file__)"]
    ok = py.exists() and subprocess.run(probe, capture_output=True).returncode == 0
    if not ok:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
        site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                              capture_output=True, text=True).stdout.strip()
        # the .pth first, so that pip sees this environment's torch/torchvision as installed
        (Path(site) / "_shared_torch.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", PEER_PACKAGE], check=True)
    out = subprocess.run(probe, check=True, capture_output=True, text=True).stdout.split()
    ours = str(Path(torch.__file__).resolve())
    if str(Path(out[1]).resolve()) != ours:
        raise RuntimeError(f"the peer venv imports torch from {out[1]}, not {ours}: remove {PEER_ENV} and rerun")
    return py


# ----------------------------------------------------------------------------- helpers
def wilson(acc: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``acc`` over ``n`` trials."""
    if n == 0:
        return (math.nan, math.nan)
    denom = 1.0 + z * z / n
    centre = (acc + z * z / (2 * n)) / denom
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def knn_of(backbone: Any, bank: Any, query: Any) -> dict[str, Any]:
    from shiftlab.methods.ssl.monitor import extract_features, knn_accuracy

    t0 = time.perf_counter()
    fb, fq = extract_features(backbone, bank), extract_features(backbone, query)
    acc = knn_accuracy(fb, bank.y, fq, query.y, k=KNN_K, temperature=KNN_T, num_classes=10)
    lo, hi = wilson(acc, len(query))
    return {"acc": acc, "ci95": [lo, hi], "n_query": len(query), "n_bank": len(bank),
            "seconds": time.perf_counter() - t0}


def run_ours(train: Any, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Our BYOL, driven as ``ssl_run._pretrain_ssl`` drives it."""
    from shiftlab.backbones import create_backbone
    from shiftlab.data.augment import byol_digits
    from shiftlab.methods import create_method
    from shiftlab.optim import OptimizerFactory
    from shiftlab.seeding import epoch_generator

    torch.manual_seed(args.seed)
    bb = create_backbone("lenet", in_chans=1, num_classes=10, image_size=28)
    init_checksum = param_checksum(bb)
    hp = dict(HPARAMS, joint_forward=not args.ours_separate_views)
    method = create_method("byol", backbone=bb, num_classes=10, hparams=hp,
                           optimizer=OptimizerFactory("adam", LR, WEIGHT_DECAY))
    steps = len(train) // args.batch_size
    total = args.epochs * steps
    method.set_schedule(args.epochs, steps)
    views_of = byol_digits(28)
    images, epoch_s, losses = 0, [], []
    last: dict[str, float] = {}
    view_stats = None
    t_start = time.perf_counter()
    for epoch in range(args.epochs):
        order = epoch_generator(args.seed, epoch, 0)
        views_gen = epoch_generator(args.seed, epoch, 2)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for i, batch in enumerate(train.batches(args.batch_size, shuffle=True, generator=order, drop_last=True)):
            method.set_progress((epoch * steps + i) / total)
            views = views_of.apply(batch.x, views_gen)
            if view_stats is None:
                view_stats = _view_stats(views.v1, views.v2)
            last = method.update(views)
            if not math.isfinite(last["loss"]):
                raise RuntimeError(f"our BYOL loss became {last['loss']} at epoch {epoch + 1}, step {i + 1}")
            loss_sum += last["loss"]
            images += len(batch.y)
        losses.append(loss_sum / steps)
        epoch_s.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - t_start
    h = method.hparams
    res = {
        "images": images, "steps": total, "steps_per_epoch": steps, "seconds": seconds, "epoch_seconds": epoch_s,
        "images_per_s": images / seconds, "final_loss": losses[-1], "epoch_losses": losses,
        "final_loss_lightly_scale": (losses[-1] - 4.0) / 4.0,
        "last_step_lr": method.opt.param_groups[0]["lr"], "last_step_momentum": last.get("tau"),
        "torch_threads": torch.get_num_threads(), "init_checksum": init_checksum,
        "final_checksum": param_checksum(method.backbone), "first_batch_view_stats": view_stats,
        "hparams": {"projection_dim": h.projection_dim, "projection_hidden": h.projection_hidden,
                    "predictor_hidden": h.predictor_hidden, "base_momentum": h.base_momentum,
                    "lr_schedule": h.lr_schedule, "warmup": h.warmup, "joint_forward": h.joint_forward},
    }
    method.backbone.eval()
    return res, method.backbone


def run_peer(train: Any, args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], Any]:
    from shiftlab.backbones import create_backbone
    from shiftlab.methods.ssl.byol import ByolHparams

    py = ensure_peer_env()
    base = ByolHparams()
    blob, bb_out, res_out, cfg_path = (work / n for n in ("train.pt", "peer_backbone.pt", "peer.json", "cfg.json"))
    torch.save({"x": train.x.contiguous(), "y": train.y.contiguous()}, blob)
    cfg = {"data": str(blob), "backbone_out": str(bb_out), "result_out": str(res_out), "seed": args.seed,
           "epochs": args.epochs, "batch_size": args.batch_size, "workers": args.peer_workers, "threads": args.threads,
           "lr": LR, "weight_decay": WEIGHT_DECAY, "lr_schedule": base.lr_schedule, "warmup": base.warmup, **HPARAMS}
    cfg_path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), str(Path(__file__).resolve()), "--peer-worker", str(cfg_path)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the lightly side failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(res_out.read_text())
    res["process_wall_s"] = wall
    res["stderr_tail"] = proc.stderr[-1500:]
    torch.manual_seed(args.seed)
    bb = create_backbone("lenet", in_chans=1, num_classes=10, image_size=28)
    bb.load_state_dict(torch.load(bb_out))
    bb.eval()
    return res, bb


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mismatches(args: argparse.Namespace) -> list[str]:
    views = ("ours: both views through each network in one [2B] pass (BatchNorm statistics over both views, "
             "our default joint_forward=True)" if not args.ours_separate_views else "ours: one pass per view")
    return [
        f"forward passes: {views}; lightly's example: one pass per view and network (statistics per view)",
        "loss scale: ours sums 2-2cos over both views (in [0, 8]); lightly averages -cos (in [-1, 1]): "
        "ours = 4 + 4 * theirs, i.e. 4x the gradient; Adam is almost invariant to that (only eps and the "
        "1e-6 weight decay see the scale)",
        "momentum: lightly's cosine_schedule(step, total, 0.99, 1) reaches 1 at step total-1 (cos over "
        "step/(total-1)); ours over step/total. Lightly's example updates the EMA before each forward, ours after "
        "each optimizer step (same sequence except ours also updates after the last step)",
        "blur: ours truncates the Gaussian to 3 taps on 28 px images (about 10% of the side) with reflect padding; "
        "lightly calls PIL's ImageFilter.GaussianBlur(radius=sigma), an extended-box approximation of the full "
        "Gaussian, so lightly's blur is stronger at the larger sigmas",
        "resized crop: ours bilinear via grid_sample without antialiasing on float images; lightly torchvision v2 "
        "RandomResizedCrop on PIL (bilinear with antialias) on uint8",
        "colour: ours on float [0, 1] tensors; lightly on uint8 PIL images (8-bit rounding after each op); on "
        "1-channel images saturation, hue and grayscale are no-ops on both sides",
        "solarisation: ours inverts x >= 0.5; lightly PIL ImageOps.solarize inverts levels >= 128 (x >= 0.502)",
        "randomness: ours draws order and views from torch generators seeded per epoch; lightly uses the "
        "DataLoader's shuffle (torch) and numpy/torch RNGs in each worker, so the two runs see different views",
        "data path: ours slices batches from an in-memory uint8 tensor and augments whole batches in the main "
        "process; lightly converts each item to PIL and augments it in DataLoader workers (their normal usage)",
        "lr schedule: identical formula (warm-up over 1% of steps, cosine); ours via set_progress, theirs via "
        "LambdaLR stepped each iteration (lightly's own CosineWarmupScheduler has a different shape)",
        "heads: same layers (Linear no-bias - BN - ReLU - Linear), initialised from different RNG draws",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=DATA)
    ap.add_argument("--train-limit", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--bank", type=int, default=10000)
    ap.add_argument("--query", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-first", action="store_true", help="run lightly before ours")
    ap.add_argument("--ours-separate-views", action="store_true",
                    help="our BYOL with joint_forward=False (one pass per view, as lightly's example)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ssl_peer.json")
    args = ap.parse_args()
    if args.peer_worker is not None:
        peer_worker(args.peer_worker)
        return

    torch.set_num_threads(args.threads)
    _src_on_path()
    import shiftlab
    from shiftlab.backbones import create_backbone
    from shiftlab.data.sources import load_dataset
    from shiftlab.data.transforms import fit_dataset

    t_all = time.perf_counter()
    full = fit_dataset(load_dataset("mnist", "train", data_dir=args.data_dir), 28, 1, "pad")
    test = fit_dataset(load_dataset("mnist", "test", data_dir=args.data_dir), 28, 1, "pad")
    train = full.subset(slice(0, args.train_limit))
    bank = full.subset(slice(0, args.bank))
    query = test.subset(slice(0, args.query))
    if len(train) < args.batch_size:
        raise SystemExit(f"--train-limit {len(train)} is below one batch of {args.batch_size}")

    torch.manual_seed(args.seed)
    init_bb = create_backbone("lenet", in_chans=1, num_classes=10, image_size=28)
    floor = knn_of(init_bb, bank, query)
    floor["init_checksum"] = param_checksum(init_bb)

    sides: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ssl_peer_") as tmp:
        for side in (("lightly", "shiftlab") if args.peer_first else ("shiftlab", "lightly")):
            print(f"[bench_ssl_peer] training {side} ...", flush=True)
            res, bb = run_ours(train, args) if side == "shiftlab" else run_peer(train, args, Path(tmp))
            res["knn"] = knn_of(bb, bank, query)
            sides[side] = res

    ours, theirs = sides["shiftlab"], sides["lightly"]
    ratio = ours["images_per_s"] / theirs["images_per_s"]
    (lo1, hi1), (lo2, hi2) = ours["knn"]["ci95"], theirs["knn"]["ci95"]
    overlap = lo1 <= hi2 and lo2 <= hi1
    speed_ok = ratio >= 1.5
    verdict = (f"speed: ours/theirs = {ratio:.2f}x ({'PASS' if speed_ok else 'FAIL'}, need >= 1.5x); "
               f"k-NN: ours {ours['knn']['acc']:.4f} [{lo1:.4f}, {hi1:.4f}] vs theirs {theirs['knn']['acc']:.4f} "
               f"[{lo2:.4f}, {hi2:.4f}], 95% CIs {'overlap' if overlap else 'do not overlap'} "
               f"({'PASS' if overlap else 'FAIL'})")
    result = {
        "benchmark": "ssl_peer: shiftlab BYOL vs lightly BYOL on MNIST (LeNet)",
        "command": " ".join([Path(sys.executable).name, *[a if a else "''" for a in sys.argv]]),
        "verdict": verdict,
        "speed_ratio_ours_over_theirs": ratio,
        "speed_pass": speed_ok,
        "knn_ci_overlap": overlap,
        "versions": {"torch": torch.__version__, "lightly": theirs["versions"]["lightly"],
                     "shiftlab": getattr(shiftlab, "__version__", "?"), "python": platform.python_version(),
                     "peer_python": theirs["versions"]["python"], "peer_torch": theirs["versions"]["torch"],
                     "peer_torch_file": theirs["versions"]["torch_file"]},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_threads_ours": ours["torch_threads"], "torch_threads_theirs": theirs["torch_threads"],
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "settings": {"data": "MNIST train (first train_limit images), 28x28x1 uint8", "data_dir": str(args.data_dir),
                     "train_images": len(train), "epochs": args.epochs, "batch_size": args.batch_size,
                     "drop_last": True, "steps_per_epoch": len(train) // args.batch_size, "seed": args.seed,
                     "threads": args.threads, "peer_workers": args.peer_workers,
                     "peer_persistent_workers": args.peer_workers > 0, "order": list(sides),
                     "backbone": "shiftlab lenet (84 features)", "hparams": ours["hparams"],
                     "optimizer": {"name": "adam", "lr": LR, "weight_decay": WEIGHT_DECAY},
                     "augment_ours": "shiftlab.data.augment.byol_digits(28)",
                     "augment_theirs": "lightly BYOLTransform(BYOLView1Transform, BYOLView2Transform): input_size=28, "
                                       "min_scale=0.5, hf/vf/rr_prob=0, cj_prob=0.8, cj_strength=1, cj 0.4/0.4/0.2/0.1, "
                                       "random_gray_scale=0.2, gaussian_blur=1.0/0.1, sigmas=(0.1, 1.0), "
                                       "solarization_prob=0/0.2, normalize=None; PIL 'L' input",
                     "peer_view": theirs["view"],
                     "knn": {"k": KNN_K, "temperature": KNN_T, "bank": f"first {len(bank)} MNIST train images",
                             "query": f"first {len(query)} MNIST test images", "ci": "95% Wilson over the queries"}},
        "same_initial_backbone": math.isclose(ours["init_checksum"], theirs["init_checksum"], rel_tol=0, abs_tol=1e-9)
        and math.isclose(ours["init_checksum"], floor["init_checksum"], rel_tol=0, abs_tol=1e-9),
        "backbones_trained": {"ours": ours["final_checksum"] != ours["init_checksum"],
                              "theirs": theirs["final_checksum"] != theirs["init_checksum"]},
        "random_init_knn": floor,
        "ours": ours,
        "theirs": theirs,
        "mismatches": mismatches(args),
        "seconds_total": time.perf_counter() - t_all,
    }
    write_json_atomic(args.out, result)

    rows = [("", "images/s", "train s", "s/epoch", "final loss", "k-NN acc", "95% CI")]
    for name, r in (("shiftlab", ours), ("lightly", theirs)):
        per = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
        rows.append((name, f"{r['images_per_s']:.0f}", f"{r['seconds']:.1f}", f"{per:.1f}", f"{r['final_loss']:.4f}",
                     f"{r['knn']['acc']:.4f}", f"[{r['knn']['ci95'][0]:.4f}, {r['knn']['ci95'][1]:.4f}]"))
    rows.append(("random init", "", "", "", "", f"{floor['acc']:.4f}",
                 f"[{floor['ci95'][0]:.4f}, {floor['ci95'][1]:.4f}]"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(verdict)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
