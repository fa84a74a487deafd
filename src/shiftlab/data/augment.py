"""Batched, seeded image augmentation on tensors: ``x: [B, C, H, W]`` float in [0, 1].

Every op draws its per-image random parameters for the whole batch at once from an
explicit ``torch.Generator`` (never the global RNG) and then transforms the batch with
vectorised tensor code (gathers, ``grid_sample``, grouped convolutions), so random crop +
colour jitter of 64 RGB 28x28 digits takes about 2-3 ms on one CPU core, against about
20 ms for 64 per-image PIL pipelines (``benchmarks/bench_data_pipeline.py``). The ops are
device-agnostic: the images may live on any device; random numbers are drawn on the
generator's device and moved to the images' device.

CPU threads: a batch of digits is about 10^5 values, too small to gain from intra-op
threads. On a machine whose cores are shared with other jobs, two OpenMP threads stall on
every small op (10-100x slower in our measurements), so callers preparing batches on CPU
should do it with one torch thread (``torch.set_num_threads(1)`` around batch preparation,
restored for the training step); nothing here changes thread settings (no global state).

Why not ``torchvision.transforms.v2`` or kornia on the batch? torchvision's v2 transforms
draw **one** set of parameters per call (the whole batch gets the same crop and the same
jitter factors) and use the global RNG; kornia is not a dependency of shiftlab. The
semantics here follow torchvision's per-image transforms (same parameter ranges, same
colour formulas; :func:`adjust_color` reproduces ``torchvision.transforms.v2.functional``'s
``adjust_brightness/contrast/saturation/hue`` for given factors), so a recipe written for
``transforms.ColorJitter`` means the same thing here.

Ops: :func:`random_crop`, :func:`random_resized_crop`, :func:`hflip`,
:func:`color_jitter` (with :func:`adjust_color` for explicit factors),
:func:`random_grayscale`, :func:`gaussian_blur`, :func:`solarize`; AugMix
(:func:`augmix`, with its ops :func:`autocontrast`, :func:`equalize`, :func:`posterize`,
:func:`solarize_levels`, :func:`affine_pixels`), used by MEMO.
Pipelines: :class:`AugmentConfig` (a frozen description) -> :class:`Augment` (the steps,
``apply(x, generator)``); :class:`TwoViewAugment` for self-supervised pairs. Presets:
:func:`digits_uda`, :func:`byol_small` and :func:`byol_digits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from shiftlab.batches import Views

__all__ = [
    "Augment",
    "AugmentConfig",
    "AugmentStep",
    "TwoViewAugment",
    "adjust_color",
    "byol_digits",
    "byol_small",
    "color_jitter",
    "digits_uda",
    "gaussian_blur",
    "hflip",
    "random_crop",
    "random_grayscale",
    "random_resized_crop",
    "solarize",
    "cutout",
    "digits_strong",
    "AUGMIX_OPS",
    "affine_pixels",
    "augmix",
    "autocontrast",
    "equalize",
    "posterize",
    "solarize_levels",
]

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses them.
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)

Range = tuple[float, float]


# --------------------------------------------------------------------------- helpers
def _check_images(x: Tensor, op: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected images [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: expected float images in [0, 1], got {x.dtype} (use to_float)")


def _check_p(p: float, op: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be in [0, 1], got {p}")


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``[n]`` uniform in [0, 1) drawn from ``generator`` on its device, moved to ``device``."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _mask(n: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """``[n]`` bool, each True with probability ``p`` (one draw per image)."""
    return _rand(n, generator, device) < p


def _pair(size: int | Sequence[int], op: str) -> tuple[int, int]:
    if isinstance(size, int):
        out = (size, size)
    else:
        out = tuple(int(s) for s in size)
        if len(out) != 2:
            raise ValueError(f"{op}: size must be an int or (height, width), got {size!r}")
    if min(out) < 1:
        raise ValueError(f"{op}: size must be positive, got {size!r}")
    return out  # type: ignore[return-value]


def _factor_range(
    value: float | Sequence[float], name: str, center: float, bound: Range
) -> Range | None:
    """torchvision's ColorJitter convention: ``v`` -> ``[center - v, center + v]`` (clipped at 0
    for multiplicative factors), a pair is taken as is; ``None`` when the range is the identity."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"color_jitter: {name} must be non-negative, got {value}")
        low, high = center - float(value), center + float(value)
        if center == 1.0:
            low = max(low, 0.0)
    else:
        if len(value) != 2:
            raise ValueError(
                f"color_jitter: {name} must be a number or a (min, max) pair, got {value!r}"
            )
        low, high = float(value[0]), float(value[1])
    if not bound[0] <= low <= high <= bound[1]:
        raise ValueError(
            f"color_jitter: {name} range must lie in {bound} and increase, got ({low}, {high})"
        )
    if low == high == center:
        return None
    return low, high


def _as_factor(f: float | Tensor | None, n: int, x: Tensor) -> Tensor | None:
    """A scalar or ``[n]`` factor as a ``[n, 1, 1, 1]`` tensor on ``x``'s device and dtype."""
    if f is None:
        return None
    t = torch.as_tensor(f, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(
            f"adjust_color: a factor must be a scalar or [B={n}], got shape {tuple(t.shape)}"
        )
    return t.view(n, 1, 1, 1)


# --------------------------------------------------------------------------- geometry
def random_crop(
    x: Tensor,
    size: int | Sequence[int] | None,
    padding: int,
    generator: torch.Generator,
    fill: float = 0.0,
) -> Tensor:
    """Pad by ``padding`` (constant ``fill``), then cut a random ``size`` window per image.

    Same distribution as ``torchvision.transforms.RandomCrop(size, padding, fill=fill)``
    applied image by image: the offsets are uniform over all windows of the padded image.
    One ``gather`` over the flattened padded batch does all crops at once.

    Args:
        x: ``[B, C, H, W]`` float images.
        size: output side (int) or ``(h, w)``; ``None`` keeps ``(H, W)``.
        padding: pixels added on every side before cropping (``>= 0``).
        generator: RNG for the per-image offsets (2 draws per image).
        fill: value of the padded pixels.

    Returns:
        ``[B, C, h, w]``, same dtype and device.
    """
    _check_images(x, "random_crop")
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    b, c, height, width = x.shape
    h, w = (height, width) if size is None else _pair(size, "random_crop")
    if padding:
        x = F.pad(x, (padding, padding, padding, padding), mode="constant", value=float(fill))
    hp, wp = height + 2 * padding, width + 2 * padding
    if h > hp or w > wp:
        raise ValueError(f"random_crop: crop {h}x{w} larger than padded image {hp}x{wp}")
    u = torch.rand(2, b, generator=generator, device=generator.device).to(x.device)
    top = (u[0] * (hp - h + 1)).long().clamp_(max=hp - h)
    left = (u[1] * (wp - w + 1)).long().clamp_(max=wp - w)
    rows = top[:, None] + torch.arange(h, device=x.device)  # [B, h]
    cols = left[:, None] + torch.arange(w, device=x.device)  # [B, w]
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(x.reshape(b, c, hp * wp), 2, index).view(b, c, h, w)


def _resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Range,
    ratio: Range,
    generator: torch.Generator,
    device: torch.device,
    tries: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image ``(top, left, h, w)`` exactly as torchvision's ``RandomResizedCrop.get_params``,
    vectorised: ``tries`` candidate boxes per image, the first that fits wins, else the
    centre-crop fallback. Returns four ``[n]`` float tensors (pixels)."""
    g = generator.device
    area = float(height * width)
    target = (
        torch.rand(n, tries, generator=generator, device=g).mul_(scale[1] - scale[0]).add_(scale[0])
        * area
    )
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(
        torch.rand(n, tries, generator=generator, device=g).mul_(log_hi - log_lo).add_(log_lo)
    )
    offsets = torch.rand(2, n, generator=generator, device=g)
    target, aspect, offsets = target.to(device), aspect.to(device), offsets.to(device)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.int().argmax(dim=1, keepdim=True)  # first fitting try (0 when none fits)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    found = ok.any(dim=1)
    # centre-crop fallback (torchvision's, for when no try fits)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = float(width), float(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = float(round(height * max(ratio))), float(height)
    else:
        fw, fh = float(width), float(height)
    h = torch.where(found, h, torch.full_like(h, fh))
    w = torch.where(found, w, torch.full_like(w, fw))
    top = torch.floor(offsets[0] * (height - h + 1)).clamp_(max=height - h)
    left = torch.floor(offsets[1] * (width - w + 1)).clamp_(max=width - w)
    top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
    return top, left, h, w


def random_resized_crop(
    x: Tensor,
    size: int | Sequence[int],
    scale: Range = (0.08, 1.0),
    ratio: Range = (3.0 / 4.0, 4.0 / 3.0),
    *,
    generator: torch.Generator,
) -> Tensor:
    """Crop a random box per image (area fraction in ``scale``, aspect in ``ratio``) and
    resize it to ``size``, like ``torchvision.transforms.RandomResizedCrop``.

    The boxes follow torchvision's sampling exactly (10 tries, then a centre crop). The
    resize is bilinear through ``F.grid_sample`` with one affine grid per image (pixel
    centres mapped as ``F.interpolate(..., align_corners=False)`` does), all images in one
    call. Differences from torchvision: no antialiasing when a box is *shrunk* (torchvision
    antialiases; for digits-sized images boxes are mostly enlarged, where both agree), and
    at the box's edge the interpolation may use the pixel just outside the box instead of
    clamping to the box.

    Args:
        x: ``[B, C, H, W]`` float images.
        size: output side (int) or ``(h, w)``.
        scale: range of the box area as a fraction of the image area.
        ratio: range of the box aspect ratio ``w / h`` (sampled log-uniformly).
        generator: RNG for the boxes (22 draws per image).

    Returns:
        ``[B, C, h, w]`` float, same device.
    """
    _check_images(x, "random_resized_crop")
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"random_resized_crop: bad scale {scale} or ratio {ratio}")
    b, c, height, width = x.shape
    oh, ow = _pair(size, "random_resized_crop")
    top, left, h, w = _resized_crop_boxes(b, height, width, scale, ratio, generator, x.device)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    # normalised source coordinate = box_scale * output_base + shift (align_corners=False)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def hflip(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability ``p`` (``RandomHorizontalFlip``).

    Args:
        x: ``[B, C, H, W]`` images.
        p: flip probability per image.
        generator: RNG (1 draw per image).

    Returns:
        ``[B, C, H, W]``.
    """
    _check_images(x, "hflip")
    _check_p(p, "hflip")
    mask = _mask(x.shape[0], p, generator, x.device).to(x.dtype).view(-1, 1, 1, 1)
    return _blend_mask(mask, x.flip(-1), x)


# --------------------------------------------------------------------------- colour
def _grey(x: Tensor) -> Tensor:
    """``[B, 3, H, W]`` -> ``[B, 1, H, W]`` luma (torchvision's weights)."""
    r, g, b = x.unbind(dim=1)
    return (r * _GREY_WEIGHTS[0] + g * _GREY_WEIGHTS[1] + b * _GREY_WEIGHTS[2]).unsqueeze(1)


def _blend_mask(m: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` where ``m == 1``, ``b`` where ``m == 0`` (``m`` float in {0, 1}, broadcastable).

    Exact for 0/1 masks (``1 * a + 0 * b == a``); used instead of ``torch.where`` on
    image-sized tensors, which is several times slower on CPU than three arithmetic ops.
    """
    return a * m + b * (1.0 - m)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images by ``shift`` (fraction of the colour circle).

    Same result as torchvision's ``adjust_hue`` (RGB -> HSV, ``h = (h + shift) mod 1``,
    HSV -> RGB) up to float rounding (about 1e-6), computed without building the HSV
    image: with ``v = max(r, g, b)``, chroma ``c = v - min(r, g, b)`` and the hue in sixths
    ``h6``, each output channel is ``v - c * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + h6 + 6 shift) mod 6`` and ``n = 5, 3, 1`` for red, green, blue (the closed
    form of the HSV -> RGB map). Only float arithmetic (no boolean tensors or
    ``torch.where``, which are slow on CPU).

    Args:
        x: ``[B, 3, H, W]`` float in [0, 1].
        shift: ``[B, 1, 1, 1]`` hue shifts.

    Returns:
        ``[B, 3, H, W]`` float in [0, 1].
    """
    r, g, b = x.movedim(1, 0).contiguous()  # each [B, H, W]
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    # 0/1 indicators of the channel holding the maximum (ties: red, then green), as floats
    is_r = torch.sign(r - v).add_(1.0)
    is_g = torch.sign(g - v).add_(1.0).mul_(1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    # hue in sixths, in [-1, 5): (g-b)/c for red max, (b-r)/c + 2 for green, (r-g)/c + 4 for blue
    h6 = (is_r * (g - b) + is_g * (b - r + 2.0 * c) + is_b * (r - g + 4.0 * c)) / c.clamp(min=1e-12)
    h6 = (h6 + 6.0 * shift.view(-1, 1, 1)).unsqueeze(1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = h6 + n  # [B, 3, H, W]
    k = k - 6.0 * torch.floor(k * (1.0 / 6.0))  # mod 6 (faster than torch.remainder)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(v.unsqueeze(1), c.unsqueeze(1), w, value=-1.0).clamp_(0.0, 1.0)


# operation codes of adjust_color's ``order``
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


def adjust_color(
    x: Tensor,
    brightness: float | Tensor | None = None,
    contrast: float | Tensor | None = None,
    saturation: float | Tensor | None = None,
    hue: float | Tensor | None = None,
    order: Tensor | None = None,
) -> Tensor:
    """Deterministic colour adjustment with explicit (per-image) factors.

    For scalar factors this equals ``torchvision.transforms.v2.functional``'s
    ``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation`` and ``adjust_hue``
    applied in ``order``, each result clamped to [0, 1] (hue to float rounding, about
    1e-6). Saturation and hue leave 1-channel images unchanged (as torchvision/PIL do).
    :func:`color_jitter` draws the factors and calls this.

    Implementation: brightness, contrast and saturation are all blends
    ``a * x + (1 - a) * ref`` (``ref`` = 0, the image's mean grey level, the grey image), so
    each of the four order slots is one blend over the whole batch, each image with its own
    ``a`` and ``ref`` (``a = 1``, the identity, for an image whose op in that slot is hue or
    a skipped op); the hue rotation then runs on the images whose op in that slot is hue.

    Args:
        x: ``[B, C, H, W]`` float in [0, 1], ``C`` in {1, 3}.
        brightness: multiplicative factor(s) ``>= 0``: scalar or ``[B]``; ``None`` skips.
        contrast: blend factor(s) with the per-image mean grey level; ``None`` skips.
        saturation: blend factor(s) with the grey image; ``None`` skips.
        hue: shift(s) of the hue in [-0.5, 0.5] (fraction of the colour circle); ``None`` skips.
        order: ``[B, 4]`` int64, each row a permutation of ``0..3`` (0 brightness,
            1 contrast, 2 saturation, 3 hue) giving each image's order of operations;
            ``None``: brightness, contrast, saturation, hue for every image.

    Returns:
        ``[B, C, H, W]`` float in [0, 1].
    """
    _check_images(x, "adjust_color")
    n, c = x.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"adjust_color: images must have 1 or 3 channels, got {c}")
    fb, fc, fs, fh = (_as_factor(f, n, x) for f in (brightness, contrast, saturation, hue))
    if c == 1:
        fs = fh = None
    # Hue rotation is the identity on achromatic images (r = g = b, e.g. grey digits repeated
    # to RGB), and brightness, contrast and saturation keep them achromatic: skip it there.
    colourful: Tensor | None = None
    if fh is not None:
        colourful = ((x[:, 0] != x[:, 1]) | (x[:, 1] != x[:, 2])).flatten(1).any(dim=1)  # [B]
        if not bool(colourful.any()):
            fh = None
        elif bool(colourful.all()):
            colourful = None
    if fb is None and fc is None and fs is None and fh is None:
        return x
    if order is None:  # fixed order: plain ops, no per-image selection
        if fb is not None:
            x = (x * fb).clamp_(0.0, 1.0)
        if fc is not None:
            grey = _grey(x) if c == 3 else x
            x = torch.addcmul(grey.mean(dim=(1, 2, 3), keepdim=True) * (1.0 - fc), x, fc).clamp_(
                0.0, 1.0
            )
        if fs is not None:
            x = torch.addcmul(_grey(x) * (1.0 - fs), x, fs).clamp_(0.0, 1.0)
        if fh is not None:
            if colourful is None:
                x = _shift_hue(x, fh)
            else:
                idx = colourful.nonzero().squeeze(1)
                x = x.index_copy(0, idx, _shift_hue(x.index_select(0, idx), fh.index_select(0, idx)))
        return x
    if order.shape != (n, 4):
        raise ValueError(f"adjust_color: order must be [B={n}, 4], got {tuple(order.shape)}")
    order = order.to(x.device).view(n, 4, 1, 1, 1)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    owned = False  # whether x is a tensor made here (safe to write in place)
    for slot in range(4):
        op = order[:, slot]  # [B, 1, 1, 1]
        a = one
        if fb is not None:
            a = torch.where(op == _BRIGHTNESS, fb, a)
        use_c = fc is not None and bool((op == _CONTRAST).any())
        use_s = fs is not None and bool((op == _SATURATION).any())
        if use_c:
            a = torch.where(op == _CONTRAST, fc, a)
        if use_s:
            a = torch.where(op == _SATURATION, fs, a)
        if fb is not None or use_c or use_s:
            # a * x + (1 - a) * ref with ref = 0 (brightness, identity), the mean grey level
            # (contrast) or the grey image (saturation); a = 1 for every other image
            if use_c or use_s:
                grey = _grey(x) if c == 3 else x
                ref = torch.zeros((), dtype=x.dtype, device=x.device)
                if use_c:
                    ref = torch.where(op == _CONTRAST, grey.mean(dim=(1, 2, 3), keepdim=True), ref)
                if use_s:
                    ref = ref + grey * (op == _SATURATION).to(x.dtype)
                x = torch.addcmul(ref * (1.0 - a), x, a)
            else:
                x = x * a
            x = x.clamp_(0.0, 1.0)
            owned = True
        if fh is not None:
            is_hue = op.view(n) == _HUE
            if colourful is not None:
                is_hue = is_hue & colourful
            idx = is_hue.nonzero().squeeze(1)
            if idx.numel() == n:
                x = _shift_hue(x, fh)
                owned = True
            elif idx.numel():
                hued = _shift_hue(x.index_select(0, idx), fh.index_select(0, idx))
                x = x.index_copy_(0, idx, hued) if owned else x.index_copy(0, idx, hued)
                owned = True
    return x


def color_jitter(
    x: Tensor,
    brightness: float | Sequence[float],
    contrast: float | Sequence[float],
    saturation: float | Sequence[float],
    hue: float | Sequence[float],
    generator: torch.Generator,
    p: float = 1.0,
    random_order: bool = True,
) -> Tensor:
    """``torchvision.transforms.ColorJitter`` with independent factors for every image.

    A number ``v`` means a factor uniform in ``[max(0, 1 - v), 1 + v]`` (hue: a shift
    uniform in ``[-v, v]``, ``v <= 0.5``); a pair ``(lo, hi)`` is taken as the range. Like
    torchvision each image gets its own random order of the four operations
    (``random_order=False``: brightness, contrast, saturation, hue). On 1-channel images
    only brightness and contrast act. With ``p < 1`` (``RandomApply``) each image is jittered
    with probability ``p`` and otherwise left unchanged.

    Args:
        x: ``[B, C, H, W]`` float in [0, 1], ``C`` in {1, 3}.
        brightness: strength or range of the brightness factor.
        contrast: strength or range of the contrast factor.
        saturation: strength or range of the saturation factor.
        hue: strength (``<= 0.5``) or range (within [-0.5, 0.5]) of the hue shift.
        generator: RNG (9 draws per image: p, 4 factors, 4 for the order).
        p: probability that an image is jittered.
        random_order: per-image random order of the four operations (torchvision's).

    Returns:
        ``[B, C, H, W]`` float in [0, 1].
    """
    _check_images(x, "color_jitter")
    _check_p(p, "color_jitter")
    ranges = (
        _factor_range(brightness, "brightness", 1.0, (0.0, math.inf)),
        _factor_range(contrast, "contrast", 1.0, (0.0, math.inf)),
        _factor_range(saturation, "saturation", 1.0, (0.0, math.inf)),
        _factor_range(hue, "hue", 0.0, (-0.5, 0.5)),
    )
    n = x.shape[0]
    g = generator.device
    draws = torch.rand(5, n, generator=generator, device=g).to(x.device)
    order = (
        torch.rand(n, 4, generator=generator, device=g).argsort(dim=1).to(x.device)
        if random_order
        else None
    )
    factors = [
        None if r is None else draws[i + 1].mul(r[1] - r[0]).add_(r[0])
        for i, r in enumerate(ranges)
    ]
    if all(f is None for f in factors):
        return x
    if p >= 1.0:
        return adjust_color(x, *factors, order=order)
    idx = (draws[0] < p).nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    sub = adjust_color(
        x.index_select(0, idx),
        *(None if f is None else f.index_select(0, idx) for f in factors),
        order=None if order is None else order.index_select(0, idx),
    )
    return x.index_copy(0, idx, sub)


def random_grayscale(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Turn each RGB image grey (3 equal channels) with probability ``p`` (``RandomGrayscale``).

    1-channel images are returned unchanged.

    Args:
        x: ``[B, C, H, W]`` float images.
        p: probability per image.
        generator: RNG (1 draw per image).

    Returns:
        ``[B, C, H, W]``.
    """
    _check_images(x, "random_grayscale")
    _check_p(p, "random_grayscale")
    mask = _mask(x.shape[0], p, generator, x.device).to(x.dtype).view(-1, 1, 1, 1)
    if x.shape[1] != 3:
        return x
    return _blend_mask(mask, _grey(x), x)


def _default_kernel_size(height: int, width: int) -> int:
    """About 10% of the image side, odd, at least 3 (BYOL: 23 px for 224 px images)."""
    k = max(3, int(0.1 * min(height, width)))
    return k if k % 2 == 1 else k + 1


def gaussian_blur(
    x: Tensor,
    sigma: Range,
    p: float,
    generator: torch.Generator,
    kernel_size: int | None = None,
) -> Tensor:
    """Blur each image with probability ``p`` by a Gaussian of its own ``sigma``.

    Per image ``sigma ~ U(sigma[0], sigma[1])`` (as ``torchvision.transforms.GaussianBlur``),
    kernel truncated to ``kernel_size`` taps, reflect padding. The blur is separable and
    runs as two grouped convolutions over the whole batch (one group per image channel,
    each with its image's kernel).

    Args:
        x: ``[B, C, H, W]`` float images.
        sigma: ``(min, max)`` standard deviation in pixels, ``min > 0``.
        p: probability that an image is blurred.
        generator: RNG (2 draws per image).
        kernel_size: odd number of taps; ``None``: about 10% of the image side, odd, >= 3.

    Returns:
        ``[B, C, H, W]``.
    """
    _check_images(x, "gaussian_blur")
    _check_p(p, "gaussian_blur")
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"gaussian_blur: sigma must be 0 < min <= max, got {sigma}")
    b, c, height, width = x.shape
    k = _default_kernel_size(height, width) if kernel_size is None else int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd and positive, got {k}")
    draws = torch.rand(2, b, generator=generator, device=generator.device).to(x.device)
    idx = (draws[0] < p).nonzero().squeeze(1)
    if idx.numel() == 0 or k == 1:
        return x
    n = idx.numel()
    sig = draws[1].index_select(0, idx).mul(sigma[1] - sigma[0]).add_(sigma[0]).to(x.dtype)
    half = (k - 1) / 2
    taps = torch.linspace(-half, half, k, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sig[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [n*C, k]
    sub = x if n == b else x.index_select(0, idx)
    pad = k // 2
    if pad >= min(height, width):
        raise ValueError(f"gaussian_blur: kernel_size {k} too large for {height}x{width} images")
    z = F.pad(sub.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    z = F.conv2d(z, kernel.view(n * c, 1, 1, k), groups=n * c)
    z = F.conv2d(z, kernel.view(n * c, 1, k, 1), groups=n * c)
    z = z.view(n, c, height, width)
    return z if n == b else x.index_copy(0, idx, z)


def solarize(x: Tensor, threshold: float, p: float, generator: torch.Generator) -> Tensor:
    """With probability ``p`` per image, invert the pixels ``>= threshold`` (``RandomSolarize``).

    Args:
        x: ``[B, C, H, W]`` float in [0, 1].
        threshold: pixels at or above it become ``1 - value``.
        p: probability per image.
        generator: RNG (1 draw per image).

    Returns:
        ``[B, C, H, W]``.
    """
    _check_images(x, "solarize")
    _check_p(p, "solarize")
    mask = _mask(x.shape[0], p, generator, x.device).to(x.dtype).view(-1, 1, 1, 1)
    # 0/1 float indicator of x >= threshold (sign is -1, 0, 1), times the per-image mask
    above = torch.sign(x - threshold).add_(1.0).clamp_(max=1.0).mul_(mask)
    return _blend_mask(above, 1.0 - x, x)


def cutout(x: Tensor, size: int, p: float, generator: torch.Generator, fill: float = 0.5) -> Tensor:
    """With probability ``p`` per image, set a ``size`` x ``size`` square at a uniformly
    random centre (clipped at the border) to ``fill`` (DeVries & Taylor, "Improved
    Regularization of Convolutional Neural Networks with Cutout", 2017; RandAugment's
    cutout in FixMatch).

    Args:
        x: ``[B, C, H, W]`` float in [0, 1].
        size: side of the square (``>= 1``).
        p: probability per image.
        generator: RNG (3 draws per image).
        fill: value of the cut pixels.

    Returns:
        ``[B, C, H, W]``.
    """
    _check_images(x, "cutout")
    _check_p(p, "cutout")
    if size < 1:
        raise ValueError(f"cutout: size must be >= 1, got {size}")
    b, _, h, w = x.shape
    u = torch.rand(3, b, generator=generator, device=generator.device).to(x.device)
    cy, cx = (u[0] * h).long(), (u[1] * w).long()
    on = (u[2] < p)[:, None, None]
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    lo_y, lo_x = (cy - size // 2)[:, None, None], (cx - size // 2)[:, None, None]
    box = (ys >= lo_y) & (ys < lo_y + size) & (xs >= lo_x) & (xs < lo_x + size) & on  # [B, H, W]
    return torch.where(box[:, None], torch.full_like(x, fill), x)


# --------------------------------------------------------------------------- pipelines
class AugmentStep(Protocol):
    """One pipeline step: ``step(x, generator=g) -> x`` on ``[B, C, H, W]`` float images."""

    def __call__(self, x: Tensor, *, generator: torch.Generator) -> Tensor: ...


@dataclass(frozen=True)
class AugmentConfig:
    """What a pipeline does, in the order it does it (all off by default).

    1. ``resized_crop_size``: :func:`random_resized_crop` to that side (with
       ``resized_crop_scale``, ``resized_crop_ratio``); otherwise
       ``crop_padding``: :func:`random_crop` back to the input size after padding
       (with ``crop_fill``).
    2. ``hflip_p``: :func:`hflip`.
    3. ``jitter = (brightness, contrast, saturation, hue)``: :func:`color_jitter`
       applied with probability ``jitter_p``.
    4. ``grayscale_p``: :func:`random_grayscale`.
    5. ``blur_p``: :func:`gaussian_blur` with ``blur_sigma`` and ``blur_kernel_size``
       (``None``: about 10% of the image side).
    6. ``solarize_p``: :func:`solarize` at ``solarize_threshold`` (threshold 0 inverts).
    7. ``cutout_size``: :func:`cutout` of that side with probability ``cutout_p``.
    """

    resized_crop_size: int | None = None
    resized_crop_scale: Range = (0.08, 1.0)
    resized_crop_ratio: Range = (3.0 / 4.0, 4.0 / 3.0)
    crop_padding: int | None = None
    crop_fill: float = 0.0
    hflip_p: float = 0.0
    jitter: tuple[float, float, float, float] | None = None
    jitter_p: float = 1.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: Range = (0.1, 2.0)
    blur_kernel_size: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    cutout_size: int = 0
    cutout_p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "cutout_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {value}")
        if self.resized_crop_size is not None and self.crop_padding is not None:
            raise ValueError("AugmentConfig: choose resized_crop_size or crop_padding, not both")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ValueError(f"AugmentConfig.crop_padding must be >= 0, got {self.crop_padding}")
        if self.jitter is not None and len(self.jitter) != 4:
            raise ValueError("AugmentConfig.jitter is (brightness, contrast, saturation, hue)")

    def build(self) -> Augment:
        """The :class:`Augment` pipeline this config describes."""
        return Augment.from_config(self)


@dataclass(frozen=True)
class Augment:
    """A sequence of batched augmentation steps sharing one generator.

    Build it from an :class:`AugmentConfig` (``Augment.from_config(cfg)`` or
    ``cfg.build()``), or from any steps ``step(x, *, generator) -> x`` (e.g.
    ``functools.partial(hflip, p=0.5)``); :meth:`then` appends steps.

    Attributes:
        steps: the steps, applied in order.
        config: the config it was built from (``None`` for hand-built pipelines).
    """

    steps: tuple[AugmentStep, ...]
    config: AugmentConfig | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, config: AugmentConfig) -> Augment:
        steps: list[AugmentStep] = []
        if config.resized_crop_size is not None:
            steps.append(
                partial(
                    random_resized_crop,
                    size=config.resized_crop_size,
                    scale=config.resized_crop_scale,
                    ratio=config.resized_crop_ratio,
                )
            )
        elif config.crop_padding is not None:
            steps.append(
                partial(random_crop, size=None, padding=config.crop_padding, fill=config.crop_fill)
            )
        if config.hflip_p > 0:
            steps.append(partial(hflip, p=config.hflip_p))
        if config.jitter is not None and config.jitter_p > 0:
            b, c, s, h = config.jitter
            steps.append(
                partial(
                    color_jitter, brightness=b, contrast=c, saturation=s, hue=h, p=config.jitter_p
                )
            )
        if config.grayscale_p > 0:
            steps.append(partial(random_grayscale, p=config.grayscale_p))
        if config.blur_p > 0:
            steps.append(
                partial(
                    gaussian_blur,
                    sigma=config.blur_sigma,
                    p=config.blur_p,
                    kernel_size=config.blur_kernel_size,
                )
            )
        if config.solarize_p > 0:
            steps.append(
                partial(solarize, threshold=config.solarize_threshold, p=config.solarize_p)
            )
        if config.cutout_size > 0 and config.cutout_p > 0:
            steps.append(partial(cutout, size=config.cutout_size, p=config.cutout_p))
        return cls(tuple(steps), config)

    def then(self, *steps: AugmentStep) -> Augment:
        """A new pipeline with ``steps`` appended (the config is dropped)."""
        return Augment(self.steps + tuple(steps))

    def apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch.

        Args:
            x: ``[B, C, H, W]`` float in [0, 1].
            generator: RNG; the same generator state gives the same output.

        Returns:
            ``[B, C, H', W']`` float in [0, 1] (``H' = W' = resized_crop_size`` if set).
        """
        for step in self.steps:
            x = step(x, generator=generator)
        return x

    __call__ = apply


@dataclass(frozen=True)
class TwoViewAugment:
    """Two (possibly asymmetric) pipelines giving two views of a batch (self-supervised).

    Attributes:
        view1: pipeline of the first view.
        view2: pipeline of the second view.
    """

    view1: Augment
    view2: Augment

    def apply(self, x: Tensor, generator: torch.Generator) -> Views:
        """``x: [B, C, H, W]`` -> :class:`~shiftlab.batches.Views` ``(v1, v2)``, each ``[B, C, H', W']``."""
        return Views(self.view1.apply(x, generator), self.view2.apply(x, generator))

    __call__ = apply


# --------------------------------------------------------------------------- presets
def digits_uda() -> Augment:
    """Random crop (pad 2, back to the input size) + colour jitter 0.4/0.4/0.4/0.1.

    The light augmentation that digit domain-adaptation and semi-supervised recipes apply
    to 28/32 px digits (translation by up to 2 px, brightness/contrast/saturation 0.4, hue
    0.1, as torchvision's ``ColorJitter(0.4, 0.4, 0.4, 0.1)``; on 1-channel images only
    brightness and contrast act).
    """
    return AugmentConfig(crop_padding=2, jitter=(0.4, 0.4, 0.4, 0.1)).build()


def digits_strong(image_size: int = 32) -> Augment:
    """Strong augmentation for digit adaptation (the "strong" branch of FixMatch/AdaMatch,
    with batched photometric ops in place of RandAugment's per-image PIL ops).

    Random crop (pad 4), colour jitter 0.8/0.8/0.8/0.5, grayscale p=0.2, colour inversion
    p=0.5 (solarize at threshold 0: digits on photos are light-on-dark and dark-on-light),
    Gaussian blur p=0.3, cutout of ``image_size // 3`` px.
    """
    return AugmentConfig(
        crop_padding=4,
        jitter=(0.8, 0.8, 0.8, 0.5),
        grayscale_p=0.2,
        blur_p=0.3,
        blur_sigma=(0.1, 1.5),
        solarize_p=0.5,
        solarize_threshold=0.0,
        cutout_size=max(1, image_size // 3),
        cutout_p=1.0,
    ).build()


def _byol_views(image_size: int, hflip_p: float, blur_sigma: tuple[float, float], **crop: Any) -> TwoViewAugment:
    """BYOL's two asymmetric views (jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale p=0.2, blur p=1.0 /
    0.1, solarize p=0 / 0.2 at 0.5) with the given flip, blur sigma and crop options."""
    common = dict(resized_crop_size=int(image_size), hflip_p=hflip_p, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                  grayscale_p=0.2, blur_sigma=blur_sigma, solarize_threshold=0.5, **crop)
    return TwoViewAugment(
        AugmentConfig(blur_p=1.0, solarize_p=0.0, **common).build(),  # type: ignore[arg-type]
        AugmentConfig(blur_p=0.1, solarize_p=0.2, **common).build(),  # type: ignore[arg-type]
    )


def byol_small(image_size: int) -> TwoViewAugment:
    """BYOL's two asymmetric view pipelines, for small images of side ``image_size``.

    Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020, Appendix B / Table 6: random resized crop (scale 0.08-1, ratio 3/4-4/3),
    horizontal flip p=0.5, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2,
    hue 0.1) with p=0.8, grayscale p=0.2, Gaussian blur (sigma 0.1-2.0) with p=1.0 for the
    first view and p=0.1 for the second, solarization (threshold 0.5) with p=0 and p=0.2.
    The paper's 23-px blur kernel (about 10% of 224 px) is scaled to about 10% of
    ``image_size`` (odd, at least 3 taps), which also bounds the blur on tiny images.

    Args:
        image_size: output side of the crops.

    Returns:
        A :class:`TwoViewAugment`; ``.apply(x, generator)`` gives :class:`~shiftlab.batches.Views`.
    """
    return _byol_views(image_size, hflip_p=0.5, blur_sigma=(0.1, 2.0))


def byol_digits(image_size: int) -> TwoViewAugment:
    """BYOL's asymmetric two-view pipelines adapted to digits (grey or on photos).

    Same colour operations as :func:`byol_small` (jitter 0.4/0.4/0.2/0.1 with p=0.8,
    grayscale p=0.2, blur p=1.0 / 0.1, solarize p=0 / 0.2; on 1-channel images saturation,
    hue and grayscale are no-ops, so grey digits are safe) with three changes that keep a
    view recognisable as its digit: crops cover at least half of the image (scale
    0.5-1 instead of 0.08-1: an 8% crop of a 16-28 px digit is a stroke fragment), no
    horizontal flip (digits are not mirror-symmetric: a flipped 2 or 5 is another
    shape), and blur sigma 0.1-1.0 px (2 px erases a 16 px digit). Measured on the
    embedded ``digits`` (16 px, LeNet, BYOL for 630 steps, seed 0, the setup of
    ``tests/methods/ssl/test_byol.py``): the k-NN accuracy of the features goes from 58.9%
    (random initialisation) to 72.9% with this preset and down to 48.0% with
    :func:`byol_small`.

    Args:
        image_size: output side of the crops.

    Returns:
        A :class:`TwoViewAugment`; ``.apply(x, generator)`` gives :class:`~shiftlab.batches.Views`.
    """
    return _byol_views(image_size, hflip_p=0.0, blur_sigma=(0.1, 1.0), resized_crop_scale=(0.5, 1.0))


# --------------------------------------------------------------------------- AugMix
# The operations of AugMix (Hendrycks et al., "AugMix: A Simple Data Processing Method to
# Improve Robustness and Uncertainty", ICLR 2020) that do not overlap the ImageNet-C
# corruptions (their ``augmentations.augmentations`` list, which MEMO uses).
AUGMIX_OPS = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _quantise(x: Tensor) -> Tensor:
    """Float images in [0, 1] -> int64 levels 0..255 (as ``PIL.Image`` holds them)."""
    return (x * 255.0).round_().clamp_(0, 255).long()


def autocontrast(x: Tensor) -> Tensor:
    """Stretch every channel of every image to the full [0, 1] range (``ImageOps.autocontrast``
    with no cut-off, without its 8-bit rounding); constant channels are unchanged.

    Args:
        x: ``[B, C, H, W]`` float in [0, 1].
    """
    _check_images(x, "autocontrast")
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    flat = span <= 0
    return torch.where(flat, x, (x - lo) / torch.where(flat, torch.ones_like(span), span))


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel and image with ``PIL.ImageOps.equalize``'s rule
    (256 levels, ``step = (N - h[last level]) // 255``, ``lut[i] = (step // 2 + sum_{j<i}
    h[j]) // step``; identity when ``step == 0``), all images in one scatter/gather.

    Args:
        x: ``[B, C, H, W]`` float in [0, 1].
    """
    _check_images(x, "equalize")
    b, c, h, w = x.shape
    q = _quantise(x).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    last = hist.gather(1, q.amax(dim=1, keepdim=True))  # count of the highest level present
    step = (h * w - last) // 255  # [BC, 1]
    before = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand(b * c, 256))
    return (lut.gather(1, q).to(x.dtype) / 255.0).view(b, c, h, w)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` of each 8-bit level (``ImageOps.posterize``); ``bits: [B]`` int."""
    _check_images(x, "posterize")
    div = (2 ** (8 - bits.to(x.device).long().clamp(0, 8))).view(-1, 1, 1, 1)
    return ((_quantise(x) // div) * div).to(x.dtype) / 255.0


def solarize_levels(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert the 8-bit levels ``>= threshold`` (``ImageOps.solarize``); ``threshold: [B]``."""
    _check_images(x, "solarize_levels")
    q = _quantise(x)
    thr = threshold.to(x.device).long().view(-1, 1, 1, 1)
    return torch.where(q >= thr, 255 - q, q).to(x.dtype) / 255.0


def affine_pixels(x: Tensor, matrix: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Warp each image by its own affine map in pixel coordinates, like PIL's
    ``Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR)``: the output pixel at ``(u, v)``
    (pixel-centre coordinates, origin at the top-left corner) samples the input at
    ``(a u + b v + c, d u + e v + f)``; outside the image is 0 (black).

    Args:
        x: ``[B, C, H, W]`` float.
        matrix: ``[B, 2, 3]`` rows ``(a, b, c)``, ``(d, e, f)``.
        padding_mode: ``zeros`` (PIL's black fill) or ``border`` (edge replication).

    Returns:
        ``[B, C, H, W]``, one ``grid_sample`` for the batch.
    """
    _check_images(x, "affine_pixels")
    b, c, h, w = x.shape
    m = matrix.to(device=x.device, dtype=x.dtype)
    a, bb, cc = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    # normalised coords (align_corners=False): u_px = (u_n + 1) W / 2
    theta = torch.stack(
        [
            torch.stack([a, bb * h / w, a + bb * h / w + 2 * cc / w - 1], dim=1),
            torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def _augmix_matrices(op: Tensor, level: Tensor, sign: Tensor, h: int, w: int) -> Tensor:
    """``[n, 2, 3]`` pixel affine maps of AugMix's geometric ops (identity for other ops)."""
    n = op.shape[0]
    mat = torch.zeros(n, 2, 3, dtype=torch.float32, device=op.device)
    mat[:, 0, 0] = 1.0
    mat[:, 1, 1] = 1.0
    idx = {name: AUGMIX_OPS.index(name) for name in _GEOMETRIC}
    # rotate: int(level * 30 / 10) degrees about the centre (PIL's ``rotate``)
    rot = op == idx["rotate"]
    deg = torch.floor(level * 3.0) * sign
    rad = torch.deg2rad(deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = w / 2.0, h / 2.0
    rmat = torch.stack(
        [
            torch.stack([cos, sin, cx - cos * cx - sin * cy], dim=1),
            torch.stack([-sin, cos, cy + sin * cx - cos * cy], dim=1),
        ],
        dim=1,
    )
    mat = torch.where(rot.view(n, 1, 1), rmat, mat)
    shear = level * 0.03 * sign  # float_parameter(level, 0.3)
    sx, sy = op == idx["shear_x"], op == idx["shear_y"]
    mat[:, 0, 1] = torch.where(sx, shear, mat[:, 0, 1])
    mat[:, 1, 0] = torch.where(sy, shear, mat[:, 1, 0])
    tx, ty = op == idx["translate_x"], op == idx["translate_y"]
    mat[:, 0, 2] = torch.where(tx, torch.floor(level * (w / 3.0) / 10.0) * sign, mat[:, 0, 2])
    mat[:, 1, 2] = torch.where(ty, torch.floor(level * (h / 3.0) / 10.0) * sign, mat[:, 1, 2])
    return mat


def _augmix_step(x: Tensor, op: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Apply op ``op[i]`` (index into :data:`AUGMIX_OPS`, ``-1`` = none) at ``level[i]``."""
    geo = torch.zeros_like(op, dtype=torch.bool)
    for name in _GEOMETRIC:
        geo |= op == AUGMIX_OPS.index(name)
    out = x.clone()
    gidx = geo.nonzero().squeeze(1)
    if gidx.numel():
        mats = _augmix_matrices(op[gidx], level[gidx], sign[gidx], x.shape[2], x.shape[3])
        out.index_copy_(0, gidx, affine_pixels(x.index_select(0, gidx), mats))
    for k, name in enumerate(AUGMIX_OPS):
        if name in _GEOMETRIC:
            continue
        idx = (op == k).nonzero().squeeze(1)
        if not idx.numel():
            continue
        sub = x.index_select(0, idx)
        lv = level.index_select(0, idx)
        if name == "autocontrast":
            sub = autocontrast(sub)
        elif name == "equalize":
            sub = equalize(sub)
        elif name == "posterize":
            sub = posterize(sub, 4 - torch.floor(lv * 0.4).long())  # 4 - int_parameter(level, 4)
        else:  # solarize
            sub = solarize_levels(sub, 256 - torch.floor(lv * 25.6).long())  # 256 - int_parameter(level, 256)
        out.index_copy_(0, idx, sub)
    return out


def augmix(
    x: Tensor,
    generator: torch.Generator,
    severity: float = 3.0,
    width: int = 3,
    depth: int = -1,
) -> Tensor:
    """AugMix of every image of a batch, all chains of all images computed together.

    Per image: ``width`` chains, each of ``depth`` operations (``-1``: uniform in 1..3)
    drawn uniformly from :data:`AUGMIX_OPS`, each at a level uniform in ``[0.1,
    severity]`` with a random sign; the chains are mixed with Dirichlet(1, ..., 1)
    weights and the mixture blended with the image by ``m ~ Beta(1, 1)``:
    ``(1 - m) x + m sum_k w_k chain_k(x)``. Parameters and operations follow
    Hendrycks et al., "AugMix", ICLR 2020 (``augment_and_mix`` with ``alpha = 1``, the
    value MEMO uses), on 8-bit levels for the PIL ops; geometric ops are bilinear with
    black fill as PIL's. Batched: for each depth slot, one ``grid_sample`` for all
    geometric ops and one call per pixel op over the images that drew it.

    Args:
        x: ``[B, C, H, W]`` float in [0, 1] (e.g. ``B`` copies of one test point).
        generator: RNG (about ``width * (1 + 4 * 3) + 1`` draws per image).
        severity: AugMix's ``aug_severity`` (paper default 3), at most 10.
        width: chains per image (``mixture_width``, paper 3).
        depth: ops per chain (``mixture_depth``; ``-1``: random in 1..3, the paper's).

    Returns:
        ``[B, C, H, W]`` float in [0, 1].
    """
    _check_images(x, "augmix")
    if not 0 < severity <= 10 or width < 1 or depth == 0 or depth < -1:
        raise ValueError(f"augmix: need 0 < severity <= 10, width >= 1, depth -1 or >= 1; got "
                         f"{severity}, {width}, {depth}")
    b = x.shape[0]
    g = generator.device
    n = b * width
    max_depth = 3 if depth < 0 else depth
    depths = (
        torch.randint(1, 4, (n,), generator=generator, device=g)
        if depth < 0
        else torch.full((n,), depth, device=g)
    )
    ops = torch.randint(len(AUGMIX_OPS), (max_depth, n), generator=generator, device=g)
    levels = torch.rand(max_depth, n, generator=generator, device=g) * (severity - 0.1) + 0.1
    signs = torch.where(torch.rand(max_depth, n, generator=generator, device=g) < 0.5, -1.0, 1.0)
    # Dirichlet(1) = normalised Exp(1); Beta(1, 1) = U(0, 1)
    ws = -torch.log1p(-torch.rand(b, width, generator=generator, device=g))
    ws = ws / ws.sum(dim=1, keepdim=True)
    m = torch.rand(b, generator=generator, device=g)
    dev = x.device
    depths, ops, levels, signs = depths.to(dev), ops.to(dev), levels.to(dev), signs.to(dev)
    chains = x.repeat(width, 1, 1, 1)  # [width * B, ...], chain-major
    for s in range(max_depth):
        op = torch.where(depths > s, ops[s], torch.full_like(ops[s], -1))
        chains = _augmix_step(chains, op, levels[s], signs[s])
    ws = ws.to(device=dev, dtype=x.dtype).T.reshape(width, b, 1, 1, 1)
    mix = (chains.view(width, b, *x.shape[1:]) * ws).sum(dim=0)
    m = m.to(device=dev, dtype=x.dtype).view(b, 1, 1, 1)
    return ((1.0 - m) * x + m * mix).clamp_(0.0, 1.0)
