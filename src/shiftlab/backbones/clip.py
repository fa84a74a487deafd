"""CLIP as a :class:`~shiftlab.backbones.base.Backbone`: an ``open_clip`` model whose
classifier is the text encoder applied to a prompt with a learnable context.

Why a wrapper? The test-time methods take a ``Backbone`` (``forward(x) -> logits``). A
CLIP model is not a classifier until it is given class names and a prompt; TPT (Shu et
al., NeurIPS 2022) then tunes the prompt's context vectors. :class:`ClipClassifier` is
that classifier, with the CoOp prompt (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022) that TPT tunes:

* ``prompt_k = [SOS] [V]_1 ... [V]_M  tokens("<class k>.")  [EOS]``, the ``M`` context
  vectors ``[V]`` (:attr:`ClipClassifier.ctx`, ``[M, width]``) shared by all classes and
  initialised from the token embeddings of ``prompt_init`` (TPT: ``"a photo of a"``,
  ``M = 4``);
* ``t_k = normalise(text_encoder(prompt_k))``, ``f = normalise(image_encoder(x))``,
  ``logits = exp(logit_scale) * f @ t^T`` (+ ``logit_bias`` for SigLIP-style models).

With the initial context the classifier is exactly CLIP zero-shot with the prompt
``"a photo of a {class}."``. The context is spliced into the text encoder by a forward
hook on the token embedding, registered only while :meth:`ClipClassifier.text_features`
runs, so the model's own ``encode_text`` does the rest (positional embedding, causal
transformer, pooling at the end-of-text token, projection) whatever the open_clip version.
Every CLIP weight is frozen (``requires_grad=False``); only :attr:`ClipClassifier.ctx` can
learn. Inputs are ``x: [B, 3, H, W]`` float in [0, 1] (1-channel images are repeated to
3): they are resized (shorter side, bicubic, antialiased) and centre-cropped to the
model's input size when they are not already that size, then normalised with the model's
mean and standard deviation (OpenAI's by default).

``open_clip`` is an optional dependency (``pip install shiftlab[clip]``); this module
imports it only when a model is loaded or wrapped.

Loading (:func:`load_clip_model`) builds the architecture from open_clip's config of that
name with no weights and no download, then reads a **local** checkpoint safely: a
``.safetensors`` file, or a state dict read by ``torch.load(weights_only=True)``. Nothing
is downloaded unless ``download=True`` (then ``pretrained`` may be an open_clip tag such
as ``"openai"``, fetched by open_clip from the Hugging Face hub).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shiftlab.backbones.base import Backbone
from shiftlab.errors import DataError, RecipeError

log = logging.getLogger(__name__)

__all__ = [
    "ClipClassifier",
    "load_clip_classifier",
    "load_clip_model",
    "read_classnames",
    "require_open_clip",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


def require_open_clip() -> Any:
    """The ``open_clip`` module, or an :class:`ImportError` saying how to install it."""
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(
            "CLIP models need the optional package open_clip: `pip install shiftlab[clip]` "
            "(or `pip install open-clip-torch`)."
        ) from exc
    return open_clip


# --------------------------------------------------------------------------- loading
def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a checkpoint without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        if _is_torchscript(path):
            raise DataError(
                f"{path} is a TorchScript archive (the format of OpenAI's original CLIP "
                "files). shiftlab does not load TorchScript, which can run code. Use the "
                "open_clip weights instead, e.g. `open_clip_model.safetensors` from the "
                "Hugging Face repository timm/vit_base_patch16_clip_224.openai for "
                "ViT-B-16 (model name ViT-B-16-quickgelu, or quick_gelu=True)."
            )
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated file, pickle with objects, not a checkpoint
            raise DataError(
                f"{path} could not be read as a weights-only state dict ({type(exc).__name__}: "
                f"{exc}). Expected a .safetensors file or a torch state dict (.bin/.pt)."
            ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise DataError(f"{path} does not hold a state dict of tensors.")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's extra entries
        sd.pop(key, None)
    return sd


def _checkpoint_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in _CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    raise DataError(
        f"CLIP checkpoint folder {path} holds none of {', '.join(_CHECKPOINT_NAMES)}."
    )


def _load_weights(model: nn.Module, path: Path, model_name: str) -> None:
    open_clip = require_open_clip()
    from open_clip import model as oc_model

    sd = _read_state_dict(path)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = oc_model.convert_to_custom_text_state_dict(sd)
    scale = getattr(model, "logit_scale", None)
    if "logit_scale" in sd and scale is not None and sd["logit_scale"].ndim != scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(scale.shape)
    bias = getattr(model, "logit_bias", None)
    if bias is not None and "logit_bias" not in sd:
        sd["logit_bias"] = torch.zeros_like(bias)
    for fn in ("resize_pos_embed", "resize_text_pos_embed"):
        if hasattr(oc_model, fn):
            getattr(oc_model, fn)(sd, model)
    hint = "Check the model name (OpenAI weights: the -quickgelu variant)."
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).split("\n", 1)[-1].strip()[:500]
        raise DataError(
            f"{path} does not match open_clip model {model_name!r} (open_clip "
            f"{open_clip.__version__}): {detail} {hint}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise DataError(
            f"{path} does not match open_clip model {model_name!r} (open_clip "
            f"{open_clip.__version__}): missing {result.missing_keys[:5]}"
            f"{' ...' if len(result.missing_keys) > 5 else ''}, unexpected "
            f"{result.unexpected_keys[:5]}{' ...' if len(result.unexpected_keys) > 5 else ''}. {hint}"
        )
    log.info("loaded CLIP weights %s into %s", path, model_name)


class _DropRandomInitWarning(logging.Filter):
    """Hides open_clip's "initialized randomly" warning while the architecture is built
    for weights that are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _create(open_clip: Any, model_name: str, pretrained: str | None, **kwargs: Any) -> nn.Module:
    import inspect

    allowed = inspect.signature(open_clip.create_model).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in allowed}
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "not found" in str(exc) and model_name not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
            raise RecipeError(
                f"open_clip has no model {model_name!r}. Close names: {', '.join(close) or '-'} "
                "(all: `python -c 'import open_clip; print(open_clip.list_models())'`)."
            ) from None
        raise


def load_clip_model(
    model_name: str,
    pretrained: str | Path | None,
    *,
    download: bool = False,
    quick_gelu: bool = False,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
) -> tuple[nn.Module, Callable[..., Tensor]]:
    """An ``open_clip`` model with local weights, frozen, in eval mode, and its tokenizer.

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``), e.g.
            ``"ViT-B-16"``; OpenAI's weights need QuickGELU (``"ViT-B-16-quickgelu"`` or
            ``quick_gelu=True``).
        pretrained: path to a checkpoint file (``.safetensors``, or a torch state dict
            ``.bin/.pt`` read with ``weights_only=True``) or to a folder holding
            ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``; with
            ``download=True`` also an open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``,
            see ``open_clip.list_pretrained()``); ``None``: random weights (tests).
        download: allow open_clip to fetch ``pretrained`` (a tag) from the internet.
        quick_gelu: use QuickGELU activations (OpenAI-trained weights).
        device: where the model goes.
        cache_dir: open_clip's download cache (``download=True`` only).

    Returns:
        ``(model, tokenizer)``: ``tokenizer(texts, context_length) -> [N, L]`` int64.

    Raises:
        ImportError: open_clip is not installed (``pip install shiftlab[clip]``).
        DataError: the checkpoint is missing, unreadable, unsafe (TorchScript) or does not
            match the architecture.
        RecipeError: unknown model name.
    """
    open_clip = require_open_clip()
    offline = {"pretrained_image": False, "pretrained_text": False, "pretrained_hf": False,
               "force_quick_gelu": quick_gelu}
    path = Path(pretrained).expanduser() if pretrained is not None else None
    if path is not None and path.exists():
        ckpt = _checkpoint_file(path)
        quiet = _DropRandomInitWarning()
        logging.getLogger().addFilter(quiet)
        try:
            model = _create(open_clip, model_name, None, **offline)
        finally:
            logging.getLogger().removeFilter(quiet)
        _load_weights(model, ckpt, model_name)
    elif pretrained is None:
        model = _create(open_clip, model_name, None, **offline)
    elif download:
        model = _create(open_clip, model_name, str(pretrained), force_quick_gelu=quick_gelu,
                        cache_dir=None if cache_dir is None else str(cache_dir))
    else:
        raise DataError(
            f"CLIP checkpoint {path} does not exist. Pass a local open_clip checkpoint "
            "(.safetensors, or a state dict .bin/.pt; e.g. open_clip_model.safetensors from "
            "the Hugging Face repository timm/vit_base_patch16_clip_224.openai for "
            "ViT-B-16-quickgelu), or an open_clip pretrained tag such as 'openai' with "
            "`--download` (download=True)."
        )
    cfg = open_clip.get_model_config(model_name) or {}
    if (cfg.get("text_cfg") or {}).get("hf_tokenizer_name") and not download:
        raise DataError(
            f"open_clip model {model_name!r} uses a Hugging Face tokenizer, which would be "
            "downloaded; pass download=True (`--download`) or use a model with CLIP's own "
            "tokenizer (ViT-*, RN*)."
        )
    tokenizer = open_clip.get_tokenizer(model_name)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def read_classnames(spec: str | Path | Sequence[str], folder_classes: Sequence[str] | None = None) -> list[str]:
    """Class names from a recipe: a list, ``"imagenet"`` (open_clip's 1000 CLIP ImageNet
    names, in class-index order), or a text file with one name per line (index order).

    Args:
        spec: the names, ``"imagenet"`` or a file path.
        folder_classes: the class folders of an image folder in label order (as
            ``folder:PATH`` assigns labels: sorted names). When every folder name is an
            integer (ImageNet-V2: ``0`` ... ``999``) it is the index into the names, so the
            names are returned in the folders' label order (``"0", "1", "10", "100", ...``).

    Raises:
        DataError: missing file, or a folder index outside the names.
    """
    if isinstance(spec, (str, Path)):
        if str(spec) == "imagenet":
            names = list(require_open_clip().IMAGENET_CLASSNAMES)
        else:
            p = Path(spec).expanduser()
            if not p.is_file():
                raise DataError(f"class-name file {p} does not exist (one class name per line).")
            names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [str(n) for n in spec]
    if folder_classes is not None and all(str(c).isdigit() for c in folder_classes):
        idx = [int(c) for c in folder_classes]
        if max(idx) >= len(names):
            raise DataError(f"class folder {max(idx)} but only {len(names)} class names.")
        names = [names[i] for i in idx]
    return names


# --------------------------------------------------------------------------- classifier
class _PromptHead(nn.Module):
    """``head(features) == logits``: the text classifier of the owning
    :class:`ClipClassifier` (a plain, unregistered reference, so no weight is listed twice)."""

    def __init__(self, owner: ClipClassifier) -> None:
        super().__init__()
        self.__dict__["_owner"] = owner

    def forward(self, features: Tensor) -> Tensor:
        owner: ClipClassifier = self.__dict__["_owner"]
        return owner.logits(features, owner.text_features())


class ClipClassifier(Backbone):
    """CLIP as a classifier over class names with a learnable prompt context (CoOp / TPT).

    Args:
        model: an ``open_clip`` ``CLIP`` or ``CustomTextCLIP`` (with open_clip's own text
            transformer, i.e. a ``token_embedding``); its weights are frozen.
        tokenizer: ``tokenizer(texts, context_length) -> [N, L]`` int64 (open_clip's).
        classnames: one name per class, in label order (``_`` reads as a space).
        prompt_init: the context's initial words (TPT: ``"a photo of a"``); ``None``:
            ``n_ctx`` random vectors (N(0, 0.02^2), CoOp's random init).
        n_ctx: the number of context vectors when ``prompt_init`` is ``None``.
        mean, std: input normalisation (default: the model's, else OpenAI's).

    Attributes:
        ctx: ``[n_ctx, width]`` the learnable context (the only trainable parameter).
        tokens: ``[C, L]`` the tokenised prompts (``prompt_init`` or ``X``s + class name).
        image_size: ``(h, w)`` of the image encoder's input.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., Tensor],
        classnames: Sequence[str],
        *,
        prompt_init: str | None = "a photo of a",
        n_ctx: int = 4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.clip = model
        self.clip.requires_grad_(False)
        self.tokenizer = tokenizer
        self.in_chans = 3
        emb = getattr(model, "token_embedding", None)
        if emb is None:
            emb = getattr(getattr(model, "text", None), "token_embedding", None)
        if not isinstance(emb, nn.Embedding):
            raise RecipeError(
                f"{type(model).__name__}: prompt tuning needs open_clip's own text transformer "
                "(a token_embedding); models with Hugging Face text towers are not supported."
            )
        self.__dict__["_embedding"] = emb  # inside self.clip; not registered a second time
        text = getattr(model, "text", model)
        self.context_length = int(getattr(text, "context_length", None) or getattr(model, "context_length", 77))
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.num_features = int(getattr(visual, "output_dim", 0)) or int(emb.embedding_dim)
        pp: dict[str, Any] = {}
        try:
            from open_clip import get_model_preprocess_cfg

            pp = dict(get_model_preprocess_cfg(model))
        except ImportError:  # pragma: no cover - open_clip is imported by the caller
            pass
        mean = mean if mean is not None else (pp.get("mean") or OPENAI_MEAN)
        std = std if std is not None else (pp.get("std") or OPENAI_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        if prompt_init is not None:
            words = prompt_init.replace("_", " ").strip()
            ids = self._tokenize([words])[0]
            n_ctx = int((ids != 0).sum().item()) - 2  # minus SOS and EOS
            if n_ctx < 1:
                raise RecipeError(f"prompt_init {prompt_init!r} has no tokens")
            with torch.no_grad():
                init = emb(ids[None].to(emb.weight.device))[0, 1 : 1 + n_ctx].float().clone()
            self.prefix = words
        else:
            if n_ctx < 1:
                raise RecipeError(f"n_ctx must be >= 1, got {n_ctx}")
            init = torch.randn(n_ctx, emb.embedding_dim) * 0.02
            self.prefix = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(init.to(emb.weight.device))
        self.head = _PromptHead(self)
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None
        self.set_classnames(classnames)

    # -- prompts
    def _tokenize(self, texts: list[str]) -> Tensor:
        try:
            ids = self.tokenizer(texts, context_length=self.context_length)
        except TypeError:
            ids = self.tokenizer(texts)
        return torch.as_tensor(ids, dtype=torch.long)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Tokenise ``"<prompt_init> <class>."`` for every class (``num_classes`` follows)."""
        names = [str(n).replace("_", " ") for n in classnames]
        if not names:
            raise RecipeError("a CLIP classifier needs at least one class name")
        prompts = [f"{self.prefix} {n}." for n in names]
        tokens = self._tokenize(prompts)
        if bool((tokens[:, -1] != 0).any()):  # filled to the end: (possibly) truncated
            longest = names[int((tokens[:, -1] != 0).int().argmax())]
            raise RecipeError(
                f"the prompt for class {longest!r} does not fit the text encoder's "
                f"{self.context_length} tokens; shorten the class name."
            )
        self.classnames = names
        self.num_classes = len(names)
        self.register_buffer("tokens", tokens.to(self.ctx.device), persistent=False)
        self._cache = None

    def reset_head(self, num_classes: int) -> None:
        """Not available: a CLIP classifier's classes are its class names (:meth:`set_classnames`)."""
        raise RecipeError("a CLIP classifier's classes come from its class names; use set_classnames")

    # -- encoders
    def text_features(self) -> Tensor:
        """``[C, D]`` unit-norm text features of the prompts with the current :attr:`ctx`
        (differentiable in ``ctx``). Without autograd the result is cached until ``ctx``
        changes (its version counter) so zero-shot evaluation encodes the prompts once."""
        key = (self.ctx._version, self.ctx.data_ptr(), self.ctx.device, self.tokens.data_ptr())
        grad = torch.is_grad_enabled() and self.ctx.requires_grad
        if not grad and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        ctx, n = self.ctx, self.n_ctx

        def splice(_module: nn.Module, _inputs: Any, out: Tensor) -> Tensor:
            c = ctx.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
            return torch.cat([out[:, :1], c, out[:, 1 + n :]], dim=1)

        handle = self._embedding.register_forward_hook(splice)
        try:
            t = self.clip.encode_text(self.tokens)
        finally:
            handle.remove()
        t = F.normalize(t.float(), dim=-1)
        if not grad:
            self._cache = (key, t)
        return t

    def prepare(self, x: Tensor) -> Tensor:
        """``[B, 1|3, H, W]`` in [0, 1] -> ``[B, 3, h, w]`` at the model's input size (shorter
        side resized, bicubic antialiased, then centre crop), not yet normalised."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"CLIP expects images [B, 3, H, W] (or 1 channel), got {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = self.image_size
        if x.shape[-2:] == (h, w):
            return x
        s = max(h / x.shape[-2], w / x.shape[-1])
        size = (max(h, round(x.shape[-2] * s)), max(w, round(x.shape[-1] * s)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        return x[:, :, top : top + h, left : left + w]

    def encode_images(self, x: Tensor) -> Tensor:
        """``x: [B, 3, h, w]`` in [0, 1] at :attr:`image_size` -> unit-norm ``[B, D]``."""
        dtype = next(self.clip.visual.parameters()).dtype
        z = ((x - self.mean) / self.std).to(dtype)
        return F.normalize(self.clip.encode_image(z).float(), dim=-1)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` in [0, 1] -> unit-norm image features ``[B, D]``."""
        return self.encode_images(self.prepare(x))

    def logits(self, features: Tensor, text: Tensor) -> Tensor:
        """``exp(logit_scale) f t^T`` (+ bias): ``[B, D], [C, D] -> [B, C]``."""
        out = self.clip.logit_scale.exp().float() * features @ text.T
        bias = getattr(self.clip, "logit_bias", None)
        return out + bias.float() if bias is not None else out

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, C, H, W]`` in [0, 1] -> logits ``[B, num_classes]``."""
        return self.logits(self.forward_features(x), self.text_features())


def load_clip_classifier(
    model_name: str,
    pretrained: str | Path | None,
    classnames: str | Path | Sequence[str],
    *,
    prompt_init: str | None = "a photo of a",
    n_ctx: int = 4,
    download: bool = False,
    quick_gelu: bool = False,
    device: str | torch.device = "cpu",
) -> ClipClassifier:
    """:func:`load_clip_model` + :class:`ClipClassifier` (``classnames`` as in
    :func:`read_classnames`)."""
    model, tokenizer = load_clip_model(model_name, pretrained, download=download,
                                       quick_gelu=quick_gelu, device=device)
    names = read_classnames(classnames)
    return ClipClassifier(model, tokenizer, names, prompt_init=prompt_init, n_ctx=n_ctx)
