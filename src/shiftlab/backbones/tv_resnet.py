"""torchvision's ResNet-18 as a :class:`~shiftlab.backbones.base.Backbone`.

Built with ``torchvision.models.resnet18(weights=None)``: nothing is ever downloaded. Local
torchvision weights (e.g. ``resnet18-f37072fd.pth`` fetched by the user) load through
``weights_path`` with ``weights_only=True``, a SHA-256 check of the hex in the file name and
strict key/shape checks (see :mod:`shiftlab.backbones.resnet_cifar`).

References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from shiftlab.backbones import BACKBONES
from shiftlab.backbones.base import Backbone
from shiftlab.backbones.resnet_cifar import load_checked, load_weights_file, verify_checksum
from shiftlab.errors import DataError, RecipeError

if TYPE_CHECKING:  # torchvision takes ~1-3 s to import; only resnet18 needs it
    import torchvision

__all__ = ["TvResNet", "resnet18"]

logger = logging.getLogger(__name__)


class TvResNet(Backbone):
    """torchvision ResNet whose ``fc`` is our ``head``; other module names are torchvision's.

    With ``small_input`` the stem is a 3x3 stride-1 convolution without max pooling (the
    usual CIFAR adaptation), so 28/32 px images keep a 4x4 map before ``layer4``'s global
    pooling instead of 1x1.

    Shapes: ``x: [B, C, H, W]`` -> features ``[B, 512]`` -> logits ``[B, num_classes]``.

    Attributes:
        small_input: whether the stem was replaced.
        pretrained_info: ``None``, or ``{"path", "sha256", "head_loaded"}`` after
            ``weights_path`` was loaded.
    """

    def __init__(
        self,
        net: torchvision.models.ResNet,
        in_chans: int,
        num_classes: int,
        image_size: int,
        small_input: bool,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size
        self.small_input = small_input
        self.pretrained_info: dict[str, Any] | None = None
        if small_input or in_chans != 3:
            k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=k, stride=s, padding=p, bias=False)
            nn.init.kaiming_normal_(
                net.conv1.weight, mode="fan_out", nonlinearity="relu"
            )  # as torchvision
        if small_input:
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.avgpool = net.avgpool
        self.num_features = net.fc.in_features
        self.reset_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float -> ``[B, 512]`` (torchvision's forward without ``fc``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def load_torchvision(self, path: Path) -> dict[str, Any]:
        """Load a torchvision ResNet state dict (``fc.*`` -> ``head.*``; ``module.`` stripped).

        The head is loaded when its shape matches (e.g. 1000 ImageNet classes); otherwise the
        body is loaded and the head stays fresh. A state dict nested under ``"state_dict"`` or
        ``"model"`` is accepted.

        Raises:
            DataError: missing file, checksum mismatch, unsafe/corrupt file, wrong keys or
                shapes (e.g. ImageNet weights with ``small_input=True``: the stems differ).
        """
        if not path.is_file():
            raise DataError(f"Weights file {path} does not exist.")
        digest = verify_checksum(path)
        raw = load_weights_file(path)
        for key in ("state_dict", "model"):
            if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
                raw = raw[key]
        if not isinstance(raw, Mapping):
            raise DataError(f"{path} holds no state dict (found {type(raw).__name__}).")
        state: dict[str, Any] = {}
        for key, value in raw.items():
            name = key[len("module.") :] if key.startswith("module.") else key
            if name.startswith("fc."):
                name = "head." + name[len("fc.") :]
            state[name] = value
        head_w = state.get("head.weight")
        head_loaded = (
            isinstance(self.head, nn.Linear)
            and isinstance(head_w, Tensor)
            and head_w.shape == self.head.weight.shape
        )
        if not head_loaded:
            logger.info(
                "%s: head does not fit num_classes; body loaded, head kept fresh", path.name
            )
        load_checked(self, state, source=path, skip_prefixes=() if head_loaded else ("head.",))
        self.pretrained_info = {"path": str(path), "sha256": digest, "head_loaded": head_loaded}
        return self.pretrained_info


@BACKBONES.register(
    "resnet18",
    summary="torchvision ResNet-18 (512 features); small_input=True: 3x3 stem, no maxpool, for 28/32 px",
    paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
)
def resnet18(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    small_input: bool = True,
    weights_path: str | None = None,
) -> TvResNet:
    """torchvision ResNet-18, never downloaded (see :class:`TvResNet`).

    Args:
        in_chans: input channels; a value other than 3 (or ``small_input``) replaces ``conv1``.
        num_classes: head outputs (0: no head).
        image_size: square input side (informational: features are globally pooled; use
            ``small_input=False`` for ImageNet-sized images, >= 32 px).
        small_input: 3x3 stride-1 stem without max pooling, for 28/32 px images.
        weights_path: a local torchvision ResNet-18 state dict to load (weights-only,
            checksum in the file name verified, strict keys/shapes; the head is kept fresh
            when ``num_classes`` differs from the file's). ImageNet weights need
            ``small_input=False`` and ``in_chans=3``.

    Returns:
        A :class:`TvResNet` with ``num_features == 512``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise RecipeError(
            f"resnet18: num_classes must be an integer >= 0 (0: no head), got {num_classes!r}."
        )
    for key, value in (("in_chans", in_chans), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecipeError(f"resnet18: {key} must be a positive integer, got {value!r}.")
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    model = TvResNet(net, in_chans, num_classes, image_size, bool(small_input))
    if weights_path is not None:
        model.load_torchvision(Path(weights_path).expanduser())
    return model
