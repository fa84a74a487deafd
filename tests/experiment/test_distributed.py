"""Data-parallel runs (``--nproc N`` / torchrun, gloo on CPU): a global batch is split into
equal shards, gradients are averaged before every optimizer step so the replicas stay
identical, only rank 0 writes, and 2 processes give the accuracy of 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from shiftlab.batches import DomainPair, Labeled
from shiftlab.errors import RecipeError
from shiftlab.experiment.distributed import Distributed, free_port
from tests.conftest import write_digits_mlp_recipe

REPO = Path(__file__).resolve().parents[2]
# The tolerance between 1 and 2 processes: the MLP has no BatchNorm and the loss is a batch
# mean, so a 2-process step is the 1-process step up to float rounding in the all-reduce.
TOLERANCE_PP = 0.5


def test_a_global_batch_is_split_into_interleaved_equal_shards() -> None:
    x, y, t = torch.arange(8.0).view(8, 1), torch.arange(8), torch.arange(8.0).view(8, 1) + 100
    parts = [Distributed(rank=r, world_size=2).shard(DomainPair(Labeled(x, y), t)) for r in (0, 1)]
    assert [p.source.y.tolist() for p in parts] == [[0, 2, 4, 6], [1, 3, 5, 7]]  # type: ignore[union-attr]
    assert parts[1].target_x.view(-1).tolist() == [101, 103, 105, 107]  # type: ignore[union-attr]
    with pytest.raises(RecipeError, match="multiple of 3"):
        Distributed(rank=0, world_size=3).check_batch(32)


def _recipe(tmp_path: Path) -> Path:
    return write_digits_mlp_recipe(tmp_path, "ddp", 3, [128, 128], 32)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _accs(run: Path) -> list[float]:
    return [r["metrics"]["digits/test/acc"] for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("how", ["--nproc", "torchrun"])
def test_two_gloo_processes_give_the_accuracy_of_one(tmp_path: Path, how: str) -> None:
    rec = _recipe(tmp_path)
    run = [str(rec), "--seeds", "0", "-q"]
    one = subprocess.run([sys.executable, "-m", "shiftlab.cli", "run", *run, "--runs-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert one.returncode == 0, one.stderr
    if how == "--nproc":
        cmd = [sys.executable, "-m", "shiftlab.cli", "run", *run, "--nproc", "2"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               "-m", "shiftlab.cli", "run", *run]
    two = subprocess.run([*cmd, "--runs-dir", str(tmp_path / "two")], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = (tmp_path / d / "ddp" / "default" / "seed-0" for d in ("one", "two"))
    acc1, acc2 = _accs(a), _accs(b)
    assert len(acc1) == len(acc2) == 3
    assert acc1[-1] > 0.80  # it learned (chance: 10%)
    assert all(abs(p - q) * 100 <= TOLERANCE_PP for p, q in zip(acc1, acc2, strict=True)), (acc1, acc2)
    # rank 0 alone wrote: the same files as a one-process run, and one line per epoch
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())
    assert yaml.safe_load((b / "config.yaml").read_text())["resolved"]["world_size"] == 2
    assert not (b.parent / "seed-0.lock").exists()


_REPLICAS = textwrap.dedent('''
    import sys, torch
    import torch.distributed as dist
    from shiftlab.backbones import create_backbone
    from shiftlab.batches import DomainPair, Labeled
    from shiftlab.experiment.distributed import from_env
    from shiftlab.methods import create_method
    from shiftlab.optim import OptimizerFactory

    ctx = from_env()
    torch.manual_seed(ctx.rank)  # different initial weights on purpose: sync_module must fix them
    net = create_backbone("dann_cnn", in_chans=3, num_classes=10, image_size=28)
    method = create_method("dann", backbone=net, num_classes=10, hparams={},
                           optimizer=OptimizerFactory(name="adam", lr=1e-3))
    ctx.sync_module(method)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        x, t = torch.rand(8, 3, 28, 28, generator=g), torch.rand(8, 3, 28, 28, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        ctx.watch(list(method.optimizers().values()))
        method.set_progress(step / 3)
        method.update(ctx.shard(DomainPair(Labeled(x, y), t)))
    ctx.average_buffers(method)
    flat = torch.cat([p.detach().reshape(-1) for p in method.parameters()]
                     + [b.reshape(-1).double().float() for b in method.buffers() if b.is_floating_point()])
    both = [torch.zeros_like(flat) for _ in range(ctx.world_size)]
    dist.all_gather(both, flat)
    if ctx.rank == 0:
        open(sys.argv[1], "w").write(str((both[0] - both[1]).abs().max().item()))
    ctx.close()  # a barrier, then the group is destroyed (no rank tears down early)
''')


def test_replicas_that_see_different_shards_stay_identical(tmp_path: Path) -> None:
    script, result = tmp_path / "replicas.py", tmp_path / "diff.txt"
    script.write_text(_REPLICAS)
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(result)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    diff = float(result.read_text())
    assert diff == 0.0, f"replicas drifted apart by {diff}"
