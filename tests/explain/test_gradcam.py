"""Grad-CAM overlays land on the original film, not on the model's letterboxed square."""

from __future__ import annotations

import cv2
import numpy as np

from raypipe.config import TrainConfig
from raypipe.explain.gradcam import overlay, save_png
from raypipe.models.backbones import build_model


def test_overlay_has_the_original_geometry_and_thumbnails_keep_the_aspect(tmp_path):
    film = np.zeros((90, 300), np.uint16)
    film[30:60, 100:200] = 40000  # a bright bone-like block on a wide film
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), film)
    model = build_model(TrainConfig(backbone="resnet10t", image_size=32, pretrained=False), 2,
                        warn_random=False).eval()
    full = overlay(model, path, 32)
    assert full.shape == (90, 300, 3) and full.dtype == np.uint8
    thumb = overlay(model, path, 32, max_side=150)
    assert thumb.shape == (45, 150, 3)
    out = save_png(thumb, tmp_path / "out" / "cam.png")
    assert cv2.imread(str(out)).shape == (45, 150, 3)
