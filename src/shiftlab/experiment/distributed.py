"""One run on several processes (devices or hosts): data-parallel training of any
:class:`~shiftlab.methods.base.TrainableMethod`.

``shiftlab run RECIPE --nproc N`` starts ``N`` processes on this machine (``gloo`` on CPU,
``nccl`` on CUDA, one GPU each); ``torchrun --nproc-per-node N -m shiftlab.cli run RECIPE``
(or ``torchrun --nnodes ...`` across hosts) does the same from the environment variables
torchrun sets. Every process holds a full replica of the method and follows the scheme of
PyTorch's ``DistributedDataParallel``:

* the replicas start identical (parameters and buffers broadcast from rank 0);
* each global batch of ``train.batch_size`` items (the recipe's batch size is the *global*
  one, so learning rates and schedules need no change) is split into ``N`` equal shards,
  rank ``r`` taking items ``r, r+N, r+2N, ...`` (a ``DistributedSampler`` over every
  batch; the target batch of a domain pair is split the same way);
* before every optimizer step the gradients are all-reduced and averaged, so each step
  applies the gradient of the whole global batch and the replicas stay identical;
* at the end of every epoch floating-point buffers (BatchNorm running statistics) are
  averaged, where DDP would broadcast rank 0's.

Why not wrap the model in ``torch.nn.parallel.DistributedDataParallel`` itself: a shiftlab
method owns its training step (``update``) and calls its sub-networks several times per step
(source and target passes, a domain discriminator behind gradient reversal, EMA teachers);
DDP hooks into one ``forward`` per step and refuses several. The gradient average is
attached to the method's optimizers instead (:meth:`Distributed.watch`), which gives the
same arithmetic for every method without touching any of them.

Rank 0 alone takes the run folder's lock, evaluates, and writes results, checkpoints and
plots; the other ranks only train. With equal shards and a loss that is a mean over the
batch, a step equals the single-process step up to float rounding; what differs is what
depends on the shard rather than the batch: BatchNorm batch statistics, and batch-level
losses such as MCC's class confusion or entropy minimisation over the batch.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from shiftlab.batches import DomainPair, Labeled
from shiftlab.errors import RecipeError, ShiftlabError

__all__ = ["Distributed", "free_port", "from_env", "spawn"]


@dataclass
class Distributed:
    """This process's place in a data-parallel run (the process group is initialised).

    Attributes:
        rank: global rank (``0`` writes results).
        world_size: number of processes.
        local_rank: rank on this host (picks the GPU).
    """

    rank: int
    world_size: int
    local_rank: int = 0
    _hooked: set[int] = field(default_factory=set, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self, wait: bool = True) -> None:
        """Leave the process group: with ``wait``, first a barrier, so that no rank tears its
        gloo connections down while another still uses them (that aborts the other process:
        "terminate called without an active exception"); ``wait=False`` after a failure."""
        if not dist.is_initialized():
            return
        if wait:
            dist.barrier()
        dist.destroy_process_group()

    # ------------------------------------------------------------------ set-up
    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:<local_rank>``."""
        if device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise RecipeError(
                f"train.batch_size={batch_size} is the global batch and must split evenly over "
                f"--nproc {self.world_size}; use a multiple of {self.world_size}."
            )

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small picklable values: decisions, metrics)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_module(self, module: nn.Module) -> None:
        """Start identical: rank 0's parameters and buffers on every rank."""
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def watch(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Average gradients over ranks before every ``step`` of these optimizers (idempotent:
        call it before each update, so optimizers a method creates mid-run are caught)."""
        for opt in optimizers:
            if id(opt) not in self._hooked:
                opt.register_step_pre_hook(self._average_grads_hook)
                self._hooked.add(id(opt))

    def _average_grads_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        self.average(grads)

    def average(self, tensors: Sequence[Tensor]) -> None:
        """All-reduce and average ``tensors`` in place (one flat buffer per dtype and device)."""
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for ts in groups.values():
            flat = torch.cat([t.reshape(-1) for t in ts])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for t in ts:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running mean/var) over ranks."""
        with torch.no_grad():
            self.average([b for b in module.buffers() if b.is_floating_point()])

    def average_floats(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of per-rank scalars (epoch losses), same keys on every rank."""
        if not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    # ------------------------------------------------------------------ data
    def shard(self, batch: Labeled | DomainPair) -> Labeled | DomainPair:
        """This rank's share of a global batch: items ``rank, rank + N, ...``."""
        r, n = self.rank, self.world_size
        if isinstance(batch, DomainPair):
            src = batch.source
            return DomainPair(Labeled(src.x[r::n], src.y[r::n]), batch.target_x[r::n])
        if isinstance(batch, Labeled):
            return Labeled(batch.x[r::n], batch.y[r::n])
        raise ShiftlabError(f"--nproc cannot shard a {type(batch).__name__} batch.")


def _init(rank: int, world_size: int, local_rank: int, device: str | None) -> Distributed:
    backend = "nccl" if (device or "").startswith("cuda") and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def from_env(device: str | None = None) -> Distributed | None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment): join its process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return _init(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), device)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, device: str | None, threads: int, fn: Callable[[Distributed], None]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    if threads > 0:
        torch.set_num_threads(threads)
    ctx = _init(rank, world, rank, device)
    ok = False
    try:
        fn(ctx)
        ok = True
    finally:
        ctx.close(wait=ok)


def spawn(nproc: int, fn: Callable[[Distributed], None], device: str | None = None, threads: int = 0) -> None:
    """Run ``fn(ctx)`` in ``nproc`` fresh processes on this machine, joined in one process
    group (``threads`` torch threads each; ``0``: the cores divided among them).

    Raises:
        ShiftlabError: a process failed (its error is named; the others are stopped).
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ShiftlabError(f"--nproc must be at least 1, got {nproc}.")
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    try:
        mp.start_processes(_worker, args=(nproc, device, threads, fn), nprocs=nproc, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as exc:
        msg = str(exc).strip().splitlines()
        raise ShiftlabError(f"A process of the --nproc {nproc} run failed: {msg[-1] if msg else exc}") from None
    except mp.ProcessExitedException as exc:
        raise ShiftlabError(f"A process of the --nproc {nproc} run died: {exc}") from None
