"""The seeds' **embedding shift**: an autoencoder's code plus an additive shift, decoded.

Paticchio & Scarlatti's transfer-learning study shifts a dataset by passing each image
through an autoencoder trained on the source: the encoder gives a compressed code (the
"embedding"), a constant ``level`` is added to **every value of the code**, and the decoder
renders the shifted image. ``level = 0`` is their "plain" embedding shift: the images
only go through the autoencoder's reconstruction (a mild, learned blur and texture change).

Usage::

    ae, info = train_autoencoder(source_images, AutoencoderConfig(epochs=5), seed=0)
    shift = EmbeddingShift(ae)
    shifted = shift(x, level=2.0)               # x: [B, C, H, W] float in [0, 1]

or with a cache (the weights are stored with their config and a hash of the training
images, and reused when both match)::

    ae, info = cached_autoencoder(source_images, cfg, cache_dir, seed=0)

The code is the output of a convolutional encoder ``[B, code_channels, H/4, W/4]`` with no
activation at the bottleneck; ``info.code_std`` (the standard deviation of the code values
on the training images) says how large a level is relative to the code itself. The decoder
ends in a sigmoid, so shifted images stay in [0, 1].

The shift is registered as ``embedding_shift`` in :data:`shiftlab.data.shifts.SHIFTS` for
``shiftlab list shifts``, tagged ``needs: autoencoder``: unlike the corruptions it cannot be
applied without a trained model, so calling the registry entry directly raises an error
that says how to build one (``kind: transfer`` recipes do it from ``target.shift``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.data.shifts import SHIFTS
from shiftlab.data.tensors import to_float
from shiftlab.errors import ShiftlabError, TrainingError
from shiftlab.io import load_state, save_state
from shiftlab.seeding import epoch_generator, seed_everything

log = logging.getLogger(__name__)

__all__ = [
    "Autoencoder",
    "AutoencoderConfig",
    "AutoencoderInfo",
    "EmbeddingShift",
    "cached_autoencoder",
    "data_hash",
    "train_autoencoder",
]

PAPER = (
    "Paticchio & Scarlatti, 'Improving Domain-specific Transfer Learning Applications for Image "
    "Recognition and Differential Equations', M.Sc. thesis, Politecnico di Milano, 2020"
)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The autoencoder and its training.

    Attributes:
        code_channels: channels of the code ``[code_channels, H/4, W/4]`` (8 at 28 px: 392
            values, half the pixels of a 28x28 digit).
        width: channels of the first encoder convolution (the second has ``2 * width``).
        epochs: training epochs (Adam on the pixel-wise binary cross-entropy of the decoder's
            logits: with a sigmoid output, a squared-error loss lets mostly-black digit images
            collapse to an all-black output from which its gradient cannot recover).
        batch_size: training batch size.
        lr: Adam learning rate.
        limit: train on the first ``limit`` images only (``None``: all).
    """

    code_channels: int = 8
    width: int = 32
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    limit: int | None = None


class Autoencoder(nn.Module):
    """A small convolutional autoencoder for images whose sides are multiples of 4.

    Encoder: ``Conv 3x3 s2 (C -> w) - ReLU - Conv 3x3 s2 (w -> 2w) - ReLU - Conv 3x3
    (2w -> code)``; decoder: ``ConvT 4x4 s2 (code -> 2w) - ReLU - ConvT 4x4 s2 (2w -> w) -
    ReLU - Conv 3x3 (w -> C) - sigmoid``.

    Shapes: ``x: [B, C, H, W]`` in [0, 1] -> code ``[B, code_channels, H/4, W/4]`` -> image
    ``[B, C, H, W]`` in [0, 1].
    """

    def __init__(self, in_chans: int, code_channels: int = 8, width: int = 32) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.encoder = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, code_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code_channels, 2 * width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, in_chans, 3, padding=1),
        )

    def encode(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> code ``[B, code_channels, H/4, W/4]``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """code ``[B, code_channels, H/4, W/4]`` -> ``[B, C, H, W]`` in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def decode_logits(self, z: Tensor) -> Tensor:
        """code -> the decoder's pre-sigmoid output ``[B, C, H, W]`` (the training loss's input)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


@dataclass(frozen=True)
class AutoencoderInfo:
    """What the trained autoencoder is and how well it reconstructs.

    Attributes:
        origin: ``trained`` or ``cached``.
        recon_mse: mean squared reconstruction error on the training images (pixels in [0, 1]).
        code_std: standard deviation of the code values on the training images.
        data_hash: SHA-256 (first 16 hex digits) of the training images.
        train_seconds: training time (of the original training when cached).
        train_images: number of training images.
    """

    origin: str
    recon_mse: float
    code_std: float
    data_hash: str
    train_seconds: float
    train_images: int


def data_hash(x: Tensor) -> str:
    """First 16 hex digits of the SHA-256 of ``x``'s shape, dtype and bytes."""
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"the autoencoder takes images [N, C, H, W] with C = 1 or 3, got {tuple(x.shape)}")
    if x.shape[-1] % 4 or x.shape[-2] % 4:
        raise ValueError(f"the autoencoder needs image sides that are multiples of 4, got {tuple(x.shape[-2:])}")


@torch.no_grad()
def _stats(ae: Autoencoder, x: Tensor, batch: int = 1000) -> tuple[float, float]:
    ae.eval()
    se, n, s1, s2, m = 0.0, 0, 0.0, 0.0, 0
    for i in range(0, len(x), batch):
        xb = to_float(x[i : i + batch])
        z = ae.encode(xb)
        se += float(F.mse_loss(ae.decode(z), xb, reduction="sum"))
        n += xb.numel()
        s1 += float(z.sum())
        s2 += float((z.double() ** 2).sum())
        m += z.numel()
    mean = s1 / m
    return se / n, math.sqrt(max(s2 / m - mean * mean, 0.0))


def train_autoencoder(
    images: Tensor, cfg: AutoencoderConfig, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[Autoencoder, AutoencoderInfo]:
    """Train an autoencoder on ``images`` (``[N, C, H, W]`` uint8 or float in [0, 1]).

    Batches come from generators seeded by ``(seed, epoch)``; the model is returned in eval
    mode on ``device``.

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    _check_images(images)
    x = images[: cfg.limit] if cfg.limit else images
    if len(x) < cfg.batch_size:
        raise ShiftlabError(f"The autoencoder needs at least one batch of {cfg.batch_size} images; got {len(x)}.")
    seed_everything(seed)
    ae = Autoencoder(int(x.shape[1]), cfg.code_channels, cfg.width).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        ae.train()
        order = torch.randperm(len(x), generator=epoch_generator(seed, epoch, 31))
        total, steps = 0.0, 0
        for i in range(0, len(x) - cfg.batch_size + 1, cfg.batch_size):
            xb = to_float(x[order[i : i + cfg.batch_size]]).to(device)
            loss = F.binary_cross_entropy_with_logits(ae.decode_logits(ae.encode(xb)), xb)
            if not torch.isfinite(loss):
                raise TrainingError(f"The autoencoder's loss is {loss.item()} at epoch {epoch + 1}; lower its lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        log.info("autoencoder: epoch %d/%d, bce %.5f", epoch + 1, cfg.epochs, total / max(steps, 1))
    seconds = time.perf_counter() - t0
    ae.cpu()
    mse, std = _stats(ae, x)
    ae.to(device).eval()
    return ae, AutoencoderInfo("trained", mse, std, data_hash(x), seconds, len(x))


def cached_autoencoder(
    images: Tensor, cfg: AutoencoderConfig, cache_dir: str | Path, seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Autoencoder, AutoencoderInfo]:
    """:func:`train_autoencoder`, stored in ``cache_dir`` under a name made of the config,
    the seed and the hash of the training images; a later call with the same three loads it."""
    x = images[: cfg.limit] if cfg.limit else images
    _check_images(x)
    digest = data_hash(x)
    spec = {"config": asdict(cfg), "seed": seed, "data_hash": digest, "shape": list(x.shape[1:])}
    key = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"autoencoder-{key}"
    if path.with_suffix(".json").is_file():
        state = load_state(path)
        if state.get("spec") == spec:
            ae = Autoencoder(int(x.shape[1]), cfg.code_channels, cfg.width)
            ae.load_state_dict(state["weights"])
            i = state["info"]
            return ae.to(device).eval(), AutoencoderInfo("cached", float(i["recon_mse"]), float(i["code_std"]),
                                                        digest, float(i["train_seconds"]), int(i["train_images"]))
        log.info("the cached autoencoder %s is for another spec; training again", path)
    ae, info = train_autoencoder(x, cfg, seed, device)
    save_state(path, {"weights": {k: v.detach().cpu() for k, v in ae.state_dict().items()}, "spec": spec,
                      "info": asdict(info)})
    return ae, info


class EmbeddingShift:
    """Shift images in an autoencoder's code space: ``decode(encode(x) + level)``.

    Args:
        autoencoder: a trained :class:`Autoencoder`.
        batch_size: images per forward pass.
    """

    def __init__(self, autoencoder: Autoencoder, batch_size: int = 1000) -> None:
        self.ae = autoencoder.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, x: Tensor, level: float) -> Tensor:
        """``x: [B, C, H, W]`` float in [0, 1] (uint8 accepted) -> shifted ``[B, C, H, W]``
        float in [0, 1] on ``x``'s device. ``level`` is added to every code value."""
        _check_images(x)
        if x.shape[1] != self.ae.in_chans:
            raise ValueError(f"the autoencoder takes {self.ae.in_chans}-channel images, got {x.shape[1]}")
        dev = next(self.ae.parameters()).device
        out = []
        for i in range(0, len(x), self.batch_size):
            xb = to_float(x[i : i + self.batch_size]).to(dev)
            out.append(self.ae.decode(self.ae.encode(xb) + float(level)).to(x.device))
        return torch.cat(out) if out else to_float(x).clone()


@SHIFTS.register(
    "embedding_shift",
    summary="autoencoder code + additive shift of a chosen level, decoded (needs a trained autoencoder)",
    paper=PAPER,
    family="seed-shift",
    needs="autoencoder",
)
def _embedding_shift_entry(x: Tensor, severity: int, generator: torch.Generator, table: str = "auto") -> Tensor:
    """Registry entry for listing; the shift needs a trained autoencoder (see module doc)."""
    raise ShiftlabError(
        "embedding_shift needs a trained autoencoder: use shiftlab.data.embedding_shift.EmbeddingShift("
        "cached_autoencoder(source_images, AutoencoderConfig(), cache_dir)[0])(x, level), or a kind: transfer "
        "recipe with target.shift: {name: embedding_shift, level: L}."
    )
