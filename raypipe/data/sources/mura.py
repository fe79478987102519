"""MURA v1.1 (Stanford, adult musculoskeletal radiographs): wrist studies, per-study labels.

``MURA-v1.1/{train,valid}/XR_WRIST/patientNNNNN/studyK_{positive|negative}/imageN.png`` with one
``{split}_labeled_studies.csv`` per split. MURA's ``valid`` split is its public test split: its
images are marked ``held_out``, and ``splits.make_splits`` then uses them as the fixed test set
and draws train/val from ``train`` only. MURA images carry no projection and no age.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raypipe.data import images, manifest
from raypipe.data.sources.common import IMAGE_SUFFIXES, index_files
from raypipe.data.sources.registry import register_source
from raypipe.errors import InputError

HELD_OUT_SPLITS = ("valid", "test")  # MURA publishes "valid" as its test split ("test" stays private)


def _mura_dir(root: Path) -> Path | None:
    for d in (root, root / "MURA-v1.1"):
        if d.is_dir() and d.name == "MURA-v1.1":
            return d
    return None


def _is_mura(root: Path) -> bool:
    d = _mura_dir(root)
    return d is not None and any(d.glob("*_labeled_studies.csv"))


@register_source("mura", detect=_is_mura, looks_for="MURA-v1.1/ with *_labeled_studies.csv (MURA)")
def load_mura(root: Path) -> pd.DataFrame:
    """MURA v1.1, wrist studies only; the per-study label applies to each of its images.

    MURA's label is "abnormal", a proxy for fracture (it also covers hardware and degenerative
    change). Study folder paths in the CSVs are relative to the folder holding ``MURA-v1.1``.
    The folder suffix (``_positive``/``_negative``) must agree with the CSV's label. Images of
    studies listed in ``valid_labeled_studies.csv`` are ``held_out`` (the fixed test set).
    """
    mura = _mura_dir(root)
    if mura is None:
        raise InputError(root, "no MURA-v1.1 folder here or above")
    csvs = sorted(mura.glob("*_labeled_studies.csv"))
    if not csvs:
        raise InputError(mura, "no *_labeled_studies.csv (train/valid study lists) found")
    frames = []
    for csv in csvs:
        lines = csv.read_text(encoding="utf-8-sig").splitlines()
        if not any(line.strip() for line in lines):
            raise InputError(csv, "empty file")
        split = csv.name.removesuffix("_labeled_studies.csv")  # train_labeled_studies.csv -> train
        records = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2:
                raise InputError(csv, f"expected 'study_folder/,label', got {len(parts)} fields", row=n)
            rel, lab = parts
            study = Path(rel.rstrip("/"))
            if "XR_WRIST" not in study.parts:
                continue
            if lab not in ("0", "1"):
                raise InputError(csv, f"label must be 0 or 1, got {lab!r}", row=n, field="label")
            study_dir = study if study.is_absolute() else mura.parent / study
            if not study_dir.is_dir():
                raise InputError(csv, f"study folder not found: {study_dir}", row=n, field="path")
            suffix = study_dir.name.rpartition("_")[2]
            if suffix in ("positive", "negative") and (suffix == "positive") != (lab == "1"):
                raise InputError(csv, f"label {lab} contradicts folder {study_dir.name!r}", row=n, field="label")
            patient = study_dir.parent.name
            imgs = index_files([study_dir], IMAGE_SUFFIXES, depth=0)
            if not imgs:
                raise InputError(csv, f"no images in study folder {study_dir}", row=n, field="path")
            for stem in sorted(imgs):
                if (problem := images.check_file(imgs[stem])) is not None:
                    raise InputError(csv, f"{problem}: {imgs[stem]}", row=n, field="path")
            study_id = f"{patient}/{study_dir.name}"
            records += [{"image_id": f"{split}/{study_id}/{stem}", "path": imgs[stem], "patient_id": patient,
                         "study_id": study_id, "age": np.nan, "sex": "U", "projection": "U", "label": int(lab),
                         "metal": False, "text_boxes": "", "source": "mura",
                         "held_out": split in HELD_OUT_SPLITS, "_row": n} for stem in sorted(imgs)]
        if records:
            frames.append(manifest.normalise(pd.DataFrame.from_records(records), csv))
    if not frames:
        raise InputError(mura, f"no XR_WRIST studies listed in {[c.name for c in csvs]}")
    return manifest.normalise(pd.concat(frames, ignore_index=True), mura)
