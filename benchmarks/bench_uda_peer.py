"""DANN side by side with pytorch-adapt 0.0.83 on MNIST -> MNIST-M, measured in one run.

Both sides train the same network on the same tensors for the same number of steps:

* backbone: ``dann_cnn`` (``recipes/uda/mnist_to_mnistm.yaml``: MNIST zero-padded to 32x32 and
  repeated to RGB; target = the MNIST-M training set; evaluation = the real MNIST-M test set);
  the peer script rebuilds the identical layers (same parameter count, checked);
* discriminator: a 3-layer MLP ``128 -> 256 -> 256 -> 1`` on the 128-d features, no dropout
  (pytorch-adapt's ``models.Discriminator(in_size=128, h=256)``; ours ``disc_input=features,
  disc_hidden=256, disc_dropout=0``);
* objective: pytorch-adapt's ``DANNHook`` minimises ``mean(c_loss, src_domain_loss,
  target_domain_loss)`` with gradient reversal weight 1. Ours minimises ``c + trade_off * (src +
  tgt) / 2``; ``trade_off=2`` and a constant ``lambda=1`` give the same objective up to the
  factor 1/3, which Adam ignores;
* Adam, lr 1e-3, batch 64 source + 64 target, ``--epochs`` epochs of 937 steps.

The peer runs in its own virtual environment ``benchmarks/.venvs/pytorch_adapt`` (created
here, ``--no-deps``: pytorch-adapt==0.0.83, torchmetrics==0.9.3, pytorch-metric-learning==1.6.3,
``setuptools<82`` for torchmetrics' ``pkg_resources``, and a ``.pth`` file that reuses this
environment's torch, so both sides run the same torch build). It is fed the way its docs show:
``SourceDataset`` / ``TargetDataset`` / ``CombinedSourceAndTargetDataset`` through a
``torch.utils.data.DataLoader`` (shuffle, drop_last, no workers), images converted to float per
item. Ours runs through the engine (in-memory batches; channels_last convolutions on CPU, the
engine's default). Wall-clock is training only (evaluation excluded) on both sides, both with the
same torch thread count, one after the other in this process's run.

Usage::

    python benchmarks/bench_uda_peer.py --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
PEER_ENV = REPO / "benchmarks" / ".venvs" / "pytorch_adapt"
RECIPE = REPO / "recipes" / "uda" / "mnist_to_mnistm.yaml"
PEER_PACKAGES = ["pytorch-adapt==0.0.83", "torchmetrics==0.9.3", "pytorch-metric-learning==1.6.3",
                 "setuptools<82", "packaging", "tqdm", "scikit-learn", "scipy", "joblib", "threadpoolctl", "numpy"]

PEER_SCRIPT = r'''
import json, sys, time
import torch
from torch import nn
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(cfg["seed"])
from pytorch_adapt.adapters import DANN
from pytorch_adapt.containers import Models, Optimizers
from pytorch_adapt.datasets import CombinedSourceAndTargetDataset, SourceDataset, TargetDataset
from pytorch_adapt.models import Discriminator

blob = torch.load(cfg["data"], weights_only=True)

def features(in_chans=3, size=32, hidden=128):  # shiftlab's dann_cnn without its head
    conv = nn.Sequential(nn.Conv2d(in_chans, 32, 5), nn.ReLU(inplace=True), nn.Conv2d(32, 64, 5),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(1))
    flat = conv(torch.zeros(1, in_chans, size, size)).shape[1]
    return nn.Sequential(conv, nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True))

class Images(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i].float() / 255.0, int(self.y[i])

G, C, D = features(), nn.Linear(128, 10), Discriminator(in_size=128, h=256)
n_params = sum(p.numel() for m in (G, C) for p in m.parameters())
models = Models({"G": G, "C": C, "D": D})
adapter = DANN(models=models, optimizers=Optimizers((torch.optim.Adam, {"lr": cfg["lr"]})))
src = SourceDataset(Images(blob["src_x"], blob["src_y"]))
tgt = TargetDataset(Images(blob["tgt_x"], torch.zeros(len(blob["tgt_x"]), dtype=torch.long)))
train = CombinedSourceAndTargetDataset(src, tgt)
loader = torch.utils.data.DataLoader(train, batch_size=cfg["batch_size"], shuffle=True, drop_last=True,
                                     num_workers=0)
steps, per_epoch = 0, []
t_all = time.perf_counter()
for epoch in range(cfg["epochs"]):
    t0 = time.perf_counter()
    models.train()
    for i, batch in enumerate(loader):
        if i >= cfg["steps_per_epoch"]:
            break
        adapter.training_step(batch)
        steps += 1
    per_epoch.append(time.perf_counter() - t0)
train_s = time.perf_counter() - t_all
models.eval()
ex, ey = blob["eval_x"], blob["eval_y"]
right = 0
with torch.no_grad():
    for s in range(0, len(ex), 1000):
        right += (C(G(ex[s:s + 1000].float() / 255.0)).argmax(1) == ey[s:s + 1000]).sum().item()
print(json.dumps({"train_s": train_s, "epoch_s": per_epoch, "steps": steps, "acc": right / len(ex),
                  "params_G_C": n_params, "len_loader": len(loader)}))
'''


def ensure_peer_env() -> Path:
    """Create ``benchmarks/.venvs/pytorch_adapt`` once; returns its python."""
    py = PEER_ENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *PEER_PACKAGES], check=True)
        site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                              capture_output=True, text=True).stdout.strip()
        (Path(site) / "_shared_torch.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    return py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-steps-per-epoch", type=int, default=0, help="0: whole epochs (937 steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("SHIFTLAB_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--runs-dir", type=Path, default=REPO / "benchmarks" / "runs")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "uda_peer.json")
    ap.add_argument("--no-bf16", action="store_true", help="skip the third run: ours with train.precision=bf16")
    args = ap.parse_args()

    from shiftlab.backbones import create_backbone
    from shiftlab.config import load_recipe
    from shiftlab.experiment.data import build_run_data
    from shiftlab.experiment.report import write_benchmark
    from shiftlab.experiment.run import Experiment, RunOptions

    torch.set_num_threads(args.threads)
    py = ensure_peer_env()
    peer_version = subprocess.run([str(py), "-c", "import pytorch_adapt; print(pytorch_adapt.__version__)"],
                                  check=True, capture_output=True, text=True).stdout.strip()
    ov: dict[str, Any] = {
        "method.name": "dann", "train.epochs": args.epochs, "train.batch_size": 64, "train.lr": 1e-3,
        "train.optimizer": "adam", "method.hparams.disc_input": "features", "method.hparams.disc_hidden": 256,
        "method.hparams.disc_dropout": 0.0, "method.hparams.lambda_schedule": "constant",
        "method.hparams.trade_off": 2.0, "data.eval": [{"name": "mnist_m", "split": "test"}],
    }
    if args.max_steps_per_epoch:
        ov["train.max_steps_per_epoch"] = args.max_steps_per_epoch
    recipe, ov = load_recipe(RECIPE, ov)
    data = build_run_data(recipe, args.seed, args.data_dir)
    assert data.target is not None
    eval_key = recipe.data.eval[0].key
    steps = len(data.train) // 64
    if args.max_steps_per_epoch:
        steps = min(steps, args.max_steps_per_epoch)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    blob = args.runs_dir / "uda-peer-data.pt"
    torch.save({"src_x": data.train.x, "src_y": data.train.y, "tgt_x": data.target.x,
                "eval_x": data.evals[eval_key].x, "eval_y": data.evals[eval_key].y}, blob)
    ours_params = sum(p.numel() for p in create_backbone("dann_cnn", in_chans=3, num_classes=10,
                                                         image_size=32).parameters())

    # ours, through the engine (fresh run folder each time: the comparison is of this run)
    exp = Experiment(recipe, ov, RunOptions(runs_dir=args.runs_dir / "uda-peer", data_dir=args.data_dir,
                                            overwrite=True, progress=False))
    t0 = time.perf_counter()
    ours = exp.run_seed(args.seed)
    ours_wall = time.perf_counter() - t0
    ours_curve = [r["metrics"][f"{eval_key}/acc"] for r in
                  map(json.loads, (exp.run_dir(args.seed) / "results.jsonl").read_text().splitlines())]

    ours16 = None
    if not args.no_bf16:  # ours again with bf16 autocast training (evaluation in float32)
        recipe16, ov16 = load_recipe(RECIPE, {**ov, "train.precision": "bf16"})
        assert recipe16.train.precision == "bf16"
        exp16 = Experiment(recipe16, ov16,
                           RunOptions(runs_dir=args.runs_dir / "uda-peer", data_dir=args.data_dir,
                                      overwrite=True, progress=False))
        ours16 = exp16.run_seed(args.seed)

    cfg = {"data": str(blob), "seed": args.seed, "epochs": args.epochs, "steps_per_epoch": steps,
           "batch_size": 64, "lr": 1e-3, "threads": args.threads}
    t0 = time.perf_counter()
    res = subprocess.run([str(py), "-c", PEER_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    peer_wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"pytorch-adapt side failed:\n{res.stderr[-3000:]}")
    peer = json.loads(res.stdout.strip().splitlines()[-1])
    blob.unlink(missing_ok=True)
    if peer["params_G_C"] != ours_params:
        sys.exit(f"architectures differ: peer {peer['params_G_C']} vs ours {ours_params} parameters")

    rows = [
        {"task": "mnist->mnist_m (real test)", "method": "shiftlab dann", "metric": "accuracy",
         "mean": ours["metrics"][f"{eval_key}/acc"], "ci95": None, "n": 1, "seconds": ours["seconds"],
         "curve": ours_curve, "process_wall_s": ours_wall},
        {"task": "mnist->mnist_m (real test)", "method": "pytorch-adapt DANN", "metric": "accuracy",
         "mean": peer["acc"], "ci95": None, "n": 1, "seconds": peer["train_s"], "epoch_s": peer["epoch_s"],
         "process_wall_s": peer_wall},
    ]
    ratios = {f"DANN training wall-clock, {args.epochs} epoch(s) x {steps} steps, batch 64+64": {
        "ours_s": ours["seconds"], "peer_s": peer["train_s"],
        "note": f"{args.threads} torch thread(s); same network ({ours_params} parameters), objective and optimiser; "
                "both float32"}}
    if ours16 is not None:
        rows.insert(1, {"task": "mnist->mnist_m (real test)", "method": "shiftlab dann, bf16 training",
                        "metric": "accuracy", "mean": ours16["metrics"][f"{eval_key}/acc"], "ci95": None, "n": 1,
                        "seconds": ours16["seconds"]})
        ratios[f"DANN training wall-clock, ours with train.precision=bf16, {args.epochs} epoch(s) x {steps} steps"] = {
            "ours_s": ours16["seconds"], "peer_s": peer["train_s"],
            "note": "ours under bf16 autocast (AVX-512 BF16 CPU; weights, losses and evaluation float32), "
                    "peer float32 as its code does"}
    notes = (f"Seed {args.seed}, one run per side (accuracy differences of a few points between single runs are "
             "within seed noise; see uda.json for seeded CIs). The peer's loader length was "
             f"{peer['len_loader']} batches per epoch, of which {steps} were used, as ours. "
             "Peer fed through SourceDataset/TargetDataset/CombinedSourceAndTargetDataset + DataLoader "
             "(its documented path); ours through the engine (in-memory batches, channels_last).")
    write_benchmark(args.out, "uda_peer", " ".join(["python", *sys.argv]), rows, ratios, notes,
                    {"pytorch-adapt": peer_version})
    print(json.dumps({"ours": {k: ours[k] for k in ("seconds",)}, "ours_acc": rows[0]["mean"],
                      "peer": {k: v for k, v in peer.items()}, "ratio_peer_over_ours": peer["train_s"] / ours["seconds"]},
                     indent=1))


if __name__ == "__main__":
    main()
