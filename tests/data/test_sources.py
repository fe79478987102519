"""Source adapters: real layouts load into the canonical manifest; bad input fails as one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from raypipe.data import manifest, sources
from raypipe.data.groups import get_scheme
from raypipe.data.summary import summarize
from raypipe.errors import InputError
from tests.conftest import write_grazpedwri

BAD = Path(__file__).parent / "bad"


def expect_error(call, file: str, row: int | None, field: str | None, *words: str) -> str:
    """Run ``call``; assert an InputError naming ``file``, ``row`` and ``field`` in one line."""
    with pytest.raises(InputError) as info:
        call()
    err, msg = info.value, str(info.value)
    assert "\n" not in msg
    assert Path(err.file).name == file, msg
    assert (err.row, err.field) == (row, field), msg
    assert msg.startswith(err.file)
    if row is not None:
        assert f"row {row}" in msg
    if field is not None:
        assert f"field '{field}'" in msg
    for w in words:
        assert w in msg, msg
    return msg


def write_png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return path


# ----------------------------------------------------------------------------- GRAZPEDWRI-DX

def test_grazpedwri_layout_loads(grazpedwri_tiny: Path) -> None:
    assert (grazpedwri_tiny / "dataset.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert sources.detect_kind(grazpedwri_tiny) == "grazpedwri"
    m = sources.load_source(grazpedwri_tiny)
    assert list(m.columns) == manifest.COLUMNS
    assert len(m) == 12 and m["patient_id"].nunique() == 6
    assert m["patient_id"].iloc[0] == "0001"  # zero padding kept: ids are strings
    assert m["study_id"].iloc[0] == "0001/1"
    assert set(m["projection"]) == {"AP", "Lat"} and set(m["sex"]) == {"M", "F"}
    assert m["label"].sum() == 6 and not m["metal"].any()  # blank flags -> 0 / False
    assert m["image_id"].iloc[0].startswith("0001_")
    for p in m["path"]:
        assert Path(p).is_absolute() and Path(p).parent.name.startswith("images_part")
    img = cv2.imread(m["path"].iloc[0], cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    boxes = manifest.parse_boxes(m["text_boxes"].iloc[0])
    assert boxes == [pytest.approx((0.125, 0.083333, 0.1875, 0.125))]
    assert m["source"].eq("grazpedwri").all()


def test_grazpedwri_accepts_csv_path_and_no_bom(grazpedwri_tiny: Path) -> None:
    csv = grazpedwri_tiny / "dataset.csv"
    csv.write_text(csv.read_text(encoding="utf-8-sig"), encoding="utf-8")
    assert not csv.read_bytes().startswith(b"\xef\xbb\xbf")
    assert sources.detect_kind(csv) == "grazpedwri"
    assert len(sources.load_source(csv)) == 12


def test_grazpedwri_flat_images_and_root_labels(grazpedwri_tiny: Path) -> None:
    flat = grazpedwri_tiny / "images"
    flat.mkdir()
    for part in grazpedwri_tiny.glob("images_part*"):
        for f in part.iterdir():
            f.rename(flat / f.name)
        part.rmdir()
    (grazpedwri_tiny / "folder_structure" / "yolov5" / "labels").rename(grazpedwri_tiny / "labels")
    m = sources.load_source(grazpedwri_tiny, "grazpedwri")
    assert all(Path(p).parent == flat for p in m["path"])
    assert (m["text_boxes"] != "").all()


def test_grazpedwri_only_text_class_becomes_text_boxes(tmp_path: Path) -> None:
    root = write_grazpedwri(tmp_path / "g", n_patients=1)
    label = next((root / "folder_structure/yolov5/labels").iterdir())
    label.write_text("3 0.5 0.5 0.2 0.2\n\n8 0.1 0.1 0.05 0.05\n")
    m = sources.load_source(root).set_index("image_id")
    assert manifest.parse_boxes(m.loc[label.stem, "text_boxes"]) == [pytest.approx((0.1, 0.1, 0.05, 0.05))]


def test_grazpedwri_missing_image(grazpedwri_tiny: Path) -> None:
    victim = sorted(grazpedwri_tiny.glob("images_part*/*.png"))[0]
    victim.unlink()
    rows = (grazpedwri_tiny / "dataset.csv").read_text(encoding="utf-8-sig").splitlines()
    row = next(i for i, line in enumerate(rows, start=1) if line.startswith(victim.stem))
    expect_error(lambda: sources.load_source(grazpedwri_tiny), "dataset.csv", row, "filestem",
                 victim.stem, "no image file")


def test_grazpedwri_bad_label_line_names_label_file(grazpedwri_tiny: Path) -> None:
    label = sorted((grazpedwri_tiny / "folder_structure/yolov5/labels").iterdir())[3]
    shutil.copy(BAD / "yolo_bad_line.txt", label)
    expect_error(lambda: sources.load_source(grazpedwri_tiny), label.name, 2, "cy", "'abc'")


@pytest.mark.parametrize(("text", "field"), [
    ("8 0.5 0.5\n", "w"),
    ("x 0.5 0.5 0.1 0.1\n", "class"),
    ("8 0.5 0.5 1.5 0.1\n", "w"),
    ("8 0.5 0.5 0.1 nan\n", "h"),
])
def test_yolo_malformed(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "x.txt"
    f.write_text("8 0.1 0.1 0.1 0.1\n" + text)
    expect_error(lambda: sources.parse_yolo(f), "x.txt", 2, field)


@pytest.mark.parametrize(("name", "row", "field", "words"), [
    ("graz_missing_column.csv", 1, "fracture_visible", ["missing required column"]),
    ("graz_bad_age.csv", 3, "age", ["not a number", "'twelve'"]),
    ("graz_age_out_of_range.csv", 2, "age", ["out of range", "'31.0'"]),
    ("graz_unknown_projection.csv", 3, "projection", ["unknown projection '4'"]),
    ("graz_unknown_gender.csv", 2, "gender", ["unknown gender 'X'"]),
    ("graz_bad_flag.csv", 4, "metal", ["1 or blank", "'0'"]),
    ("graz_duplicate_filestem.csv", 4, "filestem", ["duplicate filestem", "first on row 2"]),
    ("graz_ragged.csv", 3, None, ["18 fields", "header has 17"]),
    ("graz_short_row.csv", 3, None, ["15 fields", "header has 17"]),  # pandas would pad it silently
    ("graz_empty.csv", None, None, ["empty file (0 bytes)"]),
    ("graz_header_only.csv", None, None, ["header only"]),
])
def test_grazpedwri_bad_inputs(name: str, row: int | None, field: str | None, words: list[str]) -> None:
    expect_error(lambda: sources.load_source(BAD / name, "grazpedwri"), name, row, field, *words)


def test_bad_corpus_detected_as_grazpedwri() -> None:
    assert sources.detect_kind(BAD / "graz_bad_age.csv") == "grazpedwri"
    expect_error(lambda: sources.load_source(BAD / "graz_empty.csv"), "graz_empty.csv", None, None, "0 bytes")


def test_blank_lines_keep_row_numbers(tmp_path: Path) -> None:
    lines = (BAD / "graz_bad_age.csv").read_text().splitlines()
    f = tmp_path / "dataset.csv"
    f.write_text("\n".join([lines[0], lines[1], "", lines[2], lines[3]]) + "\n")
    expect_error(lambda: sources.load_source(f), "dataset.csv", 4, "age")


# ----------------------------------------------------------------------------- MURA

def write_mura(root: Path) -> Path:
    """Tiny MURA-v1.1 tree: 2 train wrist studies, 1 valid, plus an elbow study to be ignored."""
    mura = root / "MURA-v1.1"
    studies = {
        "train": [("XR_WRIST", "patient00001", "study1_positive", 1, 3),
                  ("XR_WRIST", "patient00002", "study1_negative", 0, 2),
                  ("XR_ELBOW", "patient00003", "study1_positive", 1, 1)],
        "valid": [("XR_WRIST", "patient11185", "study1_positive", 1, 2)],
    }
    for split, rows in studies.items():
        lines = []
        for part, patient, study, label, n in rows:
            rel = f"MURA-v1.1/{split}/{part}/{patient}/{study}/"
            for k in range(1, n + 1):
                write_png(root / rel / f"image{k}.png")
            lines.append(f"{rel},{label}")
        (mura / f"{split}_labeled_studies.csv").write_text("\n".join(lines) + "\n")
    return root


def test_mura_layout_loads(tmp_path: Path) -> None:
    root = write_mura(tmp_path / "m")
    for where in (root, root / "MURA-v1.1"):
        assert sources.detect_kind(where) == "mura"
        m = sources.load_source(where)
        assert len(m) == 7 and set(m["source"]) == {"mura"}
        by_patient = m.groupby("patient_id")["label"].agg(["min", "max", "size"])
        assert by_patient.to_dict("index") == {
            "patient00001": {"min": 1, "max": 1, "size": 3},
            "patient00002": {"min": 0, "max": 0, "size": 2},
            "patient11185": {"min": 1, "max": 1, "size": 2},
        }
        assert m["age"].isna().all() and set(m["sex"]) == {"U"} and set(m["projection"]) == {"U"}
        assert not m["metal"].any() and m["study_id"].nunique() == 3
        assert m["image_id"].iloc[0] == "train/patient00001/study1_positive/image1"


def test_mura_errors(tmp_path: Path) -> None:
    root = write_mura(tmp_path / "m")
    csv = root / "MURA-v1.1/train_labeled_studies.csv"
    good = csv.read_text()
    csv.write_text(good.replace("study1_negative/,0", "study1_negative/,1"))
    expect_error(lambda: sources.load_source(root), csv.name, 2, "label", "contradicts")
    csv.write_text(good.replace("patient00002", "patient09999"))
    expect_error(lambda: sources.load_source(root), csv.name, 2, "path", "not found")
    csv.write_text(good.replace("study1_negative/,0", "study1_negative/,maybe"))
    expect_error(lambda: sources.load_source(root), csv.name, 2, "label", "'maybe'")


# ----------------------------------------------------------------------------- plain CSV

def test_plain_csv_loads_with_aliases(tmp_path: Path) -> None:
    aliases = ["AP", "pa", "Lat", "LATERAL", "1", "2", "3", "oblique", ""]
    canonical = ["AP", "AP", "Lat", "Lat", "AP", "Lat", "Oblique", "Oblique", "U"]
    absolute = write_png(tmp_path / "elsewhere" / "abs.png")
    lines = ["image_path,label,age,projection,patient_id,gender"]
    for i, proj in enumerate(aliases):
        write_png(tmp_path / "data" / "img" / f"i{i}.png")
        pid = "p1" if i < 2 else ""
        lines.append(f"img/i{i}.png,{i % 2},{'' if i == 0 else 5 + i},{proj},{pid},{'mfOu'[i % 4]}")
    lines.append(f"{absolute},1,,,,")
    csv = tmp_path / "data" / "my.csv"
    csv.write_text("\n".join(lines) + "\n")
    for where in (csv, csv.parent):
        assert sources.detect_kind(where) == "csv"
        m = sources.load_source(where)
        assert list(m["projection"]) == [*canonical, "U"]
        assert list(m["patient_id"][:3]) == ["p1", "p1", "i2"]  # defaults to the image stem
        assert m["path"].iloc[-1] == str(absolute) and m["path"].iloc[0] == str(tmp_path / "data/img/i0.png")
        assert m["age"].isna().sum() == 2 and list(m["sex"][:4]) == ["M", "F", "O", "U"]
        assert m["source"].eq("csv").all()


def test_plain_csv_errors(tmp_path: Path) -> None:
    expect_error(lambda: sources.load_source(BAD / "plain_missing_label.csv"), "plain_missing_label.csv", 1,
                 "label", "missing required column")
    for name in ("a", "b", "c"):
        write_png(tmp_path / "img" / f"{name}.png")
    shutil.copy(BAD / "plain_bad_projection.csv", tmp_path / "list.csv")
    expect_error(lambda: sources.load_source(tmp_path / "list.csv"), "list.csv", 4, "projection",
                 "unknown projection 'sideways'")
    (tmp_path / "list.csv").write_text("image_path,label\nimg/a.png,1\nimg/zz.png,0\n")
    expect_error(lambda: sources.load_source(tmp_path / "list.csv"), "list.csv", 3, "image_path", "zz.png")
    (tmp_path / "list.csv").write_text("image_path,label\nimg/a.png,1\nimg/b.png,2\n")
    expect_error(lambda: sources.load_source(tmp_path / "list.csv"), "list.csv", 3, "label", "'2'")
    (tmp_path / "list.csv").write_text("image_path,label\nimg/a.png,1\n./img/a.png,0\n")
    expect_error(lambda: sources.load_source(tmp_path / "list.csv"), "list.csv", 3, "image_path", "duplicate")


# ----------------------------------------------------------------------------- detection, registry, summary

def test_detect_kind_fails_with_what_it_looked_for(tmp_path: Path) -> None:
    msg = expect_error(lambda: sources.detect_kind(tmp_path), tmp_path.name, None, None)
    for what in ("dataset.csv", "MURA-v1.1", "image_path"):
        assert what in msg
    expect_error(lambda: sources.load_source(tmp_path / "nope"), "nope", None, None, "no such file")
    expect_error(lambda: sources.load_source(tmp_path, "dicom"), tmp_path.name, None, "kind", "unknown source")


def test_register_source_adds_one_function(tmp_path: Path) -> None:
    marker = tmp_path / "TOY"
    marker.write_text("")

    @sources.register_source("toy", detect=lambda root: (root / "TOY").exists(), looks_for="TOY")
    def load_toy(root: Path) -> pd.DataFrame:
        return manifest.empty()

    try:
        assert sources.SOURCES["toy"] is load_toy
        assert sources.detect_kind(tmp_path) == "toy"
    finally:
        sources.SOURCES.pop("toy")
        sources._DETECT.pop("toy")
    assert set(sources.SOURCES) == {"grazpedwri", "mura", "csv"}


def test_summarize(grazpedwri_tiny: Path, tmp_path: Path) -> None:
    m = sources.load_source(grazpedwri_tiny)
    m.loc[0, "age"] = np.nan
    m.loc[1, "metal"] = True
    scheme = get_scheme("4group")
    s = summarize(m, scheme)
    assert (s["images"], s["patients"], s["studies"]) == (12, 6, 6)
    assert (s["metal"], s["text_boxes"], s["missing_age"]) == (1, 12, 1)
    table = s["table"]
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["normal", "fracture", "total"]
    assert list(table.index.get_level_values("age_group").unique()) == [*scheme.labels(), "unknown"]
    assert table["total"].sum() == 12 and table["fracture"].sum() == m["label"].sum()
    assert table.loc[("AP", "unknown"), "total"] + table.loc[("Lat", "unknown"), "total"] == 1
    mura = summarize(sources.load_source(write_mura(tmp_path / "m")), scheme)
    assert mura["missing_age"] == 7 and list(mura["table"].index.get_level_values(0).unique()) == ["U"]
    assert (mura["held_out"], s["held_out"]) == (2, 0)  # MURA's valid split; GRAZPEDWRI-DX has none


def test_mura_valid_split_is_held_out(tmp_path: Path) -> None:
    m = sources.load_source(write_mura(tmp_path / "m"))
    held = m.set_index("image_id")["held_out"]
    assert held.to_dict() == {i: i.startswith("valid/") for i in m["image_id"]}
    assert held.sum() == 2
    graz = sources.load_source(write_grazpedwri(tmp_path / "g"))
    assert not graz["held_out"].any()  # a layout without a split of its own holds nothing out
    path = tmp_path / "manifest.csv"
    manifest.save(m, path)
    assert manifest.load(path)["held_out"].equals(m["held_out"])  # survives the round trip


def test_old_import_paths_still_work() -> None:
    """The adapters moved into a package (one module per layout); what callers import stays."""
    from raypipe.data.sources import _graz_csv, load_csv, load_grazpedwri, load_mura, parse_yolo  # noqa: F401
    from raypipe.data.sources.mura import load_mura as moved

    assert sources.SOURCES["mura"] is moved is load_mura
    assert list(sources.SOURCES) == ["grazpedwri", "mura", "csv"]  # detection order


def test_plain_csv_split_column_marks_its_own_test_set(tmp_path: Path) -> None:
    lines = ["image_path,label,patient_id,split"]
    for i, split in enumerate(["train", "", "test", "TEST"]):
        write_png(tmp_path / f"i{i}.png")
        lines.append(f"i{i}.png,{i % 2},p{i},{split}")
    csv = tmp_path / "list.csv"
    csv.write_text("\n".join(lines) + "\n")
    assert sources.load_source(csv)["held_out"].tolist() == [False, False, True, True]
    csv.write_text(csv.read_text().replace("i1.png,1,p1,", "i1.png,1,p1,valid"))
    expect_error(lambda: sources.load_source(csv), "list.csv", 3, "split", "'valid'")
