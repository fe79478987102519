"""Grad-CAM overlays at the resolution of the original radiograph.

The model sees a letterboxed square (``data.images.letterbox``); a clinician looks at the original
film. So the heat map is computed on the model input, the padding is cut off, and the rest is
resized back onto the original image (windowed as in training), which keeps small fracture lines
legible. ``max_side`` shrinks the overlay for galleries where a thumbnail is enough.

The target layer and the Swin / ViT reshape are chosen per backbone family (models/backbones.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from raypipe import fsio
from raypipe.data.dataset import normalise
from raypipe.data.images import letterbox, read_masked, to_uint8
from raypipe.models.backbones import gradcam_reshape_transform, gradcam_target_layer


class _Logits(torch.nn.Module):
    """pytorch-grad-cam wants (N, classes) outputs; a binary model has one logit."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).reshape(x.shape[0], -1)


def heatmap(model: torch.nn.Module, square: np.ndarray) -> np.ndarray:
    """Grad-CAM in [0, 1] over one letterboxed uint8 image (S, S), for the predicted class."""
    from pytorch_grad_cam import GradCAM

    tensor = torch.from_numpy(normalise(square))[None]
    with GradCAM(model=_Logits(model), target_layers=[gradcam_target_layer(model)],
                 reshape_transform=gradcam_reshape_transform(model)) as cam:
        return cam(input_tensor=tensor, targets=None)[0]


def overlay(model: torch.nn.Module, image_path: str | Path, size: int, masking: str = "off",
            text_boxes: str = "", max_side: int | None = None) -> np.ndarray:
    """BGR uint8 overlay of the Grad-CAM on the original image (masked like the model's input)."""
    original = read_masked(image_path, text_boxes, masking if text_boxes else "off")
    cam = heatmap(model, letterbox(original, size))
    h, w = original.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    cam = cam[top:top + nh, left:left + nw]  # the letterbox padding carries no image
    base = to_uint8(original)
    if max_side and max(h, w) > max_side:
        shrink = max_side / max(h, w)
        base = cv2.resize(base, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA)
    cam = cv2.resize(cam.astype(np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(to_uint8(np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), 0.6, colour, 0.4, 0)


def save_png(image: np.ndarray, out: Path) -> Path:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"could not encode {out}")
    fsio.write_bytes(out, data.tobytes())
    return out
