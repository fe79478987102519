"""A GRAZPEDWRI-DX-layout folder, read as published, gets its text markers masked in the cache."""

import cv2
import numpy as np

from raypipe.data import manifest as manifest_mod
from raypipe.data.cache import ImageCache
from raypipe.data.sources import load_source


def test_text_boxes_from_yolo_labels_are_masked_in_cache(grazpedwri_tiny, tmp_path):
    m = load_source(grazpedwri_tiny)
    assert (m["text_boxes"] != "").all()  # labels found in folder_structure/yolov5/labels
    raw = cv2.imread(m["path"][0], cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw[2:14, 2:14].min() == 65535  # the burned-in marker
    h = manifest_mod.content_hash(m)
    masked = ImageCache.build_or_open(m, h, 64, "fill", tmp_path, workers=1)
    kept = ImageCache.build_or_open(m, h, 64, "off", tmp_path, workers=1)
    # 96x64 letterboxed into 64x64: the marker sits near the top-left of the 43-px-wide content
    corner = (slice(1, 9), slice(12, 20))
    for i in range(len(m)):
        assert kept.get(i)[corner].max() == 255
        # masked, the corner looks like the noise below it: neither the marker nor a flat patch
        below = masked.get(i)[12:28, 12:20].astype(float)
        assert abs(masked.get(i)[corner].mean() - below.mean()) < 30 and masked.get(i)[corner].std() > 0.5 * below.std()
