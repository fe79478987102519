"""GRAZPEDWRI-DX as published: ``dataset.csv`` + ``images_part*/`` + YOLO labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raypipe.data import manifest
from raypipe.data.sources.common import (
    IMAGE_SUFFIXES,
    PROJECTION_HINT,
    PROJECTIONS,
    SEX_HINT,
    SEXES,
    ages,
    check_images,
    fail,
    header_of,
    index_files,
    lookup,
    parse_yolo,
    read_table,
)
from raypipe.data.sources.registry import register_source

GRAZ_REQUIRED = ("filestem", "patient_id", "study_number", "gender", "age", "projection",
                 "fracture_visible", "metal")
GRAZ_FLAGS = ("initial_exam", "cast", "diagnosis_uncertain", "osteopenia", "fracture_visible", "metal")
TEXT_CLASS = 8  # GRAZPEDWRI-DX class 8 = "text" (burnt-in markers, a shortcut risk)
# Where the YOLO labels live, relative to the folder holding images_part*/ (predict looks there too).
LABEL_DIRS = (Path("folder_structure", "yolov5", "labels"), Path("labels"))


def _graz_csv(root: Path) -> Path:
    return root / "dataset.csv" if root.is_dir() else root


def _is_graz(root: Path) -> bool:
    csv = _graz_csv(root)
    return csv.is_file() and (root.is_dir() or "filestem" in header_of(csv))


@register_source("grazpedwri", detect=_is_graz, looks_for="dataset.csv with a filestem column (GRAZPEDWRI-DX)")
def load_grazpedwri(root: Path) -> pd.DataFrame:
    """GRAZPEDWRI-DX as published: ``dataset.csv`` + ``images_part*/`` + YOLO labels.

    Images may also lie in ``images/`` or beside the CSV; labels come from
    ``folder_structure/yolov5/labels`` (where the data set puts them, not next to the images:
    the seeds' text masking looked there and silently did nothing) or ``labels/``.
    """
    csv = _graz_csv(root)
    base = csv.parent
    df = read_table(csv, GRAZ_REQUIRED)
    for col in ("filestem", "patient_id", "study_number"):
        fail(df, df[col] == "", csv, col, "empty value")
    age = ages(df, csv)
    sex = lookup(df, csv, "gender", SEXES, "gender", SEX_HINT, blank="U")
    proj = lookup(df, csv, "projection", PROJECTIONS, "projection", PROJECTION_HINT, blank=None)
    for col in GRAZ_FLAGS:
        if col in df.columns:
            fail(df, ~df[col].isin(["", "1"]), csv, col,
                  "flag must be 1 or blank (GRAZPEDWRI-DX never writes 0), got {value!r}")
    dup = df["filestem"].duplicated()
    if dup.any():
        stem = df["filestem"][dup].iloc[0]
        first = int(df["_row"][df["filestem"] == stem].iloc[0])
        fail(df, dup, csv, "filestem", f"duplicate filestem {{value!r}} (first on row {first})")

    image_dirs = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("images"))
    images = index_files([*image_dirs, base], IMAGE_SUFFIXES)
    paths = df["filestem"].map(images)
    fail(df, paths.isna(), csv, "filestem",
          "no image file for filestem {value!r} (looked in images_part*/, images/ and beside the CSV)")
    check_images(df, paths, csv, "filestem")

    labels = index_files([base / d for d in LABEL_DIRS if (base / d).is_dir()], (".txt",))
    text_boxes = [
        manifest.format_boxes([b for c, b in parse_yolo(labels[s]) if c == TEXT_CLASS]) if s in labels else ""
        for s in df["filestem"]
    ]
    out = pd.DataFrame({
        "image_id": df["filestem"], "path": paths, "patient_id": df["patient_id"],
        "study_id": df["patient_id"] + "/" + df["study_number"], "age": age, "sex": sex, "projection": proj,
        "label": (df["fracture_visible"] == "1").astype(int), "metal": df["metal"] == "1",
        "text_boxes": text_boxes, "source": "grazpedwri", "_row": df["_row"],
    })
    return manifest.normalise(out, csv)
