"""Shared fixtures: tiny data sets in the real on-disk layouts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

GRAZ_COLUMNS = [
    "filestem", "patient_id", "study_number", "timehash", "gender", "age", "laterality", "projection",
    "initial_exam", "ao_classification", "cast", "diagnosis_uncertain", "osteopenia", "fracture_visible",
    "metal", "pixel_spacing", "device_manufacturer",
]


def write_grazpedwri(root: Path, n_patients: int = 6, size: tuple[int, int] = (96, 64), seed: int = 0,
                     text_box: bool = True) -> Path:
    """A GRAZPEDWRI-DX-layout folder exactly as published, tiny.

    ``dataset.csv`` with a UTF-8 BOM and blank (never 0) flags, 16-bit PNGs spread over
    ``images_part1..4``, YOLO labels under ``folder_structure/yolov5/labels`` with one class-8 text
    box (a bright square in the image's top-left corner) per image when ``text_box``.
    """
    rng = np.random.default_rng(seed)
    labels = root / "folder_structure" / "yolov5" / "labels"
    labels.mkdir(parents=True)
    lines = [",".join(GRAZ_COLUMNS)]
    h, w = size
    for i in range(n_patients):
        pid, sex, age = i + 1, "MF"[i % 2], round(float(rng.uniform(1, 18)), 1)
        timehash = str(1000000000 + i)
        for proj in (1, 2):
            frac = (i + proj) % 2
            stem = f"{pid:04d}_{timehash}_01_WRI-L{proj}_{sex}{round(age * 10):03d}"
            img = (rng.random((h, w)) * 20000 + 10000).astype(np.uint16)
            if text_box:
                img[2:14, 2:14] = 65535
                (labels / f"{stem}.txt").write_text("8 0.125000 0.083333 0.187500 0.125000\n")
            part = root / f"images_part{1 + i % 4}"
            part.mkdir(exist_ok=True)
            cv2.imwrite(str(part / f"{stem}.png"), img)
            flag = "1" if frac else ""
            lines.append(",".join([stem, f"{pid:04d}", "1", timehash, sex, f"{age}", "L", str(proj), "1",
                                   "23r-M/2.1" if frac else "", "", "", "", flag, "", "0.1", "Agfa"]))
    (root / "dataset.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    return root


@pytest.fixture
def grazpedwri_tiny(tmp_path: Path) -> Path:
    return write_grazpedwri(tmp_path / "graz")


_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _mlflow_uri_state() -> tuple:
    if "mlflow" not in sys.modules:
        return None, None, {k: os.environ.get(k) for k in _MLFLOW_URI_VARS}
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in _MLFLOW_URI_VARS}


@pytest.fixture(autouse=True)
def _no_mlflow_uri_leaks():
    """mlflow's process-wide tracking/registry URIs (and the variables they export) as each test found
    them: a test that registers in its own store must not point the next test's clients at it."""
    before = _mlflow_uri_state()
    yield
    if _mlflow_uri_state() != before and "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri, registry_utils._registry_uri = before[0], before[1]
        for key, value in before[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
