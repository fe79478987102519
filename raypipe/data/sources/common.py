"""What every source adapter shares: reading CSVs as strings with line numbers, one-line errors
naming file, row and field, alias tables, the cheap image header check and fast file indexing.

Row numbers are the line numbers a person sees in an editor: in a CSV with a header the header
is line 1, so the first data row is row 2; in a header-less file (MURA's study lists, YOLO label
files) row 1 is the first line. Adapters keep that number in the ``_row`` column, which
``manifest.normalise`` uses in its own messages. (Quoted fields spanning lines would shift it;
none of the supported layouts has them.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from csv import Error as CsvError
from csv import reader as csv_reader
from pathlib import Path

import numpy as np
import pandas as pd

from raypipe.data import images, manifest
from raypipe.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PROJECTION_HINT = "1/2/3, AP, PA, Lat, lateral or oblique"
SEX_HINT = "M, F, O or U"
PROJECTIONS = {"1": "AP", "2": "Lat", "3": "Oblique", "ap": "AP", "pa": "AP", "lat": "Lat",
               "lateral": "Lat", "oblique": "Oblique", "obl": "Oblique", "u": "U", "unknown": "U"}
SEXES = {"m": "M", "f": "F", "o": "O", "u": "U", "male": "M", "female": "F", "other": "O", "unknown": "U"}
YOLO_FIELDS = ("class", "cx", "cy", "w", "h")


def check_text_file(path: Path) -> None:
    """An empty file, or UTF-16 text (Excel's "Unicode text"), fails here with what to do about it."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise InputError(path, "empty file (0 bytes)")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(path, "UTF-16 text: save the CSV as UTF-8 (with or without a BOM)")


def header_of(path: Path) -> list[str]:
    """Lower-cased column names of a CSV's first line ([] if unreadable), for cheap sniffing."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return [c.strip().lower() for c in fh.readline().split(",")]
    except OSError:
        return []


def read_table(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """Read a headed CSV as stripped strings, with ``_row`` = line number (header = line 1).

    ``utf-8-sig`` strips GRAZPEDWRI-DX's BOM and reads BOM-less files unchanged. The csv module
    (not pandas) so that a short row is an error: pandas pads it with blanks, and a truncated
    GRAZPEDWRI-DX row would silently read as "no fracture". Blank lines are skipped.
    """
    check_text_file(path)
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


def fail(df: pd.DataFrame, mask: pd.Series, file: Path, field: str, reason: str) -> None:
    """Raise for the first row where ``mask`` holds; ``{value!r}`` in ``reason`` shows its value."""
    if mask.any():
        i = int(np.flatnonzero(mask.to_numpy())[0])
        value = df[field].iloc[i] if field in df.columns else None
        raise InputError(file, reason.format(value=value), row=int(df["_row"].iloc[i]), field=field)


def check_images(df: pd.DataFrame, paths: pd.Series, file: Path, field: str) -> None:
    """Raise for the first row whose image is missing, empty, truncated or not an image.

    Header checks only (``images.check_file``): cheap enough for every image on every load.
    """
    for i, path in enumerate(paths):
        if (problem := images.check_file(path)) is not None:
            raise InputError(file, f"{problem}: {path}", row=int(df["_row"].iloc[i]), field=field)


def ages(df: pd.DataFrame, file: Path, col: str = "age") -> pd.Series:
    """Ages in years; blank -> NaN (reported as missing by ``summarize``)."""
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index)
    raw = df[col]
    age = pd.to_numeric(raw.where(raw != ""), errors="coerce")
    fail(df, (raw != "") & age.isna(), file, col, "age is not a number: {value!r}")
    lo, hi = manifest.AGE_RANGE
    fail(df, age.notna() & ~age.between(lo, hi), file, col, f"age out of range {lo:g}-{hi:g}: {{value!r}}")
    return age


def lookup(df: pd.DataFrame, file: Path, col: str, table: dict[str, str], what: str,
            expected: str, blank: str | None) -> pd.Series:
    """Map a column through an alias table (case-insensitive); blank -> ``blank`` or an error."""
    if col not in df.columns:
        return pd.Series(blank or "U", index=df.index, dtype=object)
    key = df[col].str.lower()
    if blank is None:
        fail(df, key == "", file, col, f"empty {what}")
    out = key.map(table).where(key != "", blank)
    fail(df, out.isna() & (key != ""), file, col, f"unknown {what} {{value!r}} (expected {expected})")
    return out


def index_files(dirs: Iterable[Path | str], suffixes: tuple[str, ...], depth: int = 1) -> dict[str, str]:
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
        for stem, p in index_files(subdirs, suffixes, depth - 1).items():
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
