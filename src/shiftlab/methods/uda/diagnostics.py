"""Label-free diagnostics of domain alignment: the proxy A-distance of features.

Ben-David et al., "Analysis of Representations for Domain Adaptation", NeurIPS 2006, and
Ganin et al., JMLR 2016 (sec. 6.1.2): train a linear classifier to tell source from target
features; with its held-out error ``eps``, ``PAD = 2 (1 - 2 eps)``, from 0 (indistinguishable
domains) to 2 (perfectly separable). Target labels are not used.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["proxy_a_distance"]


def proxy_a_distance(source: Tensor, target: Tensor, seed: int = 0) -> float:
    """PAD of ``source: [N, D]`` vs ``target: [M, D]`` features (half of each to fit a
    logistic regression on standardised features, the other half to measure its error).

    Returns:
        ``2 (1 - 2 eps)`` clipped to [0, 2].
    """
    from sklearn.linear_model import LogisticRegression

    if len(source) < 4 or len(target) < 4:
        raise ValueError("proxy_a_distance needs at least 4 source and 4 target features")
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([source, target]).double()
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).long()
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    half = len(x) // 2
    mean, std = x[:half].mean(0), x[:half].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(x[:half].numpy(), y[:half].numpy())
    err = 1.0 - float(clf.score(x[half:].numpy(), y[half:].numpy()))
    return float(min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * err))))
