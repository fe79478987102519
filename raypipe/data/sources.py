"""Source adapters: real on-disk data layouts -> the canonical manifest.

Each adapter is one function ``Path -> DataFrame`` registered with ``@register_source(name)``
and returns ``manifest.normalise(...)`` output. Adapters check what a person can fix (columns,
values, missing images, label files) and raise ``InputError`` naming file, row and field, so a
bad row stops ``raypipe data check`` with one line instead of surfacing as a NaN three epochs
into training. Every image gets the cheap header check of ``images.check_file`` (missing, empty,
truncated, not an image, under 8 bits); decoding the pixels is left to the image cache, which does
it once anyway.

Row numbers are the line numbers a person sees in an editor: in a CSV with a header the header
is line 1, so the first data row is row 2; in a header-less file (MURA's study lists, YOLO label
files) row 1 is the first line. Adapters keep that number in the ``_row`` column, which
``manifest.normalise`` uses in its own messages. (Quoted fields spanning lines would shift it;
none of the supported layouts has them.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from csv import Error as CsvError
from csv import reader as csv_reader
from pathlib import Path

import numpy as np
import pandas as pd

from raypipe.data import images, manifest
from raypipe.errors import InputError

Adapter = Callable[[Path], pd.DataFrame]
SOURCES: dict[str, Adapter] = {}
_DETECT: dict[str, tuple[Callable[[Path], bool], str]] = {}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PROJECTION_HINT = "1/2/3, AP, PA, Lat, lateral or oblique"
SEX_HINT = "M, F, O or U"
PROJECTIONS = {"1": "AP", "2": "Lat", "3": "Oblique", "ap": "AP", "pa": "AP", "lat": "Lat",
               "lateral": "Lat", "oblique": "Oblique", "obl": "Oblique", "u": "U", "unknown": "U"}
SEXES = {"m": "M", "f": "F", "o": "O", "u": "U", "male": "M", "female": "F", "other": "O", "unknown": "U"}
GRAZ_REQUIRED = ("filestem", "patient_id", "study_number", "gender", "age", "projection",
                 "fracture_visible", "metal")
GRAZ_FLAGS = ("initial_exam", "cast", "diagnosis_uncertain", "osteopenia", "fracture_visible", "metal")
YOLO_FIELDS = ("class", "cx", "cy", "w", "h")
TEXT_CLASS = 8  # GRAZPEDWRI-DX class 8 = "text" (burnt-in markers, a shortcut risk)


def register_source(name: str, *, detect: Callable[[Path], bool] | None = None,
                    looks_for: str = "") -> Callable[[Adapter], Adapter]:
    """Register an adapter under ``name``; ``detect`` lets ``kind="auto"`` find it.

    ``looks_for`` describes the layout for the message shown when nothing matches.
    """
    def deco(fn: Adapter) -> Adapter:
        SOURCES[name] = fn
        if detect is not None:
            _DETECT[name] = (detect, looks_for or name)
        return fn
    return deco


def load_source(root: Path, kind: str = "auto") -> pd.DataFrame:
    """Load the data set at ``root`` (a folder, or a CSV file) as a canonical manifest."""
    root = Path(root).expanduser().absolute()
    if kind == "auto":
        kind = detect_kind(root)
    if kind not in SOURCES:
        raise InputError(root, f"unknown source kind {kind!r} (expected auto, {', '.join(SOURCES)})", field="kind")
    if not root.exists():
        raise InputError(root, "no such file or directory")
    return SOURCES[kind](root)


def detect_kind(root: Path) -> str:
    """Name of the first registered adapter whose layout matches ``root``."""
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise InputError(root, "no such file or directory")
    if root.is_file():
        _check_text_file(root)
    for name, (detect, _) in _DETECT.items():
        if detect(root):
            return name
    wanted = "; ".join(desc for _, desc in _DETECT.values())
    raise InputError(root, f"no recognisable data layout: looked for {wanted}")


# --------------------------------------------------------------------------- shared helpers

def _check_text_file(path: Path) -> None:
    """An empty file, or UTF-16 text (Excel's "Unicode text"), fails here with what to do about it."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise InputError(path, "empty file (0 bytes)")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(path, "UTF-16 text: save the CSV as UTF-8 (with or without a BOM)")


def _header(path: Path) -> list[str]:
    """Lower-cased column names of a CSV's first line ([] if unreadable), for cheap sniffing."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return [c.strip().lower() for c in fh.readline().split(",")]
    except OSError:
        return []


def _read_table(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a headed CSV as stripped strings, with ``_row`` = line number (header = line 1).

    ``utf-8-sig`` strips GRAZPEDWRI-DX's BOM and reads BOM-less files unchanged. The csv module
    (not pandas) so that a short row is an error: pandas pads it with blanks, and a truncated
    GRAZPEDWRI-DX row would silently read as "no fracture". Blank lines are skipped.
    """
    _check_text_file(path)
    records: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv_reader(fh)
            header = [c.strip().lower() for c in next(reader, [])]
            for col in required:
                if col not in header:
                    raise InputError(path, f"missing required column (header has {header})", row=1, field=col)
            for rec in reader:
                if len(rec) != len(header):
                    if not any(f.strip() for f in rec):
                        continue
                    raise InputError(path, f"{len(rec)} fields, the header has {len(header)}", row=reader.line_num)
                records.append([f.strip() for f in rec])
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})") from None
    except CsvError as exc:
        raise InputError(path, f"not a readable CSV: {exc}", row=reader.line_num) from None
    df = pd.DataFrame(records, columns=header, dtype=object)
    df["_row"] = lines
    df = df[(df.drop(columns="_row") != "").any(axis=1)]
    if len(df) == 0:
        raise InputError(path, "no data rows (header only)")
    return df


def _fail(df: pd.DataFrame, mask: pd.Series, file: Path, field: str, reason: str) -> None:
    """Raise for the first row where ``mask`` holds; ``{value!r}`` in ``reason`` shows its value."""
    if mask.any():
        i = int(np.flatnonzero(mask.to_numpy())[0])
        value = df[field].iloc[i] if field in df.columns else None
        raise InputError(file, reason.format(value=value), row=int(df["_row"].iloc[i]), field=field)


def _check_images(df: pd.DataFrame, paths: pd.Series, file: Path, field: str) -> None:
    """Raise for the first row whose image is missing, empty, truncated or not an image.

    Header checks only (``images.check_file``): cheap enough for every image on every load.
    """
    for i, path in enumerate(paths):
        if (problem := images.check_file(path)) is not None:
            raise InputError(file, f"{problem}: {path}", row=int(df["_row"].iloc[i]), field=field)


def _age(df: pd.DataFrame, file: Path, col: str = "age") -> pd.Series:
    """Ages in years; blank -> NaN (reported as missing by ``summarize``)."""
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index)
    raw = df[col]
    age = pd.to_numeric(raw.where(raw != ""), errors="coerce")
    _fail(df, (raw != "") & age.isna(), file, col, "age is not a number: {value!r}")
    lo, hi = manifest.AGE_RANGE
    _fail(df, age.notna() & ~age.between(lo, hi), file, col, f"age out of range {lo:g}-{hi:g}: {{value!r}}")
    return age


def _lookup(df: pd.DataFrame, file: Path, col: str, table: dict[str, str], what: str,
            expected: str, blank: str | None) -> pd.Series:
    """Map a column through an alias table (case-insensitive); blank -> ``blank`` or an error."""
    if col not in df.columns:
        return pd.Series(blank or "U", index=df.index, dtype=object)
    key = df[col].str.lower()
    if blank is None:
        _fail(df, key == "", file, col, f"empty {what}")
    out = key.map(table).where(key != "", blank)
    _fail(df, out.isna() & (key != ""), file, col, f"unknown {what} {{value!r}} (expected {expected})")
    return out


def _index_files(dirs: Iterable[Path | str], suffixes: tuple[str, ...], depth: int = 1) -> dict[str, str]:
    """``stem -> path`` for files under ``dirs`` (and ``depth`` levels of subfolders).

    One ``os.scandir`` per folder instead of a glob or stat per row: 20k images index in well
    under a second (paths stay ``str``: 60k ``Path`` objects alone cost half a second). The
    first folder listed wins when a stem occurs twice.
    """
    index: dict[str, str] = {}
    for d in dirs:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            stem, suffix = os.path.splitext(e.name)
            if suffix.lower() in suffixes:
                index.setdefault(stem, e.path)
            elif depth > 0 and e.is_dir():
                subdirs.append(e.path)
        for stem, p in _index_files(subdirs, suffixes, depth - 1).items():
            index.setdefault(stem, p)
    return index


def parse_yolo(path: Path | str) -> list[tuple[int, tuple[float, float, float, float]]]:
    """``(class, (cx, cy, w, h))`` per line of a YOLO label file; row = line number."""
    boxes = []
    with open(path, encoding="utf-8-sig") as fh:
        text = fh.read()
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            field = YOLO_FIELDS[len(parts)] if len(parts) < 5 else None
            raise InputError(path, f"expected 5 values 'class cx cy w h', got {len(parts)}", row=n, field=field)
        try:
            cls = float(parts[0])
        except ValueError:
            cls = -1.0
        if not (cls >= 0 and cls.is_integer()):
            raise InputError(path, f"class must be a non-negative integer, got {parts[0]!r}", row=n, field="class")
        vals = []
        for name, text in zip(YOLO_FIELDS[1:], parts[1:], strict=True):
            try:
                v = float(text)
            except ValueError:
                raise InputError(path, f"not a number: {text!r}", row=n, field=name) from None
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise InputError(path, f"must be a normalised coordinate in 0-1, got {text!r}", row=n, field=name)
            vals.append(v)
        boxes.append((int(cls), (vals[0], vals[1], vals[2], vals[3])))
    return boxes


# --------------------------------------------------------------------------- GRAZPEDWRI-DX

def _graz_csv(root: Path) -> Path:
    return root / "dataset.csv" if root.is_dir() else root


def _is_graz(root: Path) -> bool:
    csv = _graz_csv(root)
    return csv.is_file() and (root.is_dir() or "filestem" in _header(csv))


@register_source("grazpedwri", detect=_is_graz, looks_for="dataset.csv with a filestem column (GRAZPEDWRI-DX)")
def load_grazpedwri(root: Path) -> pd.DataFrame:
    """GRAZPEDWRI-DX as published: ``dataset.csv`` + ``images_part*/`` + YOLO labels.

    Images may also lie in ``images/`` or beside the CSV; labels come from
    ``folder_structure/yolov5/labels`` (where the data set puts them, not next to the images:
    the seeds' text masking looked there and silently did nothing) or ``labels/``.
    """
    csv = _graz_csv(root)
    base = csv.parent
    df = _read_table(csv, GRAZ_REQUIRED)
    for col in ("filestem", "patient_id", "study_number"):
        _fail(df, df[col] == "", csv, col, "empty value")
    age = _age(df, csv)
    sex = _lookup(df, csv, "gender", SEXES, "gender", SEX_HINT, blank="U")
    proj = _lookup(df, csv, "projection", PROJECTIONS, "projection", PROJECTION_HINT, blank=None)
    for col in GRAZ_FLAGS:
        if col in df.columns:
            _fail(df, ~df[col].isin(["", "1"]), csv, col,
                  "flag must be 1 or blank (GRAZPEDWRI-DX never writes 0), got {value!r}")
    dup = df["filestem"].duplicated()
    if dup.any():
        stem = df["filestem"][dup].iloc[0]
        first = int(df["_row"][df["filestem"] == stem].iloc[0])
        _fail(df, dup, csv, "filestem", f"duplicate filestem {{value!r}} (first on row {first})")

    image_dirs = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("images"))
    images = _index_files([*image_dirs, base], IMAGE_SUFFIXES)
    paths = df["filestem"].map(images)
    _fail(df, paths.isna(), csv, "filestem",
          "no image file for filestem {value!r} (looked in images_part*/, images/ and beside the CSV)")
    _check_images(df, paths, csv, "filestem")

    label_dirs = [base / "folder_structure" / "yolov5" / "labels", base / "labels"]
    labels = _index_files([d for d in label_dirs if d.is_dir()], (".txt",))
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


# --------------------------------------------------------------------------- MURA

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
    The folder suffix (``_positive``/``_negative``) must agree with the CSV's label.
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
            imgs = _index_files([study_dir], IMAGE_SUFFIXES, depth=0)
            if not imgs:
                raise InputError(csv, f"no images in study folder {study_dir}", row=n, field="path")
            for stem in sorted(imgs):
                if (problem := images.check_file(imgs[stem])) is not None:
                    raise InputError(csv, f"{problem}: {imgs[stem]}", row=n, field="path")
            split = study.parts[1] if len(study.parts) > 1 and study.parts[0] == "MURA-v1.1" else csv.stem
            study_id = f"{patient}/{study_dir.name}"
            records += [{"image_id": f"{split}/{study_id}/{stem}", "path": imgs[stem], "patient_id": patient,
                         "study_id": study_id, "age": np.nan, "sex": "U", "projection": "U", "label": int(lab),
                         "metal": False, "text_boxes": "", "source": "mura", "_row": n} for stem in sorted(imgs)]
        if records:
            frames.append(manifest.normalise(pd.DataFrame.from_records(records), csv))
    if not frames:
        raise InputError(mura, f"no XR_WRIST studies listed in {[c.name for c in csvs]}")
    return manifest.normalise(pd.concat(frames, ignore_index=True), mura)


# --------------------------------------------------------------------------- plain CSV

def _plain_csv(root: Path) -> Path | None:
    """The CSV itself, or the single CSV with an ``image_path`` column in a folder."""
    if root.is_file():
        return root
    found = sorted(p for p in root.glob("*.csv") if "image_path" in _header(p))
    if len(found) > 1:
        raise InputError(root, f"several CSVs with an image_path column: {[p.name for p in found]}; pass one")
    return found[0] if found else None


def _is_plain(root: Path) -> bool:
    csv = _plain_csv(root)
    return csv is not None and "image_path" in _header(csv)


@register_source("csv", detect=_is_plain, looks_for="a CSV with columns image_path,label (plain CSV)")
def load_csv(root: Path) -> pd.DataFrame:
    """Any data set as ``image_path,label[,age,projection,patient_id,gender,study_id,metal]``.

    ``image_path`` is relative to the CSV's folder or absolute; ``patient_id`` defaults to the
    image's stem (one patient per image: splits then cannot guard against patient leakage, so
    give it when known). Blank age/gender/projection mean unknown.
    """
    csv = _plain_csv(root)
    if csv is None:
        raise InputError(root, "no CSV with an image_path column here")
    df = _read_table(csv, ("image_path", "label"))
    _fail(df, df["image_path"] == "", csv, "image_path", "empty value")
    _fail(df, ~df["label"].isin(["0", "1"]), csv, "label", "label must be 0 or 1, got {value!r}")
    resolved = [os.path.normpath(p if os.path.isabs(p) else os.path.join(csv.parent, p)) for p in df["image_path"]]
    paths = pd.Series(resolved, index=df.index)
    _fail(df, paths.duplicated(), csv, "image_path", "duplicate image {value!r}")
    _fail(df, ~paths.map(os.path.isfile), csv, "image_path",
          f"image not found: {{value!r}} (relative paths start at {csv.parent})")
    _check_images(df, paths, csv, "image_path")
    stems = paths.map(lambda p: os.path.splitext(os.path.basename(p))[0])
    patient = df["patient_id"].where(df["patient_id"] != "", stems) if "patient_id" in df.columns else stems
    study = df["study_id"].where(df["study_id"] != "", patient) if "study_id" in df.columns else patient
    metal = pd.Series(False, index=df.index)
    if "metal" in df.columns:
        key = df["metal"].str.lower()
        _fail(df, ~key.isin(["", "0", "1", "true", "false"]), csv, "metal", "metal must be 0/1/blank, got {value!r}")
        metal = key.isin(["1", "true"])
    gender_col = "gender" if "gender" in df.columns else "sex"
    out = pd.DataFrame({
        "image_id": df["image_path"], "path": paths, "patient_id": patient, "study_id": study,
        "age": _age(df, csv), "sex": _lookup(df, csv, gender_col, SEXES, "gender", SEX_HINT, blank="U"),
        "projection": _lookup(df, csv, "projection", PROJECTIONS, "projection", PROJECTION_HINT, blank="U"),
        "label": df["label"].astype(int), "metal": metal, "text_boxes": "", "source": "csv", "_row": df["_row"],
    })
    return manifest.normalise(out, csv)


# --------------------------------------------------------------------------- summary
