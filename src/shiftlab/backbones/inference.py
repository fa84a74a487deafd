"""Fast batched inference of a backbone for scoring passes (data selection, evaluation).

On CPU, PyTorch's eager convolutions re-pack their weights on every call; for the small
digit networks that costs more than the arithmetic. :func:`inference_forward` returns a
function ``x -> (features, logits)`` that, on CPU, runs a TorchScript trace of the model
frozen and passed through ``torch.jit.optimize_for_inference`` (weights pre-packed for
oneDNN, conv + ReLU fused): about 3x faster than eager for LeNet at 128 images per batch on
this machine's CPU (``benchmarks/results/transfer.json`` records the selection overhead it
gives). Building it takes about 20 ms, so it is rebuilt for every scoring pass (the model's
weights change between passes).

A trace is only correct for models without data-dependent control flow, so it is checked
two ways: tracing must not emit a ``TracerWarning`` (the warning PyTorch gives when a forward
turns a tensor into a Python bool or number, i.e. branches on its input's values), and the
first batch is also run eagerly; the trace is used only when features and logits agree
(``rtol=1e-4``, ``atol=1e-5``). Otherwise (a tracing error, a mismatch), on GPUs, and
with ``backend="eager"``, the model runs eagerly. ``InferenceForward.backend`` says which ran.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone

__all__ = ["InferenceBackend", "InferenceForward", "inference_forward"]

log = logging.getLogger(__name__)

InferenceBackend = Literal["auto", "eager"]


class _FeaturesAndLogits(nn.Module):
    def __init__(self, model: Backbone) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.model.forward_features(x)
        return f, self.model.head(f)


class InferenceForward:
    """``self(x: [B, C, H, W]) -> (features [B, D], logits [B, K])`` in eval mode, no grad.

    Attributes:
        backend: ``"jit"`` or ``"eager"``: what runs (decided at the first call).
    """

    def __init__(self, model: Backbone, backend: InferenceBackend = "auto") -> None:
        self.model = model
        self.backend: str = "eager" if backend == "eager" else "undecided"
        self._eager = _FeaturesAndLogits(model)
        self._eager.training = False  # the wrapper only (freezing needs it); __call__ switches the model
        self._traced: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None

    def _decide(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ref = self._eager(x)
        self.backend = "eager"
        if x.device.type != "cpu":
            return ref
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # record them (torch.jit's deprecation notices too)
                traced = torch.jit.trace(self._eager, x, check_trace=False)
                fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                got = fast(x)
        except Exception as e:  # noqa: BLE001 - any tracing failure means: run eagerly
            log.info("scoring runs eagerly: tracing %s failed (%s)", type(self.model).__name__, e)
            return ref
        tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        if tracer:  # the forward reads tensor values in Python: the trace may be wrong for other inputs
            log.info("scoring runs eagerly: %s's forward is data-dependent (%s)", type(self.model).__name__,
                     tracer[0].message)
            return ref
        same = all(
            g.shape == r.shape and torch.allclose(g.float(), r.float(), rtol=1e-4, atol=1e-5)
            for g, r in zip(got, ref, strict=True)
        )
        if not same:
            log.warning("scoring runs eagerly: the traced %s disagrees with the eager model on the first batch",
                        type(self.model).__name__)
            return ref
        self._traced = fast
        self.backend = "jit"
        return ref

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                if self.backend == "undecided":
                    return self._decide(x)
                if self._traced is not None:
                    return self._traced(x)
                return self._eager(x)
        finally:
            self.model.train(was_training)


def inference_forward(model: Backbone, backend: InferenceBackend = "auto") -> InferenceForward:
    """A fast ``x -> (features, logits)`` for ``model`` (see the module docstring).

    Args:
        model: the backbone; its current weights are used (build a new one after training).
        backend: ``auto`` (the optimised trace on CPU when it matches eager, else eager, with
            a log line saying why) or ``eager``.
    """
    return InferenceForward(model, backend)
