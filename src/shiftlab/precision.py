"""Training precision: ``fp32`` (default) or ``bf16`` autocast.

``bf16`` runs the forward passes of :meth:`update` under :func:`torch.autocast` with
``torch.bfloat16``: convolutions and matrix products in bfloat16, reductions, losses and the
weights (and so the optimizer's update) in float32; no loss scaling is needed (bfloat16 has
float32's exponent range). On CPUs with AVX-512 BF16 or AMX (``lscpu`` lists ``avx512_bf16``
/ ``amx_bf16``) and on CUDA GPUs from Ampere on this is the fast path: on this project's CPU
300 Conv-4 ProtoNet episodes train in 25.3 s instead of 69.3 s at the same test accuracy
(``benchmarks/results/fewshot.json``) and 2 DANN epochs in 108.9 s instead of 236.0 s
(``uda_peer.json``; that run's accuracy was lower, so check adversarial methods with seeds);
on CPUs without those instructions it is slower than ``fp32``. Evaluation always runs in
float32.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

__all__ = ["Precision", "train_autocast"]

Precision = Literal["fp32", "bf16"]


def train_autocast(device: torch.device | str, precision: Precision) -> contextlib.AbstractContextManager[object]:
    """The context a training step runs in: a no-op for ``fp32``, bf16 autocast for ``bf16``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
