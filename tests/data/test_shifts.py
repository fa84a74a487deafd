"""Contract tests of the shift registry (every registered shift) and of its exactness claims.

The images are synthetic but image-like (smooth blobs, digit-like strokes on black; smooth
colour fields), generated from a fixed seed, so the tests need no data folder.

Severity monotonicity: the mean absolute change from the clean image does not decrease from
one severity to the next (8 % relative tolerance: some steps are flat in the reference too,
e.g. snow 2 -> 3 and fog 3 -> 4), except where it legitimately does not in Hendrycks &
Dietterich's tables, where the property that does grow is tested instead:

* ``frost``: the clean image's weight falls while the frost weight rises (or stays), so on
  images brighter than the frost the change can fall (3 -> 4 in both tables; the reference
  shows it too). Tested: the change on a black image (the frost weight) never decreases.
* ``pixelate``: a severity whose down-sampled size divides the image exactly aliases less
  (e.g. 28 px at CIFAR's 0.85 vs 0.75); tested: the effective resolution (number of distinct
  column blocks) never increases, and severity 5 changes more than severity 1.
* ``elastic_transform`` (CIFAR table): the random affine part shrinks with severity while the
  local elastic part grows, so the total change falls; tested: the local (non-affine)
  distortion, read off the Laplacian of the displacement of a ramp image, grows.
* ``glass_blur``: ImageNet severity 3 (3 shuffle passes) changes more than severity 4 (2
  passes); the reference does the same. Tested: no step falls by more than 15 % and
  severity 5 changes more than severity 1.
"""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from shiftlab.data import shifts
from shiftlab.data.shifts import SHIFTS, apply_shift, awgn, gaussian_blur, resolve_table
from shiftlab.registry import UnknownNameError

# shifts applicable without a trained model (embedding_shift needs an autoencoder: tests/data/test_embedding_shift.py)
NAMES = [n for n in SHIFTS.names() if "needs" not in SHIFTS.entry(n).tags]
CORRUPTIONS = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
]
FAMILIES = {"noise", "blur", "weather", "digital", "seed-shift"}
MONOTONE_EXCEPTIONS = {"frost", "pixelate", "glass_blur"}


def _gray(n: int, seed: int, size: int = 28) -> torch.Tensor:
    """Digit-like images: bright blobs/strokes on black, ``[n, 1, size, size]``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 7, 7, generator=g)
    up = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return ((up - 0.55) * 4).clamp(0, 1)


def _rgb(n: int, seed: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Smooth colour fields with mid-frequency texture, ``[n, 3, h, w]``."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(h, w), mode="bilinear")
    mid = F.interpolate(torch.rand(n, 1, 8, 8, generator=g), size=(h, w), mode="bicubic")
    return (0.6 * low + 0.4 * mid).clamp(0, 1)


@pytest.fixture(scope="module")
def batches() -> dict[str, torch.Tensor]:
    return {"gray28": _gray(8, 0), "rgb32": _rgb(8, 1)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mac(y: torch.Tensor, x: torch.Tensor) -> float:
    return (y - x).abs().mean().item()


# ------------------------------------------------------------------------------ registry


def test_registry_holds_every_corruption_and_seed_shift() -> None:
    assert set(CORRUPTIONS) | {"awgn", "gaussian_blur"} <= set(NAMES)
    assert SHIFTS.entry("embedding_shift").tags["needs"] == "autoencoder"
    for entry in SHIFTS.entries():
        assert entry.summary and entry.paper
        assert entry.tags["family"] in FAMILIES, entry.name
    families = {e.name: e.tags["family"] for e in SHIFTS.entries()}
    assert [families[n] for n in CORRUPTIONS] == ["noise"] * 3 + ["blur"] * 4 + ["weather"] * 3 + [
        "digital"
    ] * 5
    assert "Hendrycks" in SHIFTS.entry("fog").paper


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        apply_shift("gausian_noise", torch.zeros(1, 1, 8, 8), 1, _gen())


# ------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("kind", ["gray28", "rgb32"])
@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, severity: int, kind: str, batches: dict[str, torch.Tensor]) -> None:
    x = batches[kind]
    y = apply_shift(name, x, severity, _gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert _mac(y, x) > 0.0
    assert torch.equal(x, batches[kind])  # the input is not modified


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_seed_same_output_without_global_rng(
    name: str, batches: dict[str, torch.Tensor]
) -> None:
    for x in batches.values():
        torch.manual_seed(1)
        a = apply_shift(name, x, 3, _gen(42))
        torch.manual_seed(2)  # the global RNG must play no part
        b = apply_shift(name, x, 3, _gen(42))
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name: str, batches: dict[str, torch.Tensor]) -> None:
    x = batches["rgb32"]
    y = apply_shift(name, x, 0, _gen())
    assert torch.equal(y, x) and y is not x


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one_and_other_sizes(name: str) -> None:
    for x in (_rgb(1, 2), _gray(1, 3), _rgb(2, 4, h=40, w=72), _gray(2, 5, size=20)):
        y = apply_shift(name, x, 5, _gen())
        assert y.shape == x.shape
        assert y.min() >= 0.0 and y.max() <= 1.0 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_dtype_float64_preserved(name: str) -> None:
    x = _rgb(2, 6).double()
    y = apply_shift(name, x, 2, _gen())
    assert y.dtype == torch.float64 and y.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_device_kept(name: str) -> None:
    x = _rgb(4, 7).cuda()
    y = apply_shift(name, x, 3, torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x.device and y.shape == x.shape
    z = apply_shift(name, x, 3, _gen())  # a CPU generator works with CUDA data too
    assert z.device == x.device


def test_invalid_arguments() -> None:
    x = torch.rand(2, 3, 8, 8)
    for bad in (-1, 6):
        with pytest.raises(ValueError, match="severity"):
            apply_shift("fog", x, bad, _gen())
    with pytest.raises(ValueError, match="severity"):
        apply_shift("fog", x, True, _gen())
    with pytest.raises(TypeError):
        apply_shift("fog", x, 2.0, _gen())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="C = 1 or 3"):
        apply_shift("fog", torch.rand(2, 2, 8, 8), 1, _gen())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        apply_shift("fog", torch.rand(3, 8, 8), 1, _gen())
    with pytest.raises(ValueError, match="float"):
        apply_shift("fog", torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 1, _gen())
    with pytest.raises(ValueError, match="table"):
        apply_shift("fog", x, 1, _gen(), table="cifar10")  # type: ignore[arg-type]


def test_resolve_table() -> None:
    assert resolve_table("auto", 28, 28) == "cifar"
    assert resolve_table("auto", 32, 64) == "cifar"
    assert resolve_table("auto", 32, 65) == "imagenet"
    assert resolve_table("imagenet", 28, 28) == "imagenet"
    assert resolve_table("cifar", 224, 224) == "cifar"


# ------------------------------------------------------------------------------ severity


def _curve(name: str, x: torch.Tensor, table: str) -> list[float]:
    # common random numbers: the same generator seed at every severity
    return [_mac(apply_shift(name, x, s, _gen(7), table=table), x) for s in range(1, 6)]


@pytest.fixture(scope="module")
def severity_batches() -> dict[str, torch.Tensor]:
    return {"gray28": _gray(16, 10), "rgb32": _rgb(16, 11)}


MONOTONE_CASES = [
    (name, table)
    for name in NAMES
    for table in ("cifar", "imagenet")
    if name not in MONOTONE_EXCEPTIONS and (name, table) != ("elastic_transform", "cifar")
]


@pytest.mark.parametrize(("name", "table"), MONOTONE_CASES)
def test_change_grows_with_severity(
    name: str, table: str, severity_batches: dict[str, torch.Tensor]
) -> None:
    for kind, x in severity_batches.items():
        m = _curve(name, x, table)
        assert m[4] > m[0], (kind, m)
        for s in range(4):
            assert m[s + 1] >= 0.92 * m[s], (kind, s + 1, m)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_glass_blur_grows_overall(table: str, severity_batches: dict[str, torch.Tensor]) -> None:
    for kind, x in severity_batches.items():
        m = _curve("glass_blur", x, table)
        assert m[4] > m[0], (kind, m)
        assert all(m[s + 1] >= 0.85 * m[s] for s in range(4)), (kind, m)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_frost_weight_grows(table: str) -> None:
    black = torch.zeros(8, 3, 32, 32)
    m = _curve("frost", black, table)
    assert all(m[s + 1] >= m[s] - 1e-6 for s in range(4)), m
    assert m[4] > m[0]


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_pixelate_resolution_falls(table: str, severity_batches: dict[str, torch.Tensor]) -> None:
    for kind, x in severity_batches.items():
        blocks = []
        for s in range(1, 6):
            y = apply_shift("pixelate", x, s, _gen(), table=table)
            blocks.append(int((y[..., 1:] != y[..., :-1]).flatten(0, 2).any(0).sum()) + 1)
        factors = (
            (0.6, 0.5, 0.4, 0.3, 0.25) if table == "imagenet" else (0.95, 0.9, 0.85, 0.75, 0.65)
        )
        assert blocks == [int(x.shape[-1] * c) for c in factors], (kind, blocks)
        m = _curve("pixelate", x, table)
        assert m[4] > m[0], (kind, m)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_elastic_local_distortion_grows(table: str) -> None:
    size = 32
    ramp = torch.arange(size, dtype=torch.float64) / (size - 1)
    x = torch.stack(
        [
            ramp[None, :].expand(size, size),
            ramp[:, None].expand(size, size),
            torch.full((size, size), 0.5),
        ]
    )[None].repeat(16, 1, 1, 1)
    rough = []
    for s in range(1, 6):
        y = apply_shift("elastic_transform", x, s, _gen(3), table=table)
        d = (y[:, :2] - x[:, :2]) * (size - 1)  # displacement of the (linear) ramps, pixels
        lap = (
            4 * d[..., 1:-1, 1:-1]
            - d[..., :-2, 1:-1]
            - d[..., 2:, 1:-1]
            - d[..., 1:-1, :-2]
            - d[..., 1:-1, 2:]
        )
        rough.append(lap[..., 7:-7, 7:-7].abs().mean().item())
    assert all(b > a for a, b in zip(rough[1:], rough[2:], strict=False)), rough
    if table == "cifar":
        assert rough[0] < 1e-6  # severity 1 is a pure affine warp (alpha = 0)
    else:
        assert rough[1] > rough[0]


# ------------------------------------------------------------------------------ exactness


def _reference_glass_loop(
    moves: dict[tuple[int, int], tuple[int, int]],
    b: int,
    h: int,
    w: int,
    delta: int,
    iterations: int,
) -> torch.Tensor:
    """imagecorruptions' loop on pixel indices, with its numpy copy semantics; ``moves`` maps
    (pass, flat pixel) to the (dy, dx) of each image."""
    out = []
    for i in range(b):
        src = list(range(h * w))
        for it in range(iterations):
            for r in range(h - delta, delta, -1):
                for c in range(w - delta, delta, -1):
                    dy, dx = moves[(it, r * w + c)][i]
                    src[r * w + c] = src[(r + dy) * w + (c + dx)]
        out.append(src)
    return torch.tensor(out)


@pytest.mark.parametrize(
    ("h", "w", "delta", "iterations"), [(12, 12, 1, 2), (11, 14, 2, 3), (16, 13, 4, 2)]
)
def test_glass_wavefront_equals_sequential_loop(
    h: int, w: int, delta: int, iterations: int
) -> None:
    b = 3
    pos, it, bounds = shifts._glass_schedule(h, w, delta, iterations)
    assert pos.numel() == iterations * (h - 2 * delta) * (w - 2 * delta)
    offsets = torch.randint(-delta, delta, (2, pos.numel(), b), generator=_gen(5))
    moves = {
        (int(k), int(p)): [(int(offsets[0, j, i]), int(offsets[1, j, i])) for i in range(b)]
        for j, (k, p) in enumerate(zip(it, pos, strict=True))
    }
    fast = shifts._glass_permutation(h, w, pos, bounds, offsets)
    assert torch.equal(fast, _reference_glass_loop(moves, b, h, w, delta, iterations))


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 28, 28), (2, 3, 40, 72)])
def test_zoom_blur_sparse_operator_equals_per_zoom_resampling(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=_gen(8))
    for zooms in (shifts._np_arange(1, 1.31, 0.03), shifts._np_arange(1, 1.06, 0.01)):
        op = shifts._zoom_blur_operator(shape[2], shape[3], zooms, x)
        flat = x.reshape(-1, shape[2] * shape[3])
        sparse = torch.sparse.mm(op, flat.T.contiguous()).T.reshape(shape)
        assert torch.allclose(sparse, shifts._zoom_blur_dense(x, zooms), atol=1e-5)
    assert len(shifts._np_arange(1, 1.11, 0.01)) == 12  # numpy's arange includes 1.11 here


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_brightness_is_hsv_value_shift(table: str) -> None:
    x = _rgb(2, 12, h=6, w=5)
    x[0, :, 0, 0] = 0.0  # black pixel: becomes gray
    x[0, :, 0, 1] = torch.tensor([0.95, 0.2, 0.1])  # value saturates at 1
    for severity in (1, 5):
        c = ((0.1, 0.2, 0.3, 0.4, 0.5) if table == "imagenet" else (0.05, 0.1, 0.15, 0.2, 0.3))[
            severity - 1
        ]
        y = apply_shift("brightness", x, severity, _gen(), table=table)
        for b, i, j in [(0, 0, 0), (0, 0, 1), (1, 3, 2), (1, 5, 4), (0, 2, 3)]:
            hue, sat, val = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
            want = colorsys.hsv_to_rgb(hue, sat, min(val + c, 1.0))
            assert torch.allclose(y[b, :, i, j], torch.tensor(want), atol=1e-6)


def test_contrast_and_pixelate_exact_values() -> None:
    x = torch.rand(3, 3, 10, 10, generator=_gen(1))
    y = apply_shift("contrast", x, 1, _gen(), table="imagenet")
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(y, ((x - mean) * 0.4 + mean).clamp(0, 1))
    # 8 -> 4 px box down-sampling is 2x2 block averaging; nearest up-sampling repeats it
    z = torch.rand(1, 1, 8, 8, generator=_gen(2))
    p = apply_shift("pixelate", z, 2, _gen(), table="imagenet")
    blocks = F.avg_pool2d(z, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(p, blocks, atol=1e-6)


def test_defocus_kernel_matches_reference_disk() -> None:
    """Sums of imagecorruptions' ``disk()``: 1, except where the disk touches the kernel
    grid and cv2's reflect-101 border folds some of the anti-aliasing blur back in."""
    like = torch.zeros(1)
    for radius, alias, total in (
        (3, 0.1, 1.0),
        (6, 0.5, 1.0),
        (8, 0.5, 1.0129755),
        (10, 0.5, 1.0107858),
    ):
        k = shifts._disk_kernel(radius, alias, like)
        assert math.isclose(k.sum().item(), total, rel_tol=1e-5)
        assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    assert shifts._disk_kernel(0.3, 0.4, like).shape == (3, 3)  # CIFAR: almost a delta


# ------------------------------------------------------------------------------ seeds' shifts


def test_awgn_explicit_sigma_and_severities() -> None:
    x = torch.full((4, 3, 32, 32), 0.5)
    noisy = awgn(x, 0.1, _gen(), clip=False)
    assert abs((noisy - x).std().item() - 0.1) < 0.005
    assert abs((noisy - x).mean().item()) < 0.005
    for severity, sigma in zip(range(1, 4), (0.05, 0.1, 0.2), strict=True):
        y = apply_shift("awgn", x, severity, _gen(severity))
        assert torch.equal(y, awgn(x, sigma, _gen(severity)))
        assert abs((y - x).std().item() - sigma) < 0.1 * sigma + 0.01  # little clipping at 0.5
    with pytest.raises(ValueError):
        awgn(x, -0.1, _gen())


def test_gaussian_blur_explicit_sigma_and_severities() -> None:
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    impulse = torch.zeros(1, 1, 33, 33, dtype=torch.float64)
    impulse[..., 16, 16] = 1.0
    k = gaussian_blur(impulse, 2.0)[0, 0]
    assert math.isclose(k.sum().item(), 1.0, rel_tol=1e-9)
    t = torch.arange(33, dtype=torch.float64) - 16
    assert math.isclose((k.sum(0) * t**2).sum().item(), 4.0, rel_tol=0.01)
    x = _rgb(2, 13)
    for severity, sigma in zip(range(1, 6), (0.5, 1.0, 1.5, 2.0, 3.0), strict=True):
        assert torch.equal(
            apply_shift("gaussian_blur", x, severity, _gen()), gaussian_blur(x, sigma)
        )
    assert torch.equal(gaussian_blur(x, 0.0), x)
