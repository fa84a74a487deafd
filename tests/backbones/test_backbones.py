"""Backbones: the contract over the whole registry, parameter counts, and safe, strict loading
of the real akamaster CIFAR-10 ResNet checkpoints (``../shared/data/pretrained``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from shiftlab.backbones import BACKBONES, Backbone, backbone_arguments, create_backbone
from shiftlab.errors import DataError, RecipeError

# A sensible (in_chans, image_size) per backbone; a backbone not listed here is tested with
# its factory's defaults, so a new registry entry is covered the day it is registered.
SHAPES: dict[str, tuple[int, int]] = {
    "dann_cnn": (3, 28),
    "lenet": (1, 32),
    "conv4": (3, 84),
    "mlp": (1, 28),
    "resnet18": (3, 32),
}

AKAMASTER = {  # depth -> (file, best_prec1 stored in the checkpoint)
    20: ("resnet20-12fca82f.th", 91.78),
    32: ("resnet32-d509ac18.th", 92.78),
    44: ("resnet44-014dd654.th", 93.14),
    56: ("resnet56-4bfd9763.th", 93.62),
}


def _shape(name: str) -> tuple[int, int]:
    if name in SHAPES:
        return SHAPES[name]
    args = backbone_arguments(name)
    return int(args["in_chans"]), int(args["image_size"])


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("variant", ["typical", "gray28"])
@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_contract(name: str, variant: str) -> None:
    c, s = _shape(name) if variant == "typical" else (1, 28)
    model = create_backbone(name, in_chans=c, num_classes=7, image_size=s)
    assert isinstance(model, Backbone)
    assert model.in_chans == c
    d = model.num_features
    assert isinstance(d, int) and d > 0

    # Construction (including any dummy forward that measured flatten sizes) moved no BN stats.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
            assert int(m.num_batches_tracked) == 0

    x = torch.rand(4, c, s, s)
    model.train()
    feats = model.forward_features(x)
    logits = model(x)
    assert feats.shape == (4, d) and logits.shape == (4, 7)
    assert feats.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    # Every parameter, the first layer's included, receives a gradient.
    F.cross_entropy(logits, torch.arange(4) % 7).backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())

    # Eval mode is deterministic.
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        assert torch.equal(model.forward_features(x), model.forward_features(x))
        # the trunk (where domain discriminators may attach) composes back to the features
        trunk = model.forward_trunk(x)
        assert trunk.shape == (4, model.trunk_features)
        assert torch.allclose(model.features_from_trunk(trunk), model.forward_features(x), atol=1e-6)

    # A fresh head: 3 classes, then none (the model returns its features).
    model.reset_head(3)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == d
    with torch.no_grad():
        assert model(x).shape == (4, 3)
        model.reset_head(0)
        assert torch.equal(model(x), model.forward_features(x))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_registry_entry_documented(name: str) -> None:
    entry = BACKBONES.entry(name)
    assert entry.summary
    args = backbone_arguments(name)
    assert {"in_chans", "num_classes", "image_size"} <= set(args)
    assert args["num_classes"] == 10
    assert entry.obj.__doc__


def test_headless_construction_returns_features() -> None:
    model = create_backbone("conv4", in_chans=1, num_classes=0, image_size=28).eval()
    x = torch.rand(2, 1, 28, 28)
    assert isinstance(model.head, nn.Identity)
    assert model(x).shape == (2, 64)


def test_unknown_option_is_a_recipe_error_naming_allowed_options() -> None:
    with pytest.raises(RecipeError, match=r"hiden.*Allowed: .*hidden.*norm"):
        create_backbone("dann_cnn", hiden=64)
    with pytest.raises(RecipeError, match="pretrained"):
        create_backbone("resnet18", pretrained=True)  # resnet18 takes weights_path


def test_bad_values_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match="image_size"):
        create_backbone("dann_cnn", image_size=8)  # too small for two 5x5 convs and a pool
    with pytest.raises(RecipeError, match="in_chans"):
        create_backbone("lenet", in_chans=0)
    with pytest.raises(RecipeError, match="hidden"):
        create_backbone("mlp", hidden=256)
    for name in BACKBONES.names():
        with pytest.raises(RecipeError, match="num_classes"):
            create_backbone(name, num_classes=-1)


# --------------------------------------------------------------------------- sizes
def test_dann_cnn_sizes() -> None:
    # 3x28x28 -> conv5 24 -> conv5 20 -> pool 10: flatten 64*10*10 = 6400.
    # Parameters: conv 3*32*25+32 = 2,432; conv 32*64*25+64 = 51,264; fc 6400*128+128 =
    # 819,328; fc 128*128+128 = 16,512; head 128*10+10 = 1,290. Total 890,826.
    m = create_backbone("dann_cnn", in_chans=3, image_size=28)
    assert m.num_features == 128
    assert _n_params(m) == 890_826
    assert sum(isinstance(x, nn.Linear) for x in m.modules()) == 3
    # norm=True adds BN2d(32), BN2d(64), 2 x BN1d(128): 2*(32+64+128+128) = 704 parameters.
    assert _n_params(create_backbone("dann_cnn", in_chans=3, image_size=28, norm=True)) == 891_530
    # 3x32x32 -> flatten 64*12*12 = 9216.
    m32 = create_backbone("dann_cnn", in_chans=3, image_size=32)
    assert m32.fc[0].in_features == 9216
    assert m32(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_ganin_cnn_is_the_papers_mnist_network() -> None:
    # 3x32x32 -> conv5 28 -> pool 14 -> conv5 10 -> pool 5: trunk 48*5*5 = 1200.
    # Parameters: conv 3*32*25+32 = 2,432; conv 32*48*25+48 = 38,448; fc 1200*100+100 =
    # 120,100; fc 100*100+100 = 10,100; head 100*10+10 = 1,010. Total 172,090.
    m = create_backbone("ganin_cnn", in_chans=3, image_size=32)
    assert (m.trunk_features, m.num_features, _n_params(m)) == (1200, 100, 172_090)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == [32, 48]
    m28 = create_backbone("ganin_cnn", in_chans=1, image_size=28)  # 28 -> 24 -> 12 -> 8 -> 4
    assert m28.trunk_features == 48 * 4 * 4
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(m28.features_from_trunk(m28.forward_trunk(x)), m28.forward_features(x))
    # norm=True: BN2d(32), BN2d(48), 2 x BN1d(100) = 2*(32+48+100+100) = 560 more parameters
    bn = create_backbone("ganin_cnn", in_chans=3, image_size=32, norm=True)
    assert _n_params(bn) == 172_090 + 560
    kinds = [type(x) for x in bn.modules()]
    assert kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.BatchNorm1d) == 2
    with pytest.raises(RecipeError, match="too small"):
        create_backbone("ganin_cnn", image_size=12)


def test_ganin_cnn_input_norm_ignores_each_images_colour_and_contrast_and_keeps_the_keys() -> None:
    torch.manual_seed(0)
    plain = create_backbone("ganin_cnn", in_chans=3, image_size=32)
    inorm = create_backbone("ganin_cnn", in_chans=3, image_size=32, input_norm=True)
    assert list(inorm.state_dict()) == list(plain.state_dict()) and _n_params(inorm) == _n_params(plain)
    inorm.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    # a per-image, per-channel gain and offset (a photo background's tint, inverted contrast excluded)
    gain = torch.rand(4, 3, 1, 1) * 2 + 0.2
    offset = torch.rand(4, 3, 1, 1) - 0.5
    inorm.eval()
    plain.eval()
    assert torch.allclose(inorm(gain * x + offset), inorm(x), atol=1e-4)
    assert not torch.allclose(plain(gain * x + offset), plain(x), atol=1e-2)
    standard = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(inorm(x), plain(standard), atol=1e-4)


def test_dann_cnn_norm_has_batchnorm_everywhere() -> None:
    m = create_backbone("dann_cnn", norm=True)
    kinds = [type(x) for x in m.modules()]
    assert kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.BatchNorm1d) == 2
    assert nn.BatchNorm2d not in [type(x) for x in create_backbone("dann_cnn").modules()]


def test_conv4_and_lenet_and_mlp_sizes() -> None:
    assert create_backbone("conv4", in_chans=1, image_size=28).num_features == 64
    m = create_backbone("conv4", in_chans=3, image_size=84, num_classes=0)
    assert m.num_features == 1600  # 64 * 5 * 5, as in Snell et al.'s mini-ImageNet setting
    assert _n_params(m) == 1_792 + 128 + 3 * (36_928 + 128)  # the seed's summary table
    assert create_backbone("conv4", image_size=84, hidden=32).num_features == 32 * 25
    le = create_backbone("lenet", in_chans=1, image_size=28)
    assert le.num_features == 84 and le.fc[0].in_features == 400  # 28 px padded to LeCun's 32
    assert _n_params(le) == 61_706
    assert le.fc[0].in_features == create_backbone("lenet", image_size=32).fc[0].in_features
    mlp = create_backbone("mlp", in_chans=3, image_size=8, hidden=[32, 16])  # list, as from YAML
    assert mlp.in_features == 192 and mlp.num_features == 16
    assert create_backbone("mlp", hidden=()).num_features == 784


@pytest.mark.parametrize(
    ("depth", "params"), [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)]
)
def test_resnet_cifar_parameter_counts(depth: int, params: int) -> None:
    m = create_backbone(f"resnet_cifar{depth}")
    assert _n_params(m) == params  # akamaster's README: 0.27M / 0.46M / 0.66M / 0.85M
    assert m.num_features == 64 and m.pretrained_info is None


def test_resnet18_variants() -> None:
    small = create_backbone("resnet18", in_chans=1, image_size=28)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small.conv1.in_channels == 1 and isinstance(small.maxpool, nn.Identity)
    big = create_backbone("resnet18", small_input=False, num_classes=1000)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    tv = torchvision.models.resnet18(weights=None)
    assert _n_params(big) == _n_params(tv) == 11_689_512
    assert big.num_features == 512


# --------------------------------------------------------------------------- akamaster weights
def _file_state(path: Path) -> dict[str, torch.Tensor]:
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module."): v for k, v in raw.items()}


def _akamaster_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """akamaster's resnet.py forward (eval mode), written with functional ops on the raw file."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"]
        )

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    in_planes = 16
    for li, planes in enumerate((16, 32, 64), start=1):
        for b in range(n):
            stride = 2 if li > 1 and b == 0 else 1
            p = f"layer{li}.{b}"
            h = F.relu(
                bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1")
            )
            h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if stride != 1 or in_planes != planes:
                sc = F.pad(
                    out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0
                )
            else:
                sc = out
            out = F.relu(h + sc)
            in_planes = planes
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


@pytest.mark.parametrize("depth", sorted(AKAMASTER))
def test_akamaster_checkpoints_load_strictly(shared_data: Path, depth: int) -> None:
    fname, best = AKAMASTER[depth]
    path = shared_data / "pretrained" / fname
    model = create_backbone(f"resnet_cifar{depth}", pretrained=True, data_dir=str(shared_data))
    info = model.pretrained_info
    assert info is not None and info["head_loaded"] is True
    assert info["best_prec1"] == pytest.approx(best, abs=1e-4)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    # Every tensor of the file landed in the model, under its converted name.
    file_sd = _file_state(path)
    ours = model.state_dict()
    for key, value in file_sd.items():
        name = "head." + key.removeprefix("linear.") if key.startswith("linear.") else key
        assert torch.equal(ours[name], value), name
    # ... and every parameter/buffer of the model came from the file (num_batches_tracked
    # is not in these pre-0.4.1 checkpoints).
    assert len(file_sd) == sum(not k.endswith("num_batches_tracked") for k in ours)

    # BatchNorm running statistics are the trained ones, not the defaults (0 / 1).
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 * 3 * ((depth - 2) // 6)
    for m in bns:
        assert not torch.all(m.running_mean == 0)
        assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))

    # Functional check: our network computes akamaster's function on the loaded weights.
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = _akamaster_forward(file_sd, x, (depth - 2) // 6)
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert ref.std(dim=1).min() > 0.1  # not a constant (untrained-looking) output


def test_pretrained_with_other_classes_keeps_fresh_head(shared_data: Path) -> None:
    path = shared_data / "pretrained" / AKAMASTER[20][0]
    model = create_backbone("resnet_cifar20", num_classes=7, pretrained=str(path))
    assert model.head.weight.shape == (7, 64)
    assert model.pretrained_info is not None and model.pretrained_info["head_loaded"] is False
    file_sd = _file_state(path)
    assert torch.equal(model.layer3[2].conv2.weight, file_sd["layer3.2.conv2.weight"])
    headless = create_backbone("resnet_cifar20", num_classes=0, pretrained=str(path))
    assert isinstance(headless.head, nn.Identity)
    assert headless(torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_pretrained_needs_rgb_and_gray_works_from_scratch() -> None:
    with pytest.raises(RecipeError, match="in_chans must be 3"):
        create_backbone("resnet_cifar20", in_chans=1, pretrained=True)
    m = create_backbone("resnet_cifar20", in_chans=1, image_size=28)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_missing_pretrained_file_names_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"pretrained.resnet32-d509ac18\.th") as err:
        create_backbone("resnet_cifar32", pretrained=True, data_dir=str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_tampered_checkpoint_is_rejected(shared_data: Path, tmp_path: Path) -> None:
    fname = AKAMASTER[20][0]
    bad = tmp_path / "pretrained" / fname
    bad.parent.mkdir()
    shutil.copyfile(shared_data / "pretrained" / fname, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed, somewhere in the tensors
    bad.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataError, match=fname) as err:
        create_backbone("resnet_cifar20", pretrained=str(bad))
    assert "12fca82f" in str(err.value) and actual in str(err.value)
    with pytest.raises(DataError, match="Checksum mismatch"):
        create_backbone("resnet_cifar20", pretrained=True, data_dir=str(tmp_path))


class _NotATensor:
    """A class a weights-only load must refuse to instantiate."""


def test_unsafe_or_corrupt_files_are_data_errors(tmp_path: Path) -> None:
    evil = tmp_path / "evil.th"
    torch.save({"state_dict": {}, "payload": _NotATensor()}, evil)
    with pytest.raises(DataError, match="weights_only=True"):
        create_backbone("resnet_cifar20", pretrained=str(evil))
    truncated = tmp_path / "truncated.th"
    torch.save({"state_dict": create_backbone("resnet_cifar20").state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated"):
        create_backbone("resnet_cifar20", pretrained=str(truncated))


def test_key_and_shape_mismatches_are_named(shared_data: Path, tmp_path: Path) -> None:
    raw = torch.load(
        shared_data / "pretrained" / AKAMASTER[20][0], map_location="cpu", weights_only=True
    )
    sd = dict(raw["state_dict"])
    del sd["module.layer1.0.conv1.weight"]
    sd["module.extra.weight"] = torch.zeros(1)
    edited = tmp_path / "edited.th"  # no hash in the name: only key/shape checks apply
    torch.save({"state_dict": sd, "best_prec1": 1.0}, edited)
    with pytest.raises(DataError, match=r"layer1\.0\.conv1\.weight.*extra\.weight"):
        create_backbone("resnet_cifar20", pretrained=str(edited))
    # A deeper network's file into ResNet-20: unexpected layer1.3... keys.
    with pytest.raises(DataError, match=r"unexpected keys .*layer1\.3"):
        create_backbone(
            "resnet_cifar20", pretrained=str(shared_data / "pretrained" / AKAMASTER[32][0])
        )
    sd = dict(raw["state_dict"])
    sd["module.bn1.weight"] = torch.ones(17)
    reshaped = tmp_path / "reshaped.th"
    torch.save({"state_dict": sd}, reshaped)
    with pytest.raises(DataError, match=r"bn1\.weight: file \(17,\) vs model \(16,\)"):
        create_backbone("resnet_cifar20", pretrained=str(reshaped))


# --------------------------------------------------------------------------- torchvision weights
def test_resnet18_loads_local_torchvision_weights(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None, num_classes=1000)
    plain = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), plain)
    sha8 = hashlib.sha256(plain.read_bytes()).hexdigest()[:8]
    named = tmp_path / f"resnet18-{sha8}.pth"  # torch-hub naming: the hash is verified
    plain.rename(named)

    model = create_backbone(
        "resnet18", small_input=False, num_classes=1000, weights_path=str(named)
    )
    assert model.pretrained_info is not None and model.pretrained_info["head_loaded"]
    ours = model.state_dict()
    for key, value in tv.state_dict().items():
        name = "head." + key.removeprefix("fc.") if key.startswith("fc.") else key
        assert torch.equal(ours[name], value), name
    x = torch.rand(2, 3, 64, 64)
    model.eval(), tv.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5)

    fresh = create_backbone("resnet18", small_input=False, num_classes=7, weights_path=str(named))
    assert fresh.head.weight.shape == (7, 512) and not fresh.pretrained_info["head_loaded"]
    assert torch.equal(fresh.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)

    with pytest.raises(
        DataError, match=r"conv1\.weight: file \(64, 3, 7, 7\) vs model \(64, 3, 3, 3\)"
    ):
        create_backbone("resnet18", small_input=True, weights_path=str(named))

    wrong = tmp_path / "resnet18-00000000.pth"
    shutil.copyfile(named, wrong)
    with pytest.raises(
        DataError, match=r"resnet18-00000000\.pth.*expected SHA-256 starting with 00000000"
    ):
        create_backbone("resnet18", small_input=False, weights_path=str(wrong))


def test_conv4_pool_then_relu_equals_relu_then_pool_with_the_same_gradients() -> None:
    import torch
    from torch import nn

    from shiftlab.backbones import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("conv4", in_chans=1, num_classes=0, image_size=28, hidden=8)
    ref = nn.Sequential(*[m for blk in range(4) for m in (bb.encoder[4 * blk], bb.encoder[4 * blk + 1],
                                                          nn.ReLU(), nn.MaxPool2d(2))], nn.Flatten(1))
    x = torch.randn(6, 1, 28, 28)
    a, b = bb.forward_features(x), ref(x)
    assert torch.equal(a, b)
    ga = torch.autograd.grad(a.square().sum(), bb.encoder[0].weight)[0]
    gb = torch.autograd.grad(ref(x).square().sum(), bb.encoder[0].weight)[0]
    assert torch.allclose(ga, gb, atol=1e-6)
    assert [k for k in bb.state_dict() if k.startswith("encoder.")][:2] == ["encoder.0.weight", "encoder.0.bias"]
