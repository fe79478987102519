"""Backbones: tiny timm models, 1-channel input, seed head, local-only pretrained weights."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import DropPath
from torch import nn

from raypipe.config import TrainConfig
from raypipe.errors import InputError
from raypipe.models import (
    Classifier,
    build_model,
    build_model_from_spec,
    gradcam_reshape_transform,
    gradcam_target_layer,
    model_spec,
)

TINY = ["test_convnext", "test_efficientnet", "test_vit", "resnet10t", "convnextv2_atto"]


@pytest.mark.parametrize("backbone", TINY)
def test_tiny_models_binary_and_multiclass(backbone: str) -> None:
    cfg = TrainConfig(backbone=backbone, image_size=64, head_hidden=16, head_dropout=0.1)
    x = torch.randn(2, 1, 64, 64)
    for n_classes, out in [(2, (2, 1)), (4, (2, 4))]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tiny test backbones: no random-init warning
            model = build_model(cfg, n_classes).eval()
        with torch.no_grad():
            assert tuple(model(x).shape) == out
        assert [type(m) for m in model.head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
        assert model.head[0].out_features == 16 and model.head[2].p == 0.1
        assert model.head[3].out_features == out[1]
        layer = gradcam_target_layer(model)
        assert isinstance(layer, nn.Module) and any(layer is m for m in model.modules())


def test_drop_path_reaches_the_blocks() -> None:
    model = build_model(TrainConfig(backbone="test_convnext", drop_path=0.2), 2)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)
    plain = build_model(TrainConfig(backbone="test_convnext", drop_path=0.0), 2)
    assert not any(isinstance(m, DropPath) for m in plain.modules())


def test_random_init_warns_for_real_backbones() -> None:
    with pytest.warns(UserWarning, match="no pretrained weights"):
        build_model(TrainConfig(backbone="resnet18", image_size=32), 2)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'nope_net'"):
        build_model(TrainConfig(backbone="nope_net"), 2)


def _rgb_state(backbone: str) -> dict[str, torch.Tensor]:
    """A full 3-channel timm model state, classifier included, as a hub checkpoint would be."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in timm.create_model(backbone, pretrained=False).state_dict().items()}


@pytest.mark.parametrize("backbone,stem", [("test_convnext", "stem.0.weight"),
                                           ("resnet10t", "conv1.0.weight"),
                                           ("test_vit", "patch_embed.proj.weight")])
def test_local_safetensors_rgb_to_gray(tmp_path: Path, backbone: str, stem: str) -> None:
    state = _rgb_state(backbone)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    cfg = TrainConfig(backbone=backbone, pretrained=str(path), image_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dropped classifier is expected, not warned about
        model = build_model(cfg, 2)
    loaded = model.backbone.state_dict()
    assert loaded[stem].shape[1] == 1
    assert torch.allclose(loaded[stem], state[stem].sum(dim=1, keepdim=True))
    other = next(k for k in loaded if k != stem and k.endswith("weight") and k in state
                 and loaded[k].shape == state[k].shape)
    assert torch.equal(loaded[other], state[other])
    model.eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 1, 64, 64)).shape) == (2, 1)


def test_local_pth_state_dict_and_raypipe_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": _rgb_state("test_convnext"), "epoch": 3}, path)
    build_model(TrainConfig(backbone="test_convnext", pretrained=str(path)), 4)
    # a trained raypipe model (backbone.* + head.*) warm-starts another target's backbone
    trained = build_model(TrainConfig(backbone="test_convnext"), 2)
    own = tmp_path / "trained.safetensors"
    save_file(trained.state_dict(), str(own))
    fresh = build_model(TrainConfig(backbone="test_convnext", pretrained=str(own)), 4)
    for k, v in trained.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[k], v)


class Payload:
    """Any non-tensor object: unpickling it could run arbitrary code."""

    def __init__(self) -> None:
        self.x = 1


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload(), "w": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="weights_only=True"):
        build_model(TrainConfig(backbone="test_convnext", pretrained=str(path)), 2)


@pytest.mark.parametrize("name,reason", [("missing.safetensors", "not found"), ("w.npz", "must be"),
                                         ("bad.safetensors", "safetensors")])
def test_bad_weight_files(tmp_path: Path, name: str, reason: str) -> None:
    if name != "missing.safetensors":
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(InputError, match=reason):
        build_model(TrainConfig(backbone="test_convnext", pretrained=str(tmp_path / name)), 2)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(_rgb_state("resnet10t"), str(path))
    with pytest.raises(InputError, match="do not fit"):
        build_model(TrainConfig(backbone="test_convnext", pretrained=str(path)), 2)


def test_gradcam_layers_per_family() -> None:
    convnext = build_model(TrainConfig(backbone="test_convnext"), 2)
    assert gradcam_target_layer(convnext) is convnext.backbone.stages[-1]
    resnet = build_model(TrainConfig(backbone="resnet10t"), 2)
    assert gradcam_target_layer(resnet) is resnet.backbone.layer4[-1]
    effnet = build_model(TrainConfig(backbone="test_efficientnet"), 2)
    assert gradcam_target_layer(effnet) is effnet.backbone.bn2
    assert gradcam_reshape_transform(resnet) is None
    vit = build_model(TrainConfig(backbone="test_vit", image_size=64), 2).eval()
    feats = {}
    layer = gradcam_target_layer(vit)
    layer.register_forward_hook(lambda m, i, o: feats.setdefault("t", o))
    with torch.no_grad():
        vit(torch.randn(1, 1, 64, 64))
    fmap = gradcam_reshape_transform(vit)(feats["t"])
    assert fmap.ndim == 4 and fmap.shape[0] == 1


def test_gradcam_swin_family() -> None:
    """Swin: no tiny registered model, so a small one is built directly (no weights)."""
    from timm.models.swin_transformer import SwinTransformer

    swin = Classifier(SwinTransformer(img_size=64, in_chans=1, num_classes=0, embed_dim=16, depths=(1, 1),
                                      num_heads=(1, 2), window_size=4), nn.Identity())
    layer = gradcam_target_layer(swin)
    assert layer is swin.backbone.layers[-1]
    out = {}
    layer.register_forward_hook(lambda m, i, o: out.setdefault("t", o))
    swin(torch.randn(1, 1, 64, 64))
    assert gradcam_reshape_transform(swin)(out["t"]).shape[:2] == (1, 32)  # NHWC -> NCHW


def test_model_spec_round_trip() -> None:
    cfg = TrainConfig(backbone="test_convnext", image_size=64, head_hidden=8, head_dropout=0.2)
    spec = model_spec(cfg, 4)
    assert spec == {"backbone": "test_convnext", "head": {"name": "mlp", "hidden": 8, "dropout": 0.2},
                    "image_size": 64, "in_chans": 1, "n_classes": 4, "n_outputs": 4}
    assert model_spec(cfg, 2)["n_outputs"] == 1
    trained = build_model(cfg, 4)
    rebuilt = build_model_from_spec(spec)
    rebuilt.load_state_dict(trained.state_dict())  # strict: same architecture


def _hub_cache(home: Path, repo: str, state: dict) -> None:
    """What a download leaves in the Hugging Face cache: models--<org>--<name>/snapshots/<rev>/ + refs/main."""
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0123456789abcdef")


def test_hub_name_loads_from_the_hugging_face_cache_without_the_network(tmp_path, monkeypatch) -> None:
    state = _rgb_state("test_convnext")
    _hub_cache(tmp_path / "hf", "timm/test_convnext.r160_in1k", state)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a network call would fail the test, not pass it
    model = build_model(TrainConfig(backbone="test_convnext", pretrained="hf-hub:timm/test_convnext.r160_in1k"), 2)
    stem = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    assert torch.allclose(model.backbone.state_dict()[stem], state[stem].sum(dim=1, keepdim=True))

    with pytest.raises(InputError, match="HF_HUB_OFFLINE") as err:
        build_model(TrainConfig(backbone="test_convnext", pretrained="hf-hub:timm/not_cached"), 2)
    assert "\n" not in str(err.value)
