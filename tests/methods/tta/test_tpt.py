"""TPT on a tiny randomly initialised open_clip model built from a config (no download):
the prompt context and the predictions change, ``reset`` restores both bit-exactly, the
confidence selection keeps the right views, gradients reach only the context; and the
CLIP loader (local checkpoints only, read safely)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from shiftlab.backbones.clip import (
    ClipClassifier,
    load_clip_model,
    read_classnames,
    require_open_clip,
)
from shiftlab.errors import DataError, RecipeError
from shiftlab.losses.entropy import entropy
from shiftlab.methods import METHODS, create_method
from shiftlab.methods.tta.tpt import Tpt, n_confident, select_confident

open_clip = pytest.importorskip("open_clip")

VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
NAMES = ["cat", "dog", "car", "tree", "ship"]


@pytest.fixture(scope="module")
def tiny_clip() -> nn.Module:
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=64, vision_cfg=VISION, text_cfg=TEXT)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tokenizer() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=TEXT["context_length"])


@pytest.fixture
def classifier(tiny_clip: nn.Module, tokenizer: object) -> ClipClassifier:
    return ClipClassifier(copy.deepcopy(tiny_clip), tokenizer, NAMES)


def _images(n: int, seed: int = 0, size: int = 40) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_initial_prompt_is_clip_zero_shot(classifier: ClipClassifier, tokenizer: object) -> None:
    """With the initial context the classifier is CLIP with the prompt "a photo of a {c}."."""
    m = classifier.clip
    assert classifier.n_ctx == 4 and classifier.ctx.shape == (4, 64)
    x = _images(3, size=32)
    with torch.no_grad():
        text = m.encode_text(tokenizer([f"a photo of a {n}." for n in NAMES]), normalize=True)
        z = (x - classifier.mean) / classifier.std
        expected = m.logit_scale.exp() * m.encode_image(z, normalize=True) @ text.T
        got = classifier(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(classifier.head(classifier.forward_features(x)), got)
    # other input sizes and grey images are resized / repeated to the model's input
    assert classifier(_images(2, size=50)).shape == (2, 5)
    assert classifier(torch.rand(2, 1, 24, 40)).shape == (2, 5)


def test_tpt_tunes_the_context_changes_predictions_and_reset_is_bit_exact(classifier: ClipClassifier) -> None:
    method = create_method("tpt", backbone=classifier, num_classes=len(NAMES))
    assert isinstance(method, Tpt) and dataclasses.is_dataclass(method.hparams)
    assert method.hparams.n_views == 64 and method.opt is not None
    ctx0 = classifier.ctx.detach().clone()
    state0 = {k: v.detach().clone() for k, v in method.state_dict().items()}
    x = _images(8)
    zero_shot = method.predict(x)
    tuned = method.forward_and_adapt(x)
    assert tuned.shape == (8, 5) and torch.isfinite(tuned).all()
    assert not torch.equal(classifier.ctx, ctx0)  # the context moved (left at the last image's)
    assert not torch.allclose(tuned, zero_shot, atol=1e-3)
    # on these (seeded) images test-time tuning flips some predictions
    assert (tuned.argmax(1) != zero_shot.argmax(1)).any()
    method.reset()
    assert torch.equal(classifier.ctx, ctx0)
    after = method.state_dict()
    assert after.keys() == state0.keys()
    assert all(torch.equal(v, state0[k]) for k, v in after.items())
    assert torch.equal(method.predict(x), zero_shot)
    # episodic per image: a fresh start per sample, so a batch equals its images one by one
    assert torch.equal(method.forward_and_adapt(x), tuned)
    singles = torch.cat([method.forward_and_adapt(x[i : i + 1]) for i in range(3)])
    assert torch.equal(singles, tuned[:3])


def test_confidence_selection_keeps_the_lowest_entropy_views(classifier: ClipClassifier) -> None:
    assert n_confident(64, 0.1, "floor") == 6  # the authors' int(64 * 0.1)
    assert n_confident(64, 0.1, "ceil") == math.ceil(0.1 * 64) == 7
    assert n_confident(5, 0.1, "floor") == 1 and n_confident(10, 1.0, "ceil") == 10
    method = create_method("tpt", backbone=classifier, num_classes=5,
                           hparams={"selection_round": "ceil"})
    x = _images(1, seed=3)
    method.reset()
    with torch.no_grad():
        views = method.views(x)
        assert views.shape == (64, 3, 32, 32)
        assert torch.equal(views[0], classifier.prepare(x)[0])  # view 0 is the image itself
        logits = classifier.logits(classifier.encode_images(views), classifier.text_features())
    method.forward_and_adapt(x)  # resets, makes the same views (same seed), selects
    kept = method.last_selected
    assert kept is not None and kept.numel() == math.ceil(0.1 * 64) == 7
    assert torch.equal(kept, select_confident(logits, 7))
    ent = entropy(logits)
    rest = torch.ones(64, dtype=torch.bool)
    rest[kept] = False
    assert ent[kept].max() <= ent[rest].min()


def test_gradients_reach_only_the_context(classifier: ClipClassifier) -> None:
    method = create_method("tpt", backbone=classifier, num_classes=5, hparams={"n_views": 16})
    method.forward_and_adapt(_images(1))
    assert [p for g in method.opt.param_groups for p in g["params"]] == [classifier.ctx]
    assert classifier.ctx.grad is not None and classifier.ctx.grad.abs().sum() > 0
    for name, p in method.named_parameters():
        if p is not classifier.ctx:
            assert not p.requires_grad and p.grad is None, name
    assert isinstance(method.optimizer_factory, type(Tpt.default_optimizer))
    assert Tpt.default_optimizer.name == "adamw" and Tpt.default_optimizer.lr == 5e-3


def test_augmix_views_and_several_steps_run(classifier: ClipClassifier) -> None:
    method = create_method("tpt", backbone=classifier, num_classes=5,
                           hparams={"n_views": 8, "augmix": True, "steps": 2, "selection_p": 0.5})
    assert method.forward_and_adapt(_images(2)).shape == (2, 5)
    assert method.last_selected.numel() == 4


def test_tpt_needs_a_clip_backbone_and_matching_classes(classifier: ClipClassifier) -> None:
    from tta_support import small_bn_cnn

    assert METHODS.entry("tpt").tags["family"] == "tta" and Tpt.backbone_kind == "clip"
    with pytest.raises(RecipeError, match="CLIP"):
        create_method("tpt", backbone=small_bn_cnn(), num_classes=10)
    with pytest.raises(RecipeError, match="class names"):
        create_method("tpt", backbone=classifier, num_classes=10)
    with pytest.raises(RecipeError, match="selection_p"):
        create_method("tpt", backbone=classifier, num_classes=5, hparams={"selection_p": 0.0})
    with pytest.raises(RecipeError, match="no hyper-parameter"):
        create_method("tpt", backbone=classifier, num_classes=5, hparams={"lr": 0.1})


def test_random_context_init_and_class_name_changes(tiny_clip: nn.Module, tokenizer: object) -> None:
    torch.manual_seed(0)
    clf = ClipClassifier(copy.deepcopy(tiny_clip), tokenizer, ["a_b", "c"], prompt_init=None, n_ctx=3)
    assert clf.ctx.shape == (3, 64) and clf.classnames == ["a b", "c"]
    assert clf(_images(2, size=32)).shape == (2, 2)
    clf.set_classnames(NAMES)
    assert clf.num_classes == 5 and clf(_images(2, size=32)).shape == (2, 5)
    with pytest.raises(RecipeError, match="does not fit"):
        clf.set_classnames(["a very long class name that cannot fit in sixteen tokens at all"])


# ----------------------------------------------------------------------------- loading
@pytest.fixture
def registered_config(tmp_path: Path) -> str:
    """A tiny architecture registered with open_clip under a test-only name."""
    name = "shiftlab-test-tiny"
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / f"{name}.json").write_text(json.dumps({"embed_dim": 64, "vision_cfg": VISION, "text_cfg": TEXT}))
    open_clip.add_model_config(cfg / f"{name}.json")
    return name


@pytest.mark.filterwarnings("ignore:.*pickle protocol:UserWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
def test_loader_reads_local_checkpoints_safely(tmp_path: Path, registered_config: str, tiny_clip: nn.Module) -> None:
    from safetensors.torch import save_file

    name = registered_config
    sd = {k: v.contiguous() for k, v in tiny_clip.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.bin")
    (tmp_path / "dir").mkdir()
    save_file(sd, str(tmp_path / "dir" / "open_clip_model.safetensors"))
    for ckpt in ("w.safetensors", "w.bin", "dir"):
        model, tok = load_clip_model(name, tmp_path / ckpt)
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), (ckpt, k)
        assert tok(["a photo of a cat."]).shape == (1, 16)
    # not a weights-only file: refused, never unpickled
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Path("/")}, f)
    with pytest.raises(DataError, match="weights-only"):
        load_clip_model(name, tmp_path / "evil.pt")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "jit.pt"))
    with pytest.raises(DataError, match="TorchScript"):
        load_clip_model(name, tmp_path / "jit.pt")
    torch.save({"visual.proj": torch.zeros(1)}, tmp_path / "wrong.bin")
    with pytest.raises(DataError, match="does not match"):
        load_clip_model(name, tmp_path / "wrong.bin")
    with pytest.raises(DataError, match="does not exist.*download"):
        load_clip_model(name, tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match="does not exist.*download"):
        load_clip_model(name, "openai")  # a tag needs download=True: never fetched silently
    with pytest.raises(RecipeError, match="no model"):
        load_clip_model("ViT-B-16-typo", None)


def test_missing_open_clip_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"pip install shiftlab\[clip\]"):
        require_open_clip()


def test_read_classnames(tmp_path: Path) -> None:
    assert len(read_classnames("imagenet")) == 1000
    f = tmp_path / "names.txt"
    f.write_text("\n".join(f"c{i}" for i in range(12)) + "\n")
    folders = sorted(str(i) for i in range(12))  # "0", "1", "10", "11", "2", ...
    assert read_classnames(f, folders)[:4] == ["c0", "c1", "c10", "c11"]
    assert read_classnames(["x", "y"]) == ["x", "y"]
    with pytest.raises(DataError, match="does not exist"):
        read_classnames(tmp_path / "nope.txt")


def test_modified_resnet_clip_keeps_its_batchnorm_statistics(tokenizer: object) -> None:
    torch.manual_seed(0)
    rn = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 8,
                                                  "head_width": 16},
                        text_cfg={**TEXT, "width": 32, "layers": 1})
    clf = ClipClassifier(rn, tokenizer, ["cat", "dog"])
    before = {k: v.clone() for k, v in clf.state_dict().items() if "running" in k}
    assert before
    method = create_method("tpt", backbone=clf, num_classes=2, hparams={"n_views": 16})
    assert method.forward_and_adapt(_images(2, size=32)).shape == (2, 2)
    assert all(torch.equal(clf.state_dict()[k], v) for k, v in before.items())


def test_the_imagenet_recipe_matches_the_code() -> None:
    import inspect

    import yaml

    from shiftlab.backbones.clip import load_clip_classifier
    from shiftlab.methods import make_hparams
    from shiftlab.optim import OptimizerFactory

    recipe = yaml.safe_load((Path(__file__).parents[3] / "recipes/tta/imagenet_tpt.yaml").read_text())
    assert recipe["method"]["name"] == "tpt"
    assert make_hparams("tpt", recipe["method"]["hparams"]) == Tpt.Hparams()  # the paper's defaults
    assert OptimizerFactory(**recipe["method"]["optimizer"]) == Tpt.default_optimizer
    args = set(inspect.signature(load_clip_classifier).parameters)
    bb = {k for k in recipe["backbone"] if k != "name"} | {"classnames"}
    assert bb - {"model"} <= args and "model_name" in args
    assert read_classnames(recipe["data"]["classnames"])[:2] == ["tench", "goldfish"]
