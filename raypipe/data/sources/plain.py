"""Any data set as a plain CSV of image paths and labels."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from raypipe.data import manifest
from raypipe.data.sources.common import (
    PROJECTION_HINT,
    PROJECTIONS,
    SEX_HINT,
    SEXES,
    ages,
    check_images,
    fail,
    header_of,
    lookup,
    read_table,
)
from raypipe.data.sources.registry import register_source
from raypipe.errors import InputError


def _plain_csv(root: Path) -> Path | None:
    """The CSV itself, or the single CSV with an ``image_path`` column in a folder."""
    if root.is_file():
        return root
    found = sorted(p for p in root.glob("*.csv") if "image_path" in header_of(p))
    if len(found) > 1:
        raise InputError(root, f"several CSVs with an image_path column: {[p.name for p in found]}; pass one")
    return found[0] if found else None


def _is_plain(root: Path) -> bool:
    csv = _plain_csv(root)
    return csv is not None and "image_path" in header_of(csv)


@register_source("csv", detect=_is_plain, looks_for="a CSV with columns image_path,label (plain CSV)")
def load_csv(root: Path) -> pd.DataFrame:
    """Any data set as ``image_path,label[,age,projection,patient_id,gender,study_id,metal,split]``.

    ``image_path`` is relative to the CSV's folder or absolute; ``patient_id`` defaults to the
    image's stem (one patient per image: splits then cannot guard against patient leakage, so
    give it when known). Blank age/gender/projection mean unknown. ``split``: ``test`` marks the
    data set's own test split (``held_out``, as MURA's valid), ``train`` or blank the rest.
    """
    csv = _plain_csv(root)
    if csv is None:
        raise InputError(root, "no CSV with an image_path column here")
    df = read_table(csv, ("image_path", "label"))
    fail(df, df["image_path"] == "", csv, "image_path", "empty value")
    fail(df, ~df["label"].isin(["0", "1"]), csv, "label", "label must be 0 or 1, got {value!r}")
    resolved = [os.path.normpath(p if os.path.isabs(p) else os.path.join(csv.parent, p)) for p in df["image_path"]]
    paths = pd.Series(resolved, index=df.index)
    fail(df, paths.duplicated(), csv, "image_path", "duplicate image {value!r}")
    fail(df, ~paths.map(os.path.isfile), csv, "image_path",
          f"image not found: {{value!r}} (relative paths start at {csv.parent})")
    check_images(df, paths, csv, "image_path")
    stems = paths.map(lambda p: os.path.splitext(os.path.basename(p))[0])
    patient = df["patient_id"].where(df["patient_id"] != "", stems) if "patient_id" in df.columns else stems
    study = df["study_id"].where(df["study_id"] != "", patient) if "study_id" in df.columns else patient
    metal = pd.Series(False, index=df.index)
    if "metal" in df.columns:
        key = df["metal"].str.lower()
        fail(df, ~key.isin(["", "0", "1", "true", "false"]), csv, "metal", "metal must be 0/1/blank, got {value!r}")
        metal = key.isin(["1", "true"])
    held_out = pd.Series(False, index=df.index)
    if "split" in df.columns:
        key = df["split"].str.lower()
        fail(df, ~key.isin(["", "train", "test"]), csv, "split", "split must be train, test or blank, got {value!r}")
        held_out = key == "test"
    gender_col = "gender" if "gender" in df.columns else "sex"
    out = pd.DataFrame({
        "image_id": df["image_path"], "path": paths, "patient_id": patient, "study_id": study,
        "age": ages(df, csv), "sex": lookup(df, csv, gender_col, SEXES, "gender", SEX_HINT, blank="U"),
        "projection": lookup(df, csv, "projection", PROJECTIONS, "projection", PROJECTION_HINT, blank="U"),
        "label": df["label"].astype(int), "metal": metal, "text_boxes": "", "source": "csv", "held_out": held_out,
        "_row": df["_row"],
    })
    return manifest.normalise(out, csv)
