"""CIFAR ResNet-20/32/44/56 with option-A shortcuts, and safe loading of pretrained weights.

The architecture is exactly Yerlan Idelbayev's (akamaster/pytorch_resnet_cifar10), the one
He et al. describe for CIFAR-10: a 3x3 stem with 16 channels, three stages of ``n`` basic
blocks with 16/32/64 channels (stride 2 at the start of stages 2 and 3), parameter-free
option-A shortcuts (stride-2 subsampling and zero-padding of the new channels), global
average pooling and a linear layer. Parameter counts (10 classes): 269,722 / 464,154 / 658,586 / 853,018.

Pretrained weights are the akamaster checkpoints (``torch.save`` dicts with ``state_dict``
and ``best_prec1``). Loading never unpickles arbitrary objects (``weights_only=True``),
checks the file's SHA-256 (the full digest for the four known files, otherwise the hex prefix
in the file name), and checks that every key and shape matches before anything is copied.
The helpers :func:`verify_checksum`, :func:`load_weights_file` and :func:`load_checked`
are shared with :mod:`shiftlab.backbones.tv_resnet`.

References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
    Idelbayev, "Proper ResNet implementation for CIFAR10/CIFAR100 in PyTorch",
    https://github.com/akamaster/pytorch_resnet_cifar10 (BSD-2-Clause).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones import BACKBONES
from shiftlab.backbones.base import Backbone
from shiftlab.data.sources import resolve_data_dir
from shiftlab.errors import DataError, RecipeError

__all__ = [
    "AKAMASTER_FILES",
    "BasicBlock",
    "OptionAShortcut",
    "ResNetCifar",
    "build_resnet_cifar",
    "load_checked",
    "load_weights_file",
    "resnet_cifar20",
    "resnet_cifar32",
    "resnet_cifar44",
    "resnet_cifar56",
    "sha256_file",
    "verify_checksum",
]

logger = logging.getLogger(__name__)

AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"

#: depth -> (file name under ``<data root>/pretrained/``, full SHA-256 of the file).
AKAMASTER_FILES: Mapping[int, tuple[str, str]] = {
    20: (
        "resnet20-12fca82f.th",
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    ),
    32: (
        "resnet32-d509ac18.th",
        "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    ),
    44: (
        "resnet44-014dd654.th",
        "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    ),
    56: (
        "resnet56-4bfd9763.th",
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    ),
}

# ``name-<hex>.ext``: the torch-hub convention, hex = leading characters of the SHA-256.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


# --------------------------------------------------------------------------- loading helpers
def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, expected_sha256: str | None = None) -> str | None:
    """Check a weights file against a SHA-256 (full digest or prefix).

    Args:
        path: the file.
        expected_sha256: hex digest or prefix; when ``None``, the hex after the last ``-`` of
            the file name (``resnet20-12fca82f.th``) is used, as torch hub does.

    Returns:
        The file's full SHA-256, or ``None`` when there was nothing to check against (a
        warning is logged; key and shape checks still apply).

    Raises:
        DataError: the digest does not match (naming the file, expected and actual).
    """
    if expected_sha256 is None:
        m = _HASH_IN_NAME.search(path.name)
        if m is None:
            logger.warning("no checksum known for %s; loading it without integrity check", path)
            return None
        expected_sha256 = m.group(1)
    actual = sha256_file(path)
    if not actual.startswith(expected_sha256.lower()):
        raise DataError(
            f"Checksum mismatch for {path}: expected SHA-256 starting with {expected_sha256}, "
            f"got {actual}. The file is corrupt or truncated; download it again. (If the hex "
            "after the last '-' in its name is not a checksum, rename the file.)"
        )
    return actual


def load_weights_file(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, errors as :class:`DataError`.

    Only tensors and plain containers/scalars are unpickled; a file that needs anything else
    is refused (never retried with ``weights_only=False``).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise DataError(
            f"Cannot load weights from {path} safely (weights_only=True): {exc}. The file is "
            "corrupt, truncated or contains objects other than tensors."
        ) from exc


def load_checked(
    model: nn.Module,
    state: Mapping[str, Any],
    *,
    source: Path,
    skip_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Copy ``state`` into ``model`` after checking every key and shape (strict semantics).

    ``num_batches_tracked`` buffers absent from the file (checkpoints older than PyTorch 0.4.1)
    are allowed and keep their current value; every other parameter and buffer of ``model``
    must be present with the same shape, and the file may hold nothing else.

    Args:
        model: the module to fill.
        state: the file's state dict, keys already renamed to ``model``'s names.
        source: the file, for error messages.
        skip_prefixes: model keys (and file keys) starting with these are neither checked nor
            loaded (e.g. ``("head.",)`` to keep a fresh head).

    Returns:
        The loaded keys.

    Raises:
        DataError: missing or unexpected keys, shape mismatches or non-tensor values.
    """

    def skipped(k: str) -> bool:
        return k.startswith(skip_prefixes) if skip_prefixes else False

    own = {k: v for k, v in model.state_dict().items() if not skipped(k)}
    theirs = {k: v for k, v in state.items() if not skipped(k)}
    missing = sorted(k for k in own if k not in theirs and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in theirs if k not in own)
    if missing or unexpected:
        raise DataError(
            f"Weights in {source} do not match the {type(model).__name__} architecture: "
            f"missing keys {missing or 'none'}; unexpected keys {unexpected or 'none'}."
        )
    bad = [k for k, v in theirs.items() if not isinstance(v, Tensor)]
    if bad:
        raise DataError(f"Weights in {source}: entries {bad} are not tensors.")
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in theirs.items()
        if v.shape != own[k].shape
    ]
    if shapes:
        raise DataError(f"Weights in {source} have the wrong shapes: {'; '.join(shapes)}.")
    result = model.load_state_dict(theirs, strict=False)
    left = [
        k for k in result.missing_keys if not skipped(k) and not k.endswith("num_batches_tracked")
    ]
    if left or result.unexpected_keys:  # cannot happen after the checks above; be strict anyway
        raise DataError(f"Weights in {source}: keys {left + result.unexpected_keys} not loaded.")
    return sorted(theirs)


# --------------------------------------------------------------------------- architecture
class OptionAShortcut(nn.Module):
    """Parameter-free shortcut (He et al.'s option A; akamaster's ``LambdaLayer``).

    ``x: [B, C_in, H, W]`` -> ``x[:, :, ::2, ::2]`` zero-padded to ``[B, C_out, H', W']``
    (``(C_out - C_in) // 2`` channels each side, i.e. ``planes // 4`` when doubling).
    A named module instead of a lambda, so the model pickles and prints.
    """

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad_before = (planes - in_planes) // 2
        self.pad_after = planes - in_planes - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(
            x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_before, self.pad_after), "constant", 0.0
        )

    def extra_repr(self) -> str:
        return f"pad_channels=({self.pad_before}, {self.pad_after}), stride=2"


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convolutions.

    Shapes: ``x: [B, in_planes, H, W]`` -> ``[B, planes, ceil(H / stride), ceil(W / stride)]``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(in_planes, planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


def _weights_init(m: nn.Module) -> None:
    """akamaster's init: Kaiming-normal weights for every Conv2d and Linear."""
    if isinstance(m, nn.Linear | nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)


class ResNetCifar(Backbone):
    """CIFAR ResNet-(6n+2) of He et al. 2016, Sec. 4.2 (akamaster's implementation).

    Module names follow akamaster's (``conv1``, ``bn1``, ``layer1..3``) except the final
    ``linear``, which is our ``head``. At construction every Conv2d and the head get
    akamaster's Kaiming-normal init; a later :meth:`reset_head` uses PyTorch's default
    ``nn.Linear`` init.

    Shapes: ``x: [B, C, H, W]`` (32x32 for CIFAR) -> features ``[B, 64]`` (global average
    pool) -> logits ``[B, num_classes]``.

    Attributes:
        depth: 20, 32, 44 or 56.
        pretrained_info: ``None``, or ``{"path", "sha256", "best_prec1", "head_loaded"}`` of
            the checkpoint that was loaded (``best_prec1``: its CIFAR-10 top-1 accuracy, %).
    """

    def __init__(self, depth: int, in_chans: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise RecipeError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
        n = (depth - 2) // 6
        self.depth = depth
        self.in_chans = in_chans
        self.image_size = image_size
        self.pretrained_info: dict[str, Any] | None = None
        self.conv1 = nn.Conv2d(in_chans, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self._in_planes = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.num_features = 64
        self.reset_head(num_classes)
        self.apply(_weights_init)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float -> ``[B, 64]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # akamaster: F.avg_pool2d(out, out.size()[3]); identical for square maps.
        return out.mean(dim=(2, 3))

    def load_akamaster(self, path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
        """Load an akamaster checkpoint into this model (see :func:`build_resnet_cifar`).

        Keys lose their ``module.`` prefix and ``linear.*`` becomes ``head.*``. The head is
        loaded when it has the checkpoint's shape (10 classes); otherwise it stays fresh.

        Returns:
            The ``pretrained_info`` dict (also stored on the model).

        Raises:
            DataError: missing file, checksum mismatch, unsafe/corrupt pickle, wrong keys or
                shapes.
        """
        if not path.is_file():
            raise DataError(f"Pretrained weights file {path} does not exist.")
        digest = verify_checksum(path, expected_sha256)
        ckpt = load_weights_file(path)
        if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
            raw, best = ckpt["state_dict"], ckpt.get("best_prec1")
        else:
            raw, best = ckpt, None
        if not isinstance(raw, Mapping):
            raise DataError(f"{path} holds no state dict (found {type(raw).__name__}).")
        state: dict[str, Any] = {}
        for key, value in raw.items():
            name = key[len("module.") :] if key.startswith("module.") else key
            if name.startswith("linear."):
                name = "head." + name[len("linear.") :]
            state[name] = value
        head_w = state.get("head.weight")
        head_loaded = (
            isinstance(self.head, nn.Linear)
            and isinstance(head_w, Tensor)
            and head_w.shape == self.head.weight.shape
        )
        if not head_loaded:
            logger.info(
                "%s: checkpoint head %s does not fit num_classes=%s; body loaded, head kept fresh",
                path.name,
                tuple(head_w.shape) if isinstance(head_w, Tensor) else None,
                getattr(self, "num_classes", None),
            )
        load_checked(self, state, source=path, skip_prefixes=() if head_loaded else ("head.",))
        info = {
            "path": str(path),
            "sha256": digest,
            "best_prec1": float(best) if isinstance(best, int | float | Tensor) else None,
            "head_loaded": head_loaded,
        }
        self.pretrained_info = info
        return info


def build_resnet_cifar(
    depth: int,
    in_chans: int,
    num_classes: int,
    image_size: int,
    pretrained: bool | str,
    data_dir: str | None,
) -> ResNetCifar:
    """Build a CIFAR ResNet-``depth`` (akamaster architecture, option-A shortcuts).

    Args:
        depth: 20, 32, 44 or 56 (any 6n+2 without ``pretrained=True``).
        in_chans: input channels (must be 3 with ``pretrained``; 1 works from scratch).
        num_classes: head outputs (0: no head). With ``pretrained`` and ``num_classes != 10``
            the body is loaded and the head stays freshly initialised.
        image_size: square input side (32 for CIFAR; any size runs, the features are
            globally pooled).
        pretrained: ``False``; ``True`` for ``<data root>/pretrained/resnet{depth}-<sha>.th``
            (see :data:`AKAMASTER_FILES`); or a path to an akamaster-format checkpoint.
            Loading is weights-only, checksum-verified and strict about keys and shapes.
        data_dir: data root for ``pretrained=True`` (default ``$SHIFTLAB_DATA`` or
            ``~/.cache/shiftlab``, see :func:`shiftlab.data.sources.resolve_data_dir`).

    Returns:
        A :class:`ResNetCifar` with ``num_features == 64`` and ``pretrained_info``.

    Raises:
        DataError: the weights file is missing, corrupt or does not match.
        RecipeError: invalid arguments (e.g. ``pretrained`` with ``in_chans != 3``).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise RecipeError(
            f"resnet_cifar{depth}: num_classes must be an integer >= 0 (0: no head), got {num_classes!r}."
        )
    for key, value in (("in_chans", in_chans), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecipeError(
                f"resnet_cifar{depth}: {key} must be a positive integer, got {value!r}."
            )
    if (
        pretrained is not False
        and pretrained is not True
        and not isinstance(pretrained, str | os.PathLike)
    ):
        raise RecipeError(
            f"resnet_cifar{depth}: pretrained must be true/false or a file path, got {pretrained!r}."
        )
    if pretrained is not False and in_chans != 3:
        raise RecipeError(
            f"resnet_cifar{depth}: the pretrained CIFAR-10 weights take RGB input; "
            f"in_chans must be 3 (got {in_chans})."
        )
    if pretrained is True and depth not in AKAMASTER_FILES:
        raise RecipeError(
            f"No pretrained weights for CIFAR ResNet-{depth}; known depths: {sorted(AKAMASTER_FILES)}."
        )
    model = ResNetCifar(depth, in_chans, num_classes, image_size)
    if pretrained is True:
        fname, sha = AKAMASTER_FILES[depth]
        path = resolve_data_dir(data_dir) / "pretrained" / fname
        if not path.is_file():
            raise DataError(
                f"Pretrained weights for resnet_cifar{depth} not found: expected {path}. "
                f"Download {AKAMASTER_URL}{fname} into {path.parent} (or point --data-dir / "
                "$SHIFTLAB_DATA at a data root whose pretrained/ folder has it), or pass "
                "pretrained=<path to the file>."
            )
        model.load_akamaster(path, expected_sha256=sha)
    elif pretrained is not False:
        path = Path(pretrained).expanduser()
        known = {name: sha for name, sha in AKAMASTER_FILES.values()}
        model.load_akamaster(path, expected_sha256=known.get(path.name))
    return model


_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (akamaster/pytorch_resnet_cifar10)"


@BACKBONES.register(
    "resnet_cifar20",
    summary="CIFAR ResNet-20 (0.27M params), 64 features; pretrained=True for CIFAR-10 weights",
    paper=_PAPER,
)
def resnet_cifar20(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    pretrained: bool | str = False,
    data_dir: str | None = None,
) -> ResNetCifar:
    """CIFAR ResNet-20 of He et al. 2016 (akamaster architecture), 64 features.

    269,722 parameters with 10 classes; ``pretrained=True`` loads akamaster's CIFAR-10
    weights (91.78% top-1). Arguments as in :func:`build_resnet_cifar`.
    """
    return build_resnet_cifar(20, in_chans, num_classes, image_size, pretrained, data_dir)


@BACKBONES.register(
    "resnet_cifar32",
    summary="CIFAR ResNet-32 (0.46M params), 64 features; pretrained=True for CIFAR-10 weights",
    paper=_PAPER,
)
def resnet_cifar32(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    pretrained: bool | str = False,
    data_dir: str | None = None,
) -> ResNetCifar:
    """CIFAR ResNet-32 of He et al. 2016 (akamaster architecture), 64 features.

    464,154 parameters with 10 classes; ``pretrained=True`` loads akamaster's CIFAR-10
    weights (92.78% top-1). Arguments as in :func:`build_resnet_cifar`.
    """
    return build_resnet_cifar(32, in_chans, num_classes, image_size, pretrained, data_dir)


@BACKBONES.register(
    "resnet_cifar44",
    summary="CIFAR ResNet-44 (0.66M params), 64 features; pretrained=True for CIFAR-10 weights",
    paper=_PAPER,
)
def resnet_cifar44(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    pretrained: bool | str = False,
    data_dir: str | None = None,
) -> ResNetCifar:
    """CIFAR ResNet-44 of He et al. 2016 (akamaster architecture), 64 features.

    658,586 parameters with 10 classes; ``pretrained=True`` loads akamaster's CIFAR-10
    weights (93.14% top-1). Arguments as in :func:`build_resnet_cifar`.
    """
    return build_resnet_cifar(44, in_chans, num_classes, image_size, pretrained, data_dir)


@BACKBONES.register(
    "resnet_cifar56",
    summary="CIFAR ResNet-56 (0.85M params), 64 features; pretrained=True for CIFAR-10 weights",
    paper=_PAPER,
)
def resnet_cifar56(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    pretrained: bool | str = False,
    data_dir: str | None = None,
) -> ResNetCifar:
    """CIFAR ResNet-56 of He et al. 2016 (akamaster architecture), 64 features.

    853,018 parameters with 10 classes; ``pretrained=True`` loads akamaster's CIFAR-10
    weights (93.62% top-1). Arguments as in :func:`build_resnet_cifar`.
    """
    return build_resnet_cifar(56, in_chans, num_classes, image_size, pretrained, data_dir)
