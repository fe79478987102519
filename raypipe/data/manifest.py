"""The canonical manifest: one row per image, whatever data set it came from.

Every source adapter (GRAZPEDWRI-DX, MURA, plain CSV) produces this table; everything after
(splits, cache, targets, training) reads only this table.

Columns
-------
image_id    unique string key of the image (GRAZPEDWRI-DX: the filestem). Local only: it may
            contain patient identifiers, so it never goes to MLflow.
path        absolute path of the image file
patient_id  string; splits group by it
study_id    string (patient-scoped study key)
age         float years, NaN when the source has none
sex         "M" | "F" | "O" | "U" (unknown)
projection  "AP" | "Lat" | "Oblique" | "U" (unknown)
label       int 0/1: fracture visible
metal       bool
text_boxes  YOLO class-8 (text) boxes, normalised "cx cy w h" joined by ";" ("" when none)
source      name of the adapter that produced the row
held_out    bool: the source itself holds the image out as its test set (MURA's ``valid`` split).
            When any image is held out, those images are the fixed test set and the rest are
            train/val only (``splits.make_splits``). Adapters without such a split may omit it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raypipe import fsio
from raypipe.errors import InputError

COLUMNS = [
    "image_id",
    "path",
    "patient_id",
    "study_id",
    "age",
    "sex",
    "projection",
    "label",
    "metal",
    "text_boxes",
    "source",
    "held_out",
]
SEXES = {"M", "F", "O", "U"}
PROJECTIONS = {"AP", "Lat", "Oblique", "U"}
AGE_RANGE = (0.0, 25.0)


def empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in COLUMNS})


_DTYPES = {
    "image_id": "string",
    "path": "string",
    "patient_id": "string",
    "study_id": "string",
    "age": "float64",
    "sex": "string",
    "projection": "string",
    "label": "int64",
    "metal": "bool",
    "text_boxes": "string",
    "source": "string",
    "held_out": "bool",
}


def normalise(df: pd.DataFrame, origin: str | Path) -> pd.DataFrame:
    """Check a source's output against the schema and return it with canonical dtypes.

    ``origin`` names the file the rows came from, for error messages. Rows are numbered as
    line numbers in that file (header = line 1, so the first data row is row 2), taken from the
    ``_row`` column when the adapter kept it.
    """
    if "held_out" not in df.columns:  # most layouts have no split of their own
        df = df.assign(held_out=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(origin, f"manifest lacks columns {missing}", field=missing[0])
    rows = df["_row"] if "_row" in df.columns else pd.Series(np.arange(2, len(df) + 2), index=df.index)
    if len(df) == 0:
        raise InputError(origin, "no images found")

    def fail(mask: pd.Series, field: str, reason: str) -> None:
        if mask.any():
            first = mask.to_numpy().nonzero()[0][0]
            raise InputError(origin, reason.format(value=df[field].iloc[first]), row=int(rows.iloc[first]), field=field)

    fail(df["image_id"].duplicated(), "image_id", "duplicate image id {value!r}")
    for col in ("image_id", "path", "patient_id"):
        fail(df[col].isna() | (df[col].astype("string").str.len() == 0), col, "empty value")
    age = pd.to_numeric(df["age"], errors="coerce")
    fail(df["age"].notna() & age.isna(), "age", "not a number: {value!r}")
    fail(age.notna() & ((age < AGE_RANGE[0]) | (age > AGE_RANGE[1])), "age", "out of range 0-25: {value!r}")
    fail(~df["sex"].isin(SEXES), "sex", "unknown sex {value!r} (expected M, F, O or U)")
    fail(~df["projection"].isin(PROJECTIONS), "projection", "unknown projection {value!r}")
    label = pd.to_numeric(df["label"], errors="coerce")
    fail(~label.isin([0, 1]), "label", "label must be 0 or 1, got {value!r}")

    out = df[COLUMNS].copy()
    out["age"] = age
    out["label"] = label.astype("int64")
    out["metal"] = out["metal"].astype(bool)
    out["held_out"] = out["held_out"].astype(bool)
    out["text_boxes"] = out["text_boxes"].fillna("")
    out["study_id"] = out["study_id"].fillna(out["patient_id"])
    return out.astype(_DTYPES).reset_index(drop=True)


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """``"cx cy w h;cx cy w h"`` -> list of normalised YOLO boxes."""
    if not text:
        return []
    return [tuple(float(v) for v in part.split()) for part in text.split(";")]  # type: ignore[misc]


def format_boxes(boxes: list[tuple[float, float, float, float]]) -> str:
    return ";".join(" ".join(f"{v:.6f}" for v in box) for box in boxes)


def save(df: pd.DataFrame, path: str | Path) -> str:
    """Write the manifest atomically; return its content hash."""
    data = df[COLUMNS].to_csv(index=False).encode()
    fsio.write_bytes(path, data)
    return fsio.sha256_bytes(data)


def load(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"image_id": "string", "patient_id": "string", "study_id": "string",
                                  "text_boxes": "string"}, keep_default_na=False, na_values={"age": [""]})
    return normalise(df, path)


def content_hash(df: pd.DataFrame) -> str:
    """Hash of the manifest's content plus each image file's size and mtime.

    Cheap (one stat per image) yet changes whenever an image is replaced, so caches keyed by it
    are rebuilt when they must be.
    """
    stats = [f"{p}:{s.st_size}:{s.st_mtime_ns}" for p in df["path"] for s in [Path(p).stat()]]
    body = df[COLUMNS].to_csv(index=False) + "\n".join(stats)
    return fsio.sha256_bytes(body.encode())
