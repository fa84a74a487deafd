"""Pieces shared by the test-time adaptation methods.

* :class:`BatchNormAdapter`: makes every BatchNorm layer of a network normalise with
  test-batch statistics, optionally mixed with the source (running) statistics as in
  Schneider et al. 2020: ``mu = N/(N+n) mu_source + n/(N+n) mu_batch`` (the same for the
  variance), ``N`` the prior strength and ``n`` the number of test samples. With ``N = 0``
  it is exactly what Tent's ``track_running_stats=False`` training-mode BatchNorm does
  (``F.batch_norm(training=True)``, gradients flow through the batch statistics). The
  source running statistics are never modified.
* :class:`TtaMethod`: the base of the methods here: owns the backbone (always in eval
  mode, so dropout is off), a snapshot of the source state for :meth:`TtaMethod.reset`,
  and the optimizer of the adapted parameters, built from the
  :class:`~shiftlab.optim.OptimizerFactory` it is given (or the paper's default).
* :func:`bn_affine_parameters`, :func:`require_batchnorm`.

Why an instance-level ``forward`` on the BatchNorm layers instead of ``model.train()``
with ``track_running_stats=False`` (Tent's code)? That recipe deletes the running buffers
(so ``state_dict`` changes and :meth:`reset` could not restore them), turns dropout on,
and cannot mix in a prior. Here the layers keep their buffers and parameters (the
``state_dict`` is unchanged), only how they normalise changes, and
:meth:`BatchNormAdapter.remove` restores the plain layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError
from shiftlab.methods.base import TestTimeMethod
from shiftlab.optim import OptimizerFactory

__all__ = [
    "BatchNormAdapter",
    "TtaMethod",
    "batchnorm_layers",
    "bn_affine_parameters",
    "entropy_margin",
    "require_batchnorm",
]


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (1d/2d/3d, SyncBatchNorm) of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def require_batchnorm(model: nn.Module, method: str) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model``; a :class:`~shiftlab.errors.RecipeError` if none.

    Raises:
        RecipeError: naming the method and the backbone class when there is no BatchNorm.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise RecipeError(
            f"method {method!r} adapts BatchNorm layers, but the backbone "
            f"{type(model).__name__} has none. Use a backbone with BatchNorm (e.g. "
            "`dann_cnn` with `norm: true`, or a `resnet_cifar*`), or the `source` method."
        )
    return layers


def bn_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine scale and shift (``weight``, ``bias``) of every BatchNorm layer: Tent's
    adapted parameters (Wang et al. 2021, Sec. 3)."""
    params: list[nn.Parameter] = []
    for layer in batchnorm_layers(model):
        for p in (layer.weight, layer.bias):
            if p is not None:
                params.append(p)
    return params


def entropy_margin(scale: float, num_classes: int) -> float:
    """``E_0 = scale * ln(C)``, the entropy threshold of EATA / SAR (paper: scale 0.4)."""
    return float(scale) * math.log(num_classes)


class _AdaptedForward:
    """The replacement ``forward`` of one BatchNorm layer (see :class:`BatchNormAdapter`)."""

    def __init__(self, layer: _BatchNorm, adapter: BatchNormAdapter) -> None:
        self.layer = layer
        self.adapter = adapter

    def __call__(self, x: Tensor) -> Tensor:
        layer = self.layer
        if not self.adapter.active:
            return F.batch_norm(
                x, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                False, 0.0, layer.eps,
            )
        n = x.shape[0] if self.adapter.count is None else self.adapter.count
        strength = self.adapter.strength
        if strength <= 0 or layer.running_mean is None:
            if x.numel() == x.shape[1]:
                raise RecipeError(
                    f"test-batch BatchNorm statistics need more than one value per channel, but "
                    f"a {type(layer).__name__} got input {tuple(x.shape)} (batch size 1). Use a "
                    "larger test batch, or a prior on the source statistics (norm's "
                    "prior_strength > 0, e.g. 16 as in Schneider et al. 2020)."
                )
            # pure test-batch statistics (biased variance, as training-mode BatchNorm)
            return F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, layer.eps)
        w_src = strength / (strength + n)
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        mean = w_src * layer.running_mean + (1.0 - w_src) * mean
        var = w_src * layer.running_var + (1.0 - w_src) * var
        shape = [1, -1] + [1] * (x.ndim - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + layer.eps)
        if layer.weight is not None:
            y = y * layer.weight.view(shape) + layer.bias.view(shape)
        return y


class BatchNormAdapter:
    """Test-batch BatchNorm statistics for every BatchNorm layer of a model.

    ``mu = w mu_source + (1 - w) mu_batch`` and ``var = w var_source + (1 - w) var_batch``
    with ``w = N / (N + n)`` (Schneider et al., "Improving robustness against common
    corruptions by covariate shift adaptation", NeurIPS 2020, eq. 2). ``N = strength``;
    ``n = count``, or the batch size when ``count is None``. ``strength = 0`` uses the
    batch statistics alone. Statistics are over the batch and spatial dimensions, per
    channel, and gradients flow through them. Layers normalise with the source running
    statistics while :attr:`active` is False.

    Args:
        model: the network; its BatchNorm layers get an instance-level ``forward``.
        strength: prior strength ``N >= 0``.
        count: ``n``, the number of test samples the statistics stand for (MEMO: 1, the one
            test point behind a batch of its augmented copies); ``None``: the batch size.
        method: the method's name, for the error message.

    Raises:
        RecipeError: the model has no BatchNorm layer, or ``strength < 0``.
    """

    def __init__(self, model: nn.Module, strength: float = 0.0, count: int | None = None,
                 method: str = "norm") -> None:
        if strength < 0:
            raise RecipeError(f"method {method!r}: the BatchNorm prior strength must be >= 0, got {strength}")
        self.layers = require_batchnorm(model, method)
        for layer in self.layers:
            if isinstance(layer.__dict__.get("forward"), _AdaptedForward):
                raise RecipeError(
                    f"method {method!r}: the backbone's BatchNorm layers are already adapted by "
                    "another test-time method; give each method its own backbone (copy.deepcopy)."
                )
        self.strength = float(strength)
        self.count = count
        self.active = True
        for layer in self.layers:
            layer.forward = _AdaptedForward(layer, self)  # type: ignore[method-assign]

    def remove(self) -> None:
        """Restore the layers' own ``forward``."""
        for layer in self.layers:
            layer.__dict__.pop("forward", None)


class TtaMethod(TestTimeMethod):
    """Base of the test-time methods: source snapshot, optimizer, exact :meth:`reset`.

    Subclasses call :meth:`_finish_init` at the end of their ``__init__`` (after choosing
    the adapted parameters and installing any :class:`BatchNormAdapter`), and override
    :meth:`_reset_state` for their own running state.

    Attributes:
        default_optimizer: the paper's optimizer, used when none is passed.
        backbone_kind: what backbone the method needs: ``"any"`` :class:`Backbone`, or
            ``"clip"`` (a :class:`~shiftlab.backbones.clip.ClipClassifier`, e.g. ``tpt``).
        opt: the optimizer of :meth:`adapted_parameters` (``None`` when nothing is adapted).
    """

    default_optimizer: ClassVar[OptimizerFactory] = OptimizerFactory()
    backbone_kind: ClassVar[str] = "any"

    def __init__(self, backbone: Backbone, num_classes: int, hparams: Any,
                 optimizer: OptimizerFactory | None = None) -> None:
        super().__init__(backbone, num_classes, hparams)
        self.optimizer_factory = optimizer if optimizer is not None else self.default_optimizer
        self.opt: torch.optim.Optimizer | None = None
        self._source: dict[str, Tensor] = {}
        self.backbone.eval()

    def adapted_parameters(self) -> list[nn.Parameter]:
        """The parameters the method updates (default: none)."""
        return []

    def _freeze_all_but(self, params: list[nn.Parameter]) -> None:
        """``requires_grad`` only on ``params`` (no gradients for the rest of the network)."""
        keep = {id(p) for p in params}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in keep)

    def _finish_init(self) -> None:
        self._source = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self._build_optimizer()
        self._reset_state()

    def _build_optimizer(self) -> None:
        params = self.adapted_parameters()
        self.opt = self.optimizer_factory(params) if params else None

    def _reset_state(self) -> None:
        """Reset method-specific running state (moving averages, generators)."""

    def _step(self, loss: Tensor) -> None:
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def train(self, mode: bool = True) -> TtaMethod:
        """Test-time methods keep the backbone in eval mode (dropout off); BatchNorm
        layers are adapted by :class:`BatchNormAdapter`, not by the training flag."""
        super().train(mode)
        self.backbone.eval()
        return self

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt} if self.opt is not None else {}

    @torch.no_grad()
    def reset(self) -> None:
        """Restore the source weights and buffers exactly, a fresh optimizer (the state
        right after construction) and the method's running state."""
        self.load_state_dict(self._source)
        self._build_optimizer()
        self._reset_state()

    def named_source_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """The snapshot :meth:`reset` restores (``state_dict`` names)."""
        yield from self._source.items()
