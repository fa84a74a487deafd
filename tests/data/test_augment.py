"""Batched, seeded augmentation: shapes, determinism, ranges, and agreement with torchvision."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from shiftlab.batches import Views
from shiftlab.data import augment as A


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, c: int = 3, h: int = 28, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


# every random op, as op(x, generator=g)
OPS = {
    "random_crop": partial(A.random_crop, size=None, padding=2),
    "random_crop_smaller": partial(A.random_crop, size=24, padding=0),
    "random_resized_crop": partial(A.random_resized_crop, size=20),
    "hflip": partial(A.hflip, p=0.5),
    "color_jitter": partial(A.color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    "color_jitter_p": partial(
        A.color_jitter, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.5
    ),
    "random_grayscale": partial(A.random_grayscale, p=0.5),
    "gaussian_blur": partial(A.gaussian_blur, sigma=(0.1, 2.0), p=0.5),
    "solarize": partial(A.solarize, threshold=0.5, p=0.5),
    "digits_uda": A.digits_uda(),
    "byol_view2": A.byol_small(24).view2,
}
EXPECTED_SIDE = {"random_crop_smaller": 24, "random_resized_crop": 20, "byol_view2": 24}


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_seeding(name: str, channels: int) -> None:
    op = OPS[name]
    x = images(c=channels)
    out = op(x, generator=gen(0))
    side = EXPECTED_SIDE.get(name, 28)
    assert out.shape == (8, channels, side, side)
    assert out.dtype == x.dtype and out.device == x.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # same seed -> identical, different seed -> different
    assert torch.equal(op(x, generator=gen(0)), out)
    if name == "random_grayscale" and channels == 1:
        assert torch.equal(out, x)  # grey images stay as they are
    else:
        assert not torch.equal(op(x, generator=gen(1)), out)
    # the input is never modified
    assert torch.equal(x, images(c=channels))


def test_no_global_rng_use() -> None:
    state = torch.get_rng_state()
    for op in OPS.values():
        op(images(), generator=gen(3))
    A.byol_small(28).apply(images(), gen(3))
    assert torch.equal(torch.get_rng_state(), state)


def test_crop_without_padding_at_full_size_is_identity() -> None:
    x = images()
    assert torch.equal(A.random_crop(x, 28, 0, gen()), x)
    assert torch.equal(A.random_crop(x, None, 0, gen()), x)


def test_random_crop_offsets_cover_every_shift_per_image() -> None:
    # one bright pixel in the centre of each image: after pad 2 + crop 28 it moves by -2..2
    x = torch.zeros(400, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = A.random_crop(x, 9, 2, gen(), fill=0.0)
    assert torch.all(out.flatten(1).sum(1) == 1.0)  # the pixel is always inside the window
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert set(rows.tolist()) == set(range(2, 7)) and set(cols.tolist()) == set(range(2, 7))
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 25


def test_random_crop_fill_value() -> None:
    x = torch.zeros(64, 1, 4, 4)
    out = A.random_crop(x, 8, 2, gen(), fill=0.7)  # the window is the whole padded image
    assert torch.all(out[:, :, :2] == 0.7) and torch.all(out[:, :, 2:6, 2:6] == 0.0)


def test_random_resized_crop_full_box_is_identity_and_boxes_vary() -> None:
    x = images()
    same = A.random_resized_crop(x, 28, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    assert torch.allclose(same, x, atol=1e-5)
    # boxes follow torchvision's sampling: within scale, inside the image, different per image
    top, left, h, w = A._resized_crop_boxes(
        500, 28, 28, (0.08, 1.0), (3 / 4, 4 / 3), gen(), torch.device("cpu")
    )
    area = h * w / (28 * 28)
    assert torch.all(top >= 0) and torch.all(left >= 0)
    assert torch.all(top + h <= 28) and torch.all(left + w <= 28)
    assert area.min() >= 0.05 and area.max() <= 1.0 and area.std() > 0.1


def test_hflip_twice_is_identity_and_p0_is_identity() -> None:
    x = images()
    once = A.hflip(x, 1.0, gen())
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(A.hflip(once, 1.0, gen()), x)
    assert torch.equal(A.hflip(x, 0.0, gen()), x)


@pytest.mark.parametrize(
    "op",
    [
        partial(A.hflip, p=0.0),
        partial(A.random_grayscale, p=0.0),
        partial(A.gaussian_blur, sigma=(0.5, 1.0), p=0.0),
        partial(A.solarize, threshold=0.5, p=0.0),
        partial(A.color_jitter, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.0),
    ],
)
def test_probability_zero_is_identity(op: partial) -> None:
    x = images()
    assert torch.equal(op(x, generator=gen()), x)


def test_brightness_factor_range_respected_per_image() -> None:
    x = torch.full((256, 3, 8, 8), 0.5)
    out = A.color_jitter(x, 0.4, 0.0, 0.0, 0.0, gen())
    ratio = out.mean(dim=(1, 2, 3)) / 0.5
    assert ratio.min() >= 0.6 - 1e-6 and ratio.max() <= 1.4 + 1e-6
    assert ratio.min() < 0.65 and ratio.max() > 1.35  # the whole range is used
    # constant images stay constant (brightness only scales)
    assert torch.allclose(out.amin(dim=(1, 2, 3)), out.amax(dim=(1, 2, 3)))


def test_color_jitter_gives_each_image_its_own_factors() -> None:
    x = torch.rand(1, 3, 16, 16, generator=gen(5)).expand(32, -1, -1, -1).contiguous()
    out = A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, gen())
    means = out.mean(dim=(1, 2, 3))
    assert len(torch.unique(means)) == 32
    grey = torch.full((32, 1, 8, 8), 0.5)
    assert (
        len(torch.unique(A.color_jitter(grey, 0.4, 0.0, 0.0, 0.0, gen()).mean(dim=(1, 2, 3)))) == 32
    )


def test_hue_shift_zero_is_identity() -> None:
    x = images(16)
    x[0] = 0.5  # grey pixels (no chroma)
    x[1, 0] = x[1, 1]  # ties between channels
    assert torch.allclose(A.adjust_color(x, hue=0.0), x, atol=1e-5)
    assert torch.allclose(A.adjust_color(x, hue=torch.zeros(16)), x, atol=1e-5)


def test_brightness_only_matches_torchvision() -> None:
    x = images()
    ref = TF.adjust_brightness(x, 1.3)
    assert torch.equal(A.adjust_color(x, brightness=1.3), ref)
    # the random op with a degenerate range uses the same code path and the same factor
    assert torch.equal(A.color_jitter(x, (1.3, 1.3), 0.0, 0.0, 0.0, gen()), ref)


@pytest.mark.parametrize(
    ("kwarg", "factor", "fn"),
    [
        ("contrast", 0.6, TF.adjust_contrast),
        ("contrast", 1.4, TF.adjust_contrast),
        ("saturation", 0.3, TF.adjust_saturation),
        ("saturation", 1.7, TF.adjust_saturation),
        ("hue", -0.37, TF.adjust_hue),
        ("hue", 0.1, TF.adjust_hue),
        ("hue", 0.5, TF.adjust_hue),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_colour_op_matches_torchvision(kwarg: str, factor: float, fn, channels: int) -> None:
    x = images(c=channels)
    assert torch.allclose(A.adjust_color(x, **{kwarg: factor}), fn(x, factor), atol=1e-5)


def test_per_image_factors_and_order_match_torchvision_image_by_image() -> None:
    b = 12
    x = images(b)
    g = gen(7)
    factors = {
        "brightness": torch.rand(b, generator=g) + 0.5,
        "contrast": torch.rand(b, generator=g) + 0.5,
        "saturation": torch.rand(b, generator=g) + 0.5,
        "hue": torch.rand(b, generator=g) * 0.4 - 0.2,
    }
    order = torch.rand(b, 4, generator=g).argsort(dim=1)
    out = A.adjust_color(x, order=order, **factors)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    names = ("brightness", "contrast", "saturation", "hue")
    for i in range(b):
        ref = x[i]
        for k in order[i].tolist():
            ref = fns[k](ref, float(factors[names[k]][i]))
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_grayscale_solarize_blur_match_torchvision() -> None:
    x = images()
    grey = A.random_grayscale(x, 1.0, gen())
    assert torch.allclose(grey, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6)
    assert torch.equal(A.solarize(x, 0.5, 1.0, gen()), TF.solarize(x, 0.5))
    blurred = A.gaussian_blur(x, (1.2, 1.2), 1.0, gen(), kernel_size=5)
    assert torch.allclose(blurred, TF.gaussian_blur(x, [5, 5], [1.2, 1.2]), atol=1e-5)


def test_gaussian_blur_sigma_differs_per_image() -> None:
    x = torch.zeros(16, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = A.gaussian_blur(x, (0.3, 3.0), 1.0, gen(), kernel_size=7)
    peaks = out[:, 0, 7, 7]
    assert len(torch.unique(peaks)) == 16
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(16), atol=1e-5)  # mass kept


def test_pipelines_and_presets() -> None:
    x = images(6)
    uda = A.digits_uda()
    assert uda.config == A.AugmentConfig(crop_padding=2, jitter=(0.4, 0.4, 0.4, 0.1))
    assert len(uda.steps) == 2
    byol = A.byol_small(32)
    views = byol.apply(images(6, h=32, w=32), gen())
    assert isinstance(views, Views) and views.v1.shape == views.v2.shape == (6, 3, 32, 32)
    assert not torch.equal(views.v1, views.v2)
    assert byol.view1.config is not None and byol.view1.config.blur_p == 1.0
    assert byol.view2.config is not None and byol.view2.config.solarize_p == 0.2
    extended = uda.then(partial(A.hflip, p=1.0))
    assert torch.equal(extended.apply(x, gen()), uda.apply(x, gen()).flip(-1))
    assert A.Augment(()).apply(x, gen()) is x


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hflip_p": 1.5},
        {"crop_padding": -1},
        {"crop_padding": 2, "resized_crop_size": 28},
        {"jitter": (0.4, 0.4)},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        A.AugmentConfig(**kwargs)


def test_bad_arguments_are_errors() -> None:
    x = images()
    with pytest.raises(ValueError, match="hue"):
        A.color_jitter(x, 0.4, 0.4, 0.4, 0.7, gen())
    with pytest.raises(ValueError, match="larger"):
        A.random_crop(x, 40, 2, gen())
    with pytest.raises(TypeError, match="float"):
        A.hflip(x.mul(255).to(torch.uint8), 0.5, gen())
    with pytest.raises(ValueError, match="odd"):
        A.gaussian_blur(x, (0.1, 2.0), 1.0, gen(), kernel_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_images_with_cpu_generator() -> None:
    x = images().cuda()
    out = A.byol_small(28).view2.apply(x, gen())
    assert out.device == x.device
    ref = A.byol_small(28).view2.apply(x.cpu(), gen())
    assert torch.allclose(out.cpu(), ref, atol=1e-4)


def test_hue_fast_path_on_achromatic_images_matches_the_full_computation() -> None:
    """Grey images repeated to RGB skip the hue rotation (an identity for them); a batch
    mixing grey and colour images gives, image by image, what each gives alone."""
    from shiftlab.data.augment import _shift_hue, adjust_color

    g = torch.Generator().manual_seed(3)
    grey = torch.rand(4, 1, 12, 12, generator=g).expand(-1, 3, -1, -1).contiguous()
    colour = torch.rand(4, 3, 12, 12, generator=g)
    hue = torch.tensor([0.3, -0.2, 0.1, 0.45])
    # the skipped computation really is the identity on achromatic images
    assert torch.allclose(_shift_hue(grey, hue.view(-1, 1, 1, 1)), grey, atol=1e-6)
    mixed = torch.cat([grey[:2], colour[:2], grey[2:], colour[2:]])
    hues = torch.cat([hue[:2], hue[:2], hue[2:], hue[2:]])
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(8)])
    bright = torch.linspace(0.7, 1.3, 8)
    out = adjust_color(mixed, brightness=bright, saturation=0.5, hue=hues, order=order)
    for i in range(8):
        alone = adjust_color(mixed[i : i + 1], brightness=bright[i : i + 1], saturation=0.5,
                             hue=hues[i : i + 1], order=order[i : i + 1])
        assert torch.allclose(out[i], alone[0], atol=1e-6)
    fixed = adjust_color(mixed, contrast=0.8, hue=hues)
    for i in range(8):
        assert torch.allclose(fixed[i], adjust_color(mixed[i : i + 1], contrast=0.8, hue=hues[i : i + 1])[0], atol=1e-6)
