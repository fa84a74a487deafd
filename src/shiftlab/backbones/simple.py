"""Small backbones for digits, Omniglot and mini-ImageNet: ``ganin_cnn``, ``dann_cnn``, ``lenet``, ``conv4``, ``mlp``.

Each factory takes keyword-only ``in_chans``, ``num_classes`` and ``image_size`` plus its own
documented options, and returns a :class:`~shiftlab.backbones.base.Backbone` whose
``num_features`` is known at construction (flatten sizes are measured with one dummy
forward pass in eval mode under ``torch.no_grad()``, so no BatchNorm statistics move).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from shiftlab.backbones import BACKBONES
from shiftlab.backbones.base import Backbone
from shiftlab.errors import RecipeError

__all__ = ["GaninCNN", "DannCNN", "LeNet5", "Conv4", "MLP", "ganin_cnn", "dann_cnn", "lenet", "conv4", "mlp"]


def _check_positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecipeError(
                f"Backbone {name!r}: {key} must be a positive integer, got {value!r}."
            )


def _check_classes(name: str, num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise RecipeError(
            f"Backbone {name!r}: num_classes must be an integer >= 0 (0: no head), "
            f"got {num_classes!r}."
        )


def _flat_features(name: str, body: nn.Module, in_chans: int, image_size: int) -> int:
    """Width of ``body(x).flatten(1)`` for ``x: [1, in_chans, image_size, image_size]``.

    Runs once in eval mode (BatchNorm statistics and dropout untouched), then restores the
    module's training flag. A too-small image is a :class:`RecipeError`.
    """
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, in_chans, image_size, image_size))
    except RuntimeError as exc:
        raise RecipeError(
            f"Backbone {name!r} cannot take {in_chans}x{image_size}x{image_size} images "
            f"(image_size too small for its convolutions and poolings): {exc}"
        ) from exc
    finally:
        body.train(was_training)
    width = int(out[0].numel())
    if width == 0:
        raise RecipeError(f"Backbone {name!r}: image_size={image_size} leaves no features.")
    return width


class _ConvThenFC(Backbone):
    """Shared shape of :class:`GaninCNN` and :class:`DannCNN`: ``self.prep`` (a parameter-free
    input transform, usually the identity) then ``self.conv`` (ending in a flatten) is the
    trunk, ``self.fc`` maps it to the features; subclasses set them and ``_trunk_features``."""

    prep: nn.Module
    conv: nn.Sequential
    fc: nn.Sequential
    _trunk_features: int

    @property
    def trunk_features(self) -> int:
        """Flattened convolutional output width."""
        return self._trunk_features

    def forward_trunk(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` -> flattened conv features ``[B, trunk_features]``."""
        return self.conv(self.prep(x))

    def features_from_trunk(self, t: Tensor) -> Tensor:
        """``[B, trunk_features]`` -> ``[B, hidden]``."""
        return self.fc(t)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float -> ``[B, hidden]``."""
        return self.fc(self.forward_trunk(x))


class GaninCNN(_ConvThenFC):
    """The MNIST network of the DANN paper (Ganin & Lempitsky 2015, Ganin et al. 2016, Fig. 4).

    ``Conv(C, 32, 5) - ReLU - MaxPool 2 - Conv(32, 48, 5) - ReLU - MaxPool 2 - flatten``
    is the feature extractor (the trunk, where the paper's gradient reversal layer and domain
    classifier attach); ``Linear(flat, 100) - ReLU - Linear(100, 100) - ReLU`` gives the
    features and the head ``Linear(100, num_classes)`` is the label predictor's last layer.
    With ``norm=True`` a BatchNorm follows each convolution and hidden linear layer (before
    the ReLU), for methods that need batch statistics (AdaMatch's logit interpolation, Tent).
    With ``input_norm=True`` each image is first standardised per channel (zero mean, unit
    variance over its pixels; ``InstanceNorm2d`` without parameters), which removes colour
    and contrast differences between domains before any weight sees them (the input
    normalisation of Shu, Bui, Narui & Ermon, "A DIRT-T Approach to Unsupervised Domain
    Adaptation", ICLR 2018, for digits).

    It costs about a sixth of :class:`DannCNN`'s multiply-adds (5.8 M vs 33 M per 3x32x32
    image: the second convolution runs on the pooled 14x14 map with 48 instead of 64
    filters), which is what makes 40-epoch MNIST -> MNIST-M runs fit on a CPU.

    Shapes: ``x: [B, C, H, W]`` -> trunk ``[B, 48 * s * s]`` (``s = ((H - 4) // 2 - 4) // 2``:
    768 for 28x28, 1200 for 32x32) -> features ``[B, 100]`` -> logits ``[B, num_classes]``.

    References:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
        Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016 (Sec. 5.2.2:
        76.66% on MNIST -> MNIST-M with this network, 52.25% source only).
    """

    def __init__(self, in_chans: int, num_classes: int, image_size: int, hidden: int, norm: bool,
                 input_norm: bool = False) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size

        def bn(c: int, dims: int) -> nn.Module:
            if not norm:
                return nn.Identity()
            return nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c)

        # before the trunk and outside it, so the trunk's state-dict keys do not depend on it
        self.prep = nn.InstanceNorm2d(in_chans, affine=False, track_running_stats=False) if input_norm else nn.Identity()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, 32, kernel_size=5),
            bn(32, 2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),  # pool-then-ReLU: the same function, a quarter of the work
            nn.Conv2d(32, 48, kernel_size=5),
            bn(48, 2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Flatten(1),
        )
        flat = _flat_features("ganin_cnn", self.conv, in_chans, image_size)
        self.fc = nn.Sequential(
            nn.Linear(flat, hidden),
            bn(hidden, 1),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            bn(hidden, 1),
            nn.ReLU(inplace=True),
        )
        self.num_features = hidden
        self._trunk_features = flat
        self.reset_head(num_classes)


class DannCNN(_ConvThenFC):
    """The two-conv CNN of the MNIST -> MNIST-M domain-adaptation study.

    ``Conv(C, 32, 5) - ReLU - Conv(32, 64, 5) - ReLU - MaxPool 2 - Dropout 0.25 - flatten -
    Linear(flat, hidden) - ReLU - Dropout 0.5 - Linear(hidden, hidden) - ReLU`` gives the
    features; the head ``Linear(hidden, num_classes)`` is the third linear layer. With
    ``norm=True`` a BatchNorm2d follows each convolution and a BatchNorm1d each hidden linear
    layer (before the ReLU), which test-time adaptation methods such as Tent need.

    Shapes: ``x: [B, C, H, W]`` -> features ``[B, hidden]`` -> logits ``[B, num_classes]``.
    For 28x28 input the flatten width is 64*10*10 = 6400, for 32x32 it is 64*12*12 = 9216.

    References:
        The base model of YashSharma/MNIST-DomainAdaptation ("2-layer CNN model with ReLU
        activation, Max Pooling, and Dropout layer followed by linear layers"), used there with
        the gradient-reversal branch of Ganin & Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015, and Ganin et al., "Domain-Adversarial Training of Neural
        Networks", JMLR 2016.
    """

    def __init__(
        self, in_chans: int, num_classes: int, image_size: int, hidden: int, norm: bool
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size

        def bn2d(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if norm else nn.Identity()

        def bn1d(c: int) -> nn.Module:
            return nn.BatchNorm1d(c) if norm else nn.Identity()

        self.prep = nn.Identity()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, 32, kernel_size=5),
            bn2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=5),
            bn2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(1),
        )
        flat = _flat_features("dann_cnn", self.conv, in_chans, image_size)
        self.fc = nn.Sequential(
            nn.Linear(flat, hidden),
            bn1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            bn1d(hidden),
            nn.ReLU(inplace=True),
        )
        self.num_features = hidden
        self._trunk_features = flat
        self.reset_head(num_classes)


class LeNet5(Backbone):
    """LeNet-5 style CNN: conv 6@5x5 - pool - conv 16@5x5 - pool - FC 120 - FC 84.

    Modernised as usual (ReLU and max pooling instead of scaled tanh and sub-sampling
    layers; no RBF output). Images smaller than 32 px get a 2-pixel zero padding in the first
    convolution, so a 28x28 digit sees the same geometry as LeCun's 32x32 input
    (flatten width 16*5*5 = 400); larger images are measured.

    Shapes: ``x: [B, C, H, W]`` -> features ``[B, 84]`` -> logits ``[B, num_classes]``.

    References:
        LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document
        Recognition", Proc. IEEE 1998.
    """

    def __init__(self, in_chans: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size
        pad = 2 if image_size < 32 else 0
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(1),
        )
        flat = _flat_features("lenet", self.conv, in_chans, image_size)
        self.fc = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.num_features = 84
        self.reset_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float -> ``[B, 84]``."""
        return self.fc(self.conv(x))


class Conv4(Backbone):
    """The four-block embedding network of Matching and Prototypical Networks.

    Each block is ``Conv 3x3 (padding 1, hidden channels) - BatchNorm - ReLU - MaxPool 2``
    (computed as pool-then-ReLU, which is the same function);
    the output is flattened. With ``hidden=64``: 28x28 -> 64 features (Omniglot),
    84x84 -> 64*5*5 = 1600 features (mini-ImageNet).

    Shapes: ``x: [B, C, H, W]`` -> features ``[B, hidden * (H // 16) * (W // 16)]``.

    References:
        Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016;
        Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    """

    def __init__(self, in_chans: int, num_classes: int, image_size: int, hidden: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size
        blocks: list[nn.Module] = []
        chans = in_chans
        for _ in range(4):
            # ReLU and 2x2 max pooling commute (both monotone), so pooling first gives the same
            # outputs and gradients while the ReLU touches a quarter of the values: ~18% faster
            # training steps in float32 on CPU. Parameter names are those of conv-BN-ReLU-pool.
            blocks += [
                nn.Conv2d(chans, hidden, kernel_size=3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            chans = hidden
        self.encoder = nn.Sequential(*blocks, nn.Flatten(1))
        self.num_features = _flat_features("conv4", self.encoder, in_chans, image_size)
        self.reset_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` float -> ``[B, num_features]``."""
        return self.encoder(x)


class MLP(Backbone):
    """A multi-layer perceptron on flattened images: ``[Linear - ReLU] x len(hidden)``.

    Shapes: ``x: [B, C, H, W]`` -> flatten ``[B, C*H*W]`` -> features ``[B, hidden[-1]]``
    (``[B, C*H*W]`` when ``hidden`` is empty).
    """

    def __init__(
        self, in_chans: int, num_classes: int, image_size: int, hidden: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size
        self.in_features = in_chans * image_size * image_size
        layers: list[nn.Module] = [nn.Flatten(1)]
        width = self.in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.layers = nn.Sequential(*layers)
        self.num_features = width
        self.reset_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` (or ``[B, C*H*W]``) float -> ``[B, num_features]``."""
        return self.layers(x)


@BACKBONES.register(
    "ganin_cnn",
    summary="the DANN paper's MNIST CNN (conv 32/48 5x5 + pools, FC 100/100); ~1/6 of dann_cnn's cost",
    paper="Ganin & Lempitsky, ICML 2015 / Ganin et al., 'Domain-Adversarial Training of Neural Networks', JMLR 2016",
)
def ganin_cnn(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 28,
    hidden: int = 100,
    norm: bool = False,
    input_norm: bool = False,
) -> GaninCNN:
    """The DANN paper's MNIST network (see :class:`GaninCNN`).

    Args:
        in_chans: input channels (3: MNIST is repeated to RGB to match MNIST-M).
        num_classes: head outputs (0: no head, the model returns features).
        image_size: square input side (28 or 32; anything >= 16 works).
        hidden: width of the two hidden linear layers = ``num_features`` (paper: 100).
        norm: add BatchNorm after each convolution and hidden linear layer.
        input_norm: standardise each input image per channel first (DIRT-T's digits input).
    """
    _check_classes("ganin_cnn", num_classes)
    _check_positive("ganin_cnn", in_chans=in_chans, image_size=image_size, hidden=hidden)
    return GaninCNN(in_chans, num_classes, image_size, hidden, bool(norm), bool(input_norm))


@BACKBONES.register(
    "dann_cnn",
    summary="2-conv CNN + 3 linear layers of the MNIST->MNIST-M DANN study (norm=True adds BatchNorm)",
    paper="Ganin & Lempitsky, ICML 2015 / Ganin et al., JMLR 2016; YashSharma/MNIST-DomainAdaptation",
)
def dann_cnn(
    *,
    in_chans: int = 3,
    num_classes: int = 10,
    image_size: int = 28,
    hidden: int = 128,
    norm: bool = False,
) -> DannCNN:
    """The MNIST -> MNIST-M CNN (see :class:`DannCNN`).

    Args:
        in_chans: input channels (3: MNIST is repeated to RGB to match MNIST-M).
        num_classes: head outputs (0: no head, the model returns features).
        image_size: square input side (28 or 32; anything >= 14 works).
        hidden: width of the two hidden linear layers = ``num_features``.
        norm: add BatchNorm after each convolution and hidden linear layer.

    Returns:
        A :class:`DannCNN`; 890,826 parameters for 3x28x28 input with the defaults.
    """
    _check_classes("dann_cnn", num_classes)
    _check_positive("dann_cnn", in_chans=in_chans, image_size=image_size, hidden=hidden)
    return DannCNN(in_chans, num_classes, image_size, hidden, bool(norm))


@BACKBONES.register(
    "lenet",
    summary="LeNet-5 style CNN (conv 6/16 5x5, FC 120/84), 84 features",
    paper="LeCun et al., Gradient-Based Learning Applied to Document Recognition, Proc. IEEE 1998",
)
def lenet(*, in_chans: int = 1, num_classes: int = 10, image_size: int = 28) -> LeNet5:
    """LeNet-5 (see :class:`LeNet5`).

    Args:
        in_chans: input channels.
        num_classes: head outputs (0: no head).
        image_size: square input side (28 or 32; anything >= 16 works).
    """
    _check_classes("lenet", num_classes)
    _check_positive("lenet", in_chans=in_chans, image_size=image_size)
    return LeNet5(in_chans, num_classes, image_size)


@BACKBONES.register(
    "conv4",
    summary="4 x [conv 3x3, BN, ReLU, maxpool] few-shot embedding (64 features at 28 px, 1600 at 84 px)",
    paper="Vinyals et al., NeurIPS 2016; Snell et al., Prototypical Networks, NeurIPS 2017",
)
def conv4(
    *, in_chans: int = 3, num_classes: int = 10, image_size: int = 84, hidden: int = 64
) -> Conv4:
    """The Conv-4 few-shot embedding (see :class:`Conv4`).

    Args:
        in_chans: input channels (1 for Omniglot, 3 for mini-ImageNet).
        num_classes: head outputs (0: no head, as metric-based few-shot methods use it).
        image_size: square input side (>= 16).
        hidden: channels of every convolution.
    """
    _check_classes("conv4", num_classes)
    _check_positive("conv4", in_chans=in_chans, image_size=image_size, hidden=hidden)
    return Conv4(in_chans, num_classes, image_size, hidden)


@BACKBONES.register("mlp", summary="multi-layer perceptron on flattened images")
def mlp(
    *,
    in_chans: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    hidden: Sequence[int] = (256, 256),
) -> MLP:
    """A multi-layer perceptron (see :class:`MLP`).

    Args:
        in_chans: input channels.
        num_classes: head outputs (0: no head).
        image_size: square input side; ``in_features = in_chans * image_size**2``.
        hidden: widths of the hidden layers (a tuple, or a list from YAML); empty for a
            linear model on the pixels.
    """
    if isinstance(hidden, int | str) or not isinstance(hidden, Sequence):
        raise RecipeError(f"Backbone 'mlp': hidden must be a list of widths, got {hidden!r}.")
    widths = tuple(hidden)
    _check_classes("mlp", num_classes)
    _check_positive("mlp", in_chans=in_chans, image_size=image_size)
    _check_positive("mlp", **{f"hidden[{i}]": h for i, h in enumerate(widths)})
    return MLP(in_chans, num_classes, image_size, widths)
