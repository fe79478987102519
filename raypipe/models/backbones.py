"""Models: a 1-channel timm backbone plus the seed MLP head, pretrained weights from a file or the hub.

timm is always called with ``pretrained=False``; weights come from ``cfg.pretrained``: a local file
(.safetensors, or .pth/.pt/.bin loaded with ``weights_only=True`` so a checkpoint cannot run code), or
a Hugging Face hub name (``hf-hub:timm/convnext_tiny.fb_in1k``), which resolves through the standard
Hugging Face cache first (``HF_HOME`` / ``HF_HUB_CACHE``), reaches the network only when the weights
are not cached and ``HF_HUB_OFFLINE`` is unset, and loads safetensors only. RGB stems are adapted to grayscale by summing over input channels
(what timm does for ``in_chans=1``). Binary targets get one logit, k-class targets k logits.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from raypipe import faults
from raypipe.config import TrainConfig
from raypipe.errors import InputError
from raypipe.registry import Registry

IN_CHANS = 1
TINY_BACKBONES = frozenset({"test_convnext", "test_efficientnet", "test_vit", "resnet10t", "convnextv2_atto"})
HeadBuilder = Callable[[int, TrainConfig, int], nn.Module]
HEADS: Registry[HeadBuilder] = Registry("head")


@HEADS.register("mlp")
def mlp_head(in_features: int, cfg: TrainConfig, n_outputs: int) -> nn.Module:
    """The seeds' head: Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.Linear(in_features, cfg.head_hidden), nn.ReLU(inplace=True),
                         nn.Dropout(cfg.head_dropout), nn.Linear(cfg.head_hidden, n_outputs))


class Classifier(nn.Module):
    """``head(backbone(x))``; the backbone is a headless timm model returning pooled features."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def n_outputs(n_classes: int) -> int:
    """Binary = one logit (sigmoid); otherwise one logit per class (softmax)."""
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}")
    return 1 if n_classes == 2 else n_classes


def _create_backbone(cfg: TrainConfig) -> nn.Module:
    """Headless timm model; optional kwargs the architecture rejects are dropped and retried."""
    if not timm.is_model(cfg.backbone):
        raise ValueError(f"unknown backbone {cfg.backbone!r}; see timm.list_models()")
    optional: dict[str, Any] = {"img_size": cfg.image_size}  # ViT/Swin size their position tables
    if cfg.drop_path > 0:
        optional["drop_path_rate"] = cfg.drop_path
    while True:
        try:
            return timm.create_model(cfg.backbone, pretrained=False, in_chans=IN_CHANS, num_classes=0,
                                     **optional)
        except TypeError as exc:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if not m or m.group(1) not in optional:
                raise
            if m.group(1) == "drop_path_rate":
                warnings.warn(f"{cfg.backbone} has no drop path; drop_path={cfg.drop_path} ignored",
                              stacklevel=3)
            del optional[m.group(1)]


def build_model(cfg: TrainConfig, n_classes: int, *, warn_random: bool = True) -> Classifier:
    """Backbone ``cfg.backbone`` + MLP head for ``n_classes``; weights from ``cfg.pretrained`` if set.

    ``warn_random=False`` when the caller loads a full trained state right after (inference).
    """
    faults.raise_for(cfg)  # test hook: inert unless a fault test arms it
    backbone = _create_backbone(cfg)
    if cfg.pretrained:
        load_pretrained(backbone, resolve_pretrained(cfg.pretrained))
    elif warn_random and cfg.backbone not in TINY_BACKBONES:
        warnings.warn(f"{cfg.backbone}: no pretrained weights (cfg.pretrained is empty), training from "
                      f"random init", stacklevel=2)
    head = HEADS.get("mlp")(backbone.num_features, cfg, n_outputs(n_classes))
    return Classifier(backbone, head)


def model_spec(cfg: TrainConfig, n_classes: int) -> dict[str, Any]:
    """What rebuilds the architecture (``build_model_from_spec``); saved beside the weights."""
    return {"backbone": cfg.backbone, "head": {"name": "mlp", "hidden": cfg.head_hidden,
                                               "dropout": cfg.head_dropout},
            "image_size": cfg.image_size, "in_chans": IN_CHANS, "n_classes": n_classes,
            "n_outputs": n_outputs(n_classes)}


def build_model_from_spec(spec: dict[str, Any]) -> Classifier:
    """Random-init architecture from ``model_spec``; the caller then loads the trained state dict."""
    cfg = TrainConfig(backbone=spec["backbone"], image_size=spec["image_size"],
                      head_hidden=spec["head"]["hidden"], head_dropout=spec["head"]["dropout"])
    return build_model(cfg, spec["n_classes"], warn_random=False)


# ---------------------------------------------------------------- pretrained weights
HUB_PREFIX = "hf-hub:"
HUB_WEIGHTS = "model.safetensors"  # safetensors only from the hub: no pickle from the network


def resolve_pretrained(spec: str) -> Path:
    """``cfg.pretrained`` -> a local weights file. A hub name is looked up in the Hugging Face cache, then
    (unless ``HF_HUB_OFFLINE``) downloaded into it; neither -> one-line ``InputError``."""
    if not spec.startswith(HUB_PREFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError(path, "pretrained weights file not found (a local file, or hf-hub:<repo> for the "
                                   "Hugging Face hub)")
        return path
    import os

    from huggingface_hub import hf_hub_download

    repo = spec.removeprefix(HUB_PREFIX)
    # read now, not at import: the variables a user sets for this run are the ones that count
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    cache = Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(hf_hub_download(repo, HUB_WEIGHTS, cache_dir=cache, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (huggingface_hub raises several types)
        if offline:
            raise InputError(spec, f"no {HUB_WEIGHTS} for {repo} in the Hugging Face cache {cache}, and "
                                   "HF_HUB_OFFLINE is set") from None
    try:
        return Path(hf_hub_download(repo, HUB_WEIGHTS, cache_dir=cache))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing file: all one line for the user
        raise InputError(spec, f"weights neither in the Hugging Face cache {cache} nor downloadable "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a local weights file; pickled objects other than tensors are refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "pretrained weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise InputError(path, f"not a readable safetensors file: {exc}") from None
    if suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise InputError(path, "pretrained weights must be .safetensors, .pth, .pt, .bin or .ckpt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, "refused: the file holds pickled objects beyond tensors and plain "
                               "containers (loaded with weights_only=True); save a state_dict or "
                               f"convert to .safetensors ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "module"):  # common training-checkpoint nesting
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "expected a state_dict (a mapping of names to tensors)")
    return obj


def load_pretrained(backbone: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into a 1-channel headless backbone, adapting RGB stems.

    Accepts timm checkpoints (the classifier is dropped), DDP ``module.`` prefixes, raypipe
    checkpoints (``backbone.*`` keys) and the original formats timm's own filter converts.
    """
    sd = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    if any(k.startswith("backbone.") for k in sd) and all(k.startswith(("backbone.", "head.")) for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, backbone)
        except Exception as exc:
            raise InputError(path, f"weights do not fit {type(backbone).__name__} (timm's checkpoint "
                                   f"conversion failed on {exc!r})") from None
    own = backbone.state_dict()
    pcfg = getattr(backbone, "pretrained_cfg", None) or {}
    first_conv = pcfg.get("first_conv")
    stem = f"{first_conv}.weight" if first_conv else None
    for k, v in list(sd.items()):
        target = own.get(k)
        if (target is not None and v.ndim == 4 and target.shape[1] == IN_CHANS and v.shape[1] == 3
                and (stem is None or k == stem) and v.shape[0] == target.shape[0]):
            sd[k] = v.float().sum(dim=1, keepdim=True).to(v.dtype)
    classifier = pcfg.get("classifier") or "\0"
    unexpected = [k for k in sd if k not in own and not k.startswith(f"{classifier}.")]
    sd = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in sd]
    if missing:
        raise InputError(path, f"weights do not fit {type(backbone).__name__}: {len(missing)} missing "
                               f"keys, e.g. {missing[:3]}")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        raise InputError(path, f"weights do not fit: shape mismatch, e.g. {bad[:3]}")
    if unexpected:
        warnings.warn(f"{path}: ignored {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}",
                      stacklevel=3)
    backbone.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------- Grad-CAM

# timm class name -> dotted path (negative ints index Sequentials) of the layer whose activations
# are pooled into the features: the last conv stage, or its transformer equivalent.
GRADCAM_RULES: dict[str, str] = {
    "ConvNeXt": "stages.-1",
    "SwinTransformer": "layers.-1",
    "SwinTransformerV2": "layers.-1",
    "EfficientNet": "bn2",
    "ResNet": "layer4.-1",
    "VisionTransformer": "blocks.-1.norm1",
}


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, Classifier) else model


def _resolve(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if re.fullmatch(r"-?\d+", part) else getattr(module, part)  # type: ignore[index]
    return module


def gradcam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should hook for this model's family (fallback: the last Conv2d)."""
    bb = _backbone(model)
    for cls in type(bb).__mro__:
        if cls.__name__ in GRADCAM_RULES:
            return _resolve(bb, GRADCAM_RULES[cls.__name__])
    convs = [m for m in bb.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no Grad-CAM rule for {type(bb).__name__} and no Conv2d to fall back on")
    return convs[-1]


def gradcam_reshape_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``reshape_transform`` for pytorch-grad-cam: Swin stages are NHWC, ViT blocks are tokens."""
    bb = _backbone(model)
    names = {cls.__name__ for cls in type(bb).__mro__}
    if names & {"SwinTransformer", "SwinTransformerV2"}:
        return lambda t: t.permute(0, 3, 1, 2)
    if "VisionTransformer" in names:
        n_prefix = int(getattr(bb, "num_prefix_tokens", 1))
        gh, gw = bb.patch_embed.grid_size  # type: ignore[union-attr]

        def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
            t = t[:, n_prefix:]
            return t.reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

        return tokens_to_map
    return None
