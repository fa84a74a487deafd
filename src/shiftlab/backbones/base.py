"""The backbone contract: ``forward_features(x) -> [B, D]``, ``num_features``, a replaceable head."""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """A feature extractor with a linear classification head.

    Subclasses implement :meth:`forward_features` and set :attr:`num_features` before
    calling :meth:`reset_head`.

    Attributes:
        num_features: D, the width of :meth:`forward_features`' output.
        in_chans: input channels the network expects.
        head: ``nn.Linear(D, num_classes)``, or ``nn.Identity()`` when ``num_classes == 0``.
    """

    num_features: int
    in_chans: int
    head: nn.Module

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float -> features ``[B, D]``."""
        raise NotImplementedError

    @property
    def trunk_features(self) -> int:
        """Width of :meth:`forward_trunk`'s output (``num_features`` unless overridden)."""
        return self.num_features

    def forward_trunk(self, x: Tensor) -> Tensor:
        """The convolutional part's flattened output ``[B, trunk_features]``; backbones
        with fully connected layers after their convolutions override this and
        :meth:`features_from_trunk` (domain discriminators may attach there, as in Ganin
        et al.'s MNIST network). Default: the features themselves."""
        return self.forward_features(x)

    def features_from_trunk(self, t: Tensor) -> Tensor:
        """``forward_features(x) == features_from_trunk(forward_trunk(x))``; default identity."""
        return t

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> logits ``[B, num_classes]`` (features when the head is identity)."""
        return self.head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> None:
        """Replace the head by a fresh ``Linear(num_features, num_classes)`` (identity for 0)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
