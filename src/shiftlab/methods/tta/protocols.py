"""Test-time adaptation protocols and corruption streams.

A *stream* is a sequence of :class:`StreamSegment` (one domain each, e.g. one corruption at
one severity), seen in order. :func:`run_protocol` feeds it to a
:class:`~shiftlab.methods.base.TestTimeMethod` under one of three protocols:

* ``online``: continual adaptation. The method is reset once, before the stream, and
  then adapts batch after batch across all segments (the continual setting of CoTTA and
  of Tent's online evaluation when the stream holds several corruptions).
* ``episodic``: reset before every batch, so each batch is adapted from the source
  model alone (the prediction of a batch does not depend on the other batches).
* ``single``: one sample at a time (batch size 1), reset before each (MEMO's setting).

Accuracy is counted on the logits :meth:`forward_and_adapt` returns for each batch.
:func:`corruption_stream` builds the segments from a labelled dataset with
:func:`shiftlab.data.shifts.apply_shift`, seeded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from shiftlab.data.shifts import apply_shift
from shiftlab.data.tensors import TensorData
from shiftlab.methods.base import TestTimeMethod

__all__ = ["PROTOCOLS", "ProtocolResult", "StreamSegment", "corruption_stream", "run_protocol"]

Protocol = Literal["online", "episodic", "single"]
PROTOCOLS: tuple[str, ...] = ("online", "episodic", "single")


@dataclass(frozen=True)
class StreamSegment:
    """One domain of a test stream.

    Attributes:
        name: e.g. ``"gaussian_noise-5"``.
        x: ``[N, C, H, W]`` float in [0, 1].
        y: ``[N]`` int64 labels (used only to score).
    """

    name: str
    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"segment {self.name}: {self.x.shape[0]} images but {self.y.shape[0]} labels")


@dataclass(frozen=True)
class ProtocolResult:
    """What :func:`run_protocol` measured.

    Attributes:
        protocol: ``online``, ``episodic`` or ``single``.
        batch_size: test batch size (1 for ``single``).
        accuracy: over the whole stream.
        per_segment: accuracy of each segment, by name, in stream order.
        n: number of test samples.
        seconds: wall time of the adaptation loop.
    """

    protocol: str
    batch_size: int
    accuracy: float
    per_segment: dict[str, float] = field(default_factory=dict)
    n: int = 0
    seconds: float = 0.0

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


def corruption_stream(
    data: TensorData,
    corruptions: Sequence[str],
    severities: Sequence[int],
    generator: torch.Generator,
    *,
    limit: int | None = None,
    table: Literal["auto", "cifar", "imagenet"] = "auto",
    chunk: int = 500,
) -> list[StreamSegment]:
    """One segment per (corruption, severity), in that order (corruption-major).

    Args:
        data: labelled test images (uint8 or float ``[N, C, H, W]``).
        corruptions: shift names (``shiftlab list shifts``), e.g. the 15 corruptions.
        severities: e.g. ``[5]`` or ``[1, 2, 3, 4, 5]``.
        generator: the only source of randomness (the corruptions' noise).
        limit: use the first ``limit`` images (all when ``None``).
        table: the corruptions' parameter table (see :mod:`shiftlab.data.shifts`).
        chunk: images corrupted per call (bounds memory).

    Returns:
        Segments named ``"<corruption>-<severity>"``.
    """
    if not corruptions or not severities:
        raise ValueError("corruption_stream: give at least one corruption and one severity")
    x = data.float_x(slice(0, limit))
    y = data.y[:limit]
    segments = []
    for name in corruptions:
        for sev in severities:
            parts = [apply_shift(name, x[i : i + chunk], int(sev), generator, table) for i in range(0, len(x), chunk)]
            segments.append(StreamSegment(f"{name}-{sev}", torch.cat(parts), y.clone()))
    return segments


def run_protocol(
    method: TestTimeMethod,
    stream: Sequence[StreamSegment],
    protocol: Protocol = "online",
    batch_size: int = 64,
) -> ProtocolResult:
    """Run ``method`` over ``stream`` under ``protocol`` and score its predictions.

    Args:
        method: a test-time method (``forward_and_adapt``, ``reset``).
        stream: segments in order; each is cut into consecutive batches of
            ``batch_size`` (the last may be smaller). Batches never mix segments.
        protocol: ``online`` (reset once), ``episodic`` (reset per batch) or ``single``
            (batch size 1, reset per sample).
        batch_size: test batch size (ignored by ``single``).

    Returns:
        A :class:`ProtocolResult`. The method is left in its state after the stream.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use {', '.join(PROTOCOLS)}")
    bs = 1 if protocol == "single" else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = list(method.parameters())
    device = params[0].device if params else torch.device("cpu")
    method.reset()
    correct_all, n_all = 0, 0
    per_segment: dict[str, float] = {}
    start = time.perf_counter()
    for seg in stream:
        correct = 0
        for i in range(0, seg.x.shape[0], bs):
            if protocol != "online":
                method.reset()
            xb = seg.x[i : i + bs].to(device)
            logits = method.forward_and_adapt(xb)
            correct += int((logits.argmax(dim=1).cpu() == seg.y[i : i + bs]).sum())
        per_segment[seg.name] = correct / max(seg.x.shape[0], 1)
        correct_all += correct
        n_all += seg.x.shape[0]
    return ProtocolResult(
        protocol=protocol,
        batch_size=bs,
        accuracy=correct_all / max(n_all, 1),
        per_segment=per_segment,
        n=n_all,
        seconds=time.perf_counter() - start,
    )
