"""Evaluation with the BatchNorm statistics of a chosen domain (AdaBN).

A network trained with per-domain batch statistics (``domain_forward: separate``)
normalises target images by target statistics while it trains, but its running averages
mix both domains. Evaluating the target with the population statistics of the target's
own unlabelled training images restores the normalisation the network was trained with;
Li, Wang, Shi, Hou & Liu, "Adaptive Batch Normalization for practical domain adaptation",
Pattern Recognition 2018 (AdaBN). Only images are read, never labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from shiftlab.data.tensors import TensorData
from shiftlab.experiment.layout import memory_format
from shiftlab.methods.base import Method
from shiftlab.methods.tta.common import batchnorm_layers

__all__ = ["BN_STAT_IMAGES", "population_batchnorm"]

BN_STAT_IMAGES = 10_000
"""Images (the first ones of the set) whose statistics replace the running averages."""


@contextmanager
def population_batchnorm(
    model: Method | nn.Module,
    images: TensorData,
    batch_size: int,
    device: torch.device,
    channels_last: bool = False,
    max_images: int = BN_STAT_IMAGES,
) -> Iterator[int]:
    """Inside the block, every BatchNorm layer of ``model`` holds the statistics of ``images``.

    The statistics are the average over batches of ``batch_size`` of the per-batch mean and
    (unbiased) variance, with every other layer in eval mode (dropout off), from the first
    ``max_images`` images ``x: [N, C, H, W]``; the network is not otherwise changed. On exit
    the running statistics, momenta and train/eval modes are restored exactly.

    Yields:
        the number of BatchNorm layers whose statistics were replaced (0: nothing to do).
    """
    layers = [m for m in batchnorm_layers(model) if m.track_running_stats]
    if not layers:
        yield 0
        return

    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in layers]
    modes = {m: m.training for m in model.modules()}
    forward = model.predict if isinstance(model, Method) else model
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        subset = images if len(images) <= max_images else images.subset(slice(0, max_images))
        with torch.no_grad():
            for batch in subset.batches(batch_size, device=device):
                if len(batch.x) > 1:
                    forward(memory_format(batch.x, channels_last))
        for m in layers:
            m.eval()
        yield len(layers)
    finally:
        for m, (mean, var, count, momentum) in zip(layers, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
        for m, was in modes.items():
            m.train(was)
