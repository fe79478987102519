"""The synthetic data set must be indistinguishable in layout from GRAZPEDWRI-DX and carry signal."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from raypipe.data.synth import COLUMNS, FLAGS, synthesize
from raypipe.errors import InputError

STEM = re.compile(r"^(\d{4})_(\d{10})_(\d{2})_WRI-([LR])([123])_([MFO])(\d{3})$")
AO = re.compile(r"^23[ru]-[ME]/\d(\.\d)?$")
SIZE = (96, 64)  # height, width


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]], dict]:
    out = tmp_path_factory.mktemp("synth") / "graz"
    summary = synthesize(out, patients=16, seed=3, height=SIZE[0], width=SIZE[1])
    with open(out / "dataset.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return out, rows, summary


def _image(out: Path, stem: str) -> Path:
    found = list(out.glob(f"images_part[1-4]/{stem}.png"))
    assert len(found) == 1, stem
    return found[0]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_csv_layout_bom_and_columns(synth):
    out, rows, summary = synth
    raw = (out / "dataset.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert raw[3:].decode().splitlines()[0].split(",") == COLUMNS
    assert len(COLUMNS) == 17 and len(rows) == summary["images"] > 0
    assert summary["patients"] == 16 == len({r["patient_id"] for r in rows})
    assert summary["fractures"] == sum(r["fracture_visible"] == "1" for r in rows)
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.csv", "folder_structure", "images_part1", "images_part2", "images_part3", "images_part4"]


def test_values_follow_published_conventions(synth):
    _, rows, _ = synth
    for r in rows:
        for flag in FLAGS:
            assert r[flag] in ("", "1"), (flag, r[flag])
        assert re.fullmatch(r"\d{4}", r["patient_id"]) and re.fullmatch(r"\d{10}", r["timehash"])
        assert r["projection"] in ("1", "2", "3") and r["gender"] in ("M", "F", "O")
        assert re.fullmatch(r"\d{1,2}\.\d", r["age"]) and 0.2 <= float(r["age"]) <= 19.0
        assert float(r["pixel_spacing"]) > 0 and r["device_manufacturer"]
        codes = r["ao_classification"]
        assert bool(codes) == (r["fracture_visible"] == "1")
        assert all(AO.match(c) for c in codes.split("; ")) if codes else True
    assert {r["fracture_visible"] for r in rows} == {"", "1"}
    assert all(r["initial_exam"] == "1" for r in rows if r["study_number"] == "1")


def test_filestems_encode_the_row(synth):
    _, rows, _ = synth
    for r in rows:
        m = STEM.match(r["filestem"])
        assert m, r["filestem"]
        pid, timehash, study, side, proj, sex, age10 = m.groups()
        assert (pid, timehash, int(study), side, proj, sex) == (
            r["patient_id"], r["timehash"], int(r["study_number"]), r["laterality"], r["projection"], r["gender"])
        assert int(age10) == round(float(r["age"]) * 10)


def test_pngs_are_16_bit_and_near_requested_size(synth):
    out, rows, _ = synth
    for r in rows:
        img = cv2.imread(str(_image(out, r["filestem"])), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.ndim == 2
        for got, want in zip(img.shape, SIZE, strict=True):
            assert 0.9 * want - 1 <= got <= 1.1 * want + 1
        assert img.max() > 256  # really uses the 16-bit range


def test_yolo_labels_in_folder_structure(synth):
    out, rows, _ = synth
    labels = out / "folder_structure" / "yolov5" / "labels"
    n_text = 0
    for r in rows:
        lines = (labels / f"{r['filestem']}.txt").read_text().splitlines()
        boxes = [(int(c), *map(float, rest)) for c, *rest in (ln.split() for ln in lines)]
        classes = {b[0] for b in boxes}
        assert classes <= {3, 4, 8}
        assert (3 in classes) == (r["fracture_visible"] == "1")
        assert (4 in classes) == (r["metal"] == "1")
        for _, cx, cy, bw, bh in boxes:
            assert 0 < bw <= 1 and 0 < bh <= 1
            assert -1e-6 <= cx - bw / 2 and cx + bw / 2 <= 1 + 1e-6
            assert -1e-6 <= cy - bh / 2 and cy + bh / 2 <= 1 + 1e-6
        n_text += 8 in classes
    assert n_text >= 0.7 * len(rows)  # most images carry a burned-in marker
    assert not list(out.glob("images_part*/*.txt"))  # labels are NOT next to the images


def test_text_box_is_bright_in_the_image(synth):
    out, rows, _ = synth
    r = next(r for r in rows if "8 " in (out / "folder_structure/yolov5/labels" / f"{r['filestem']}.txt").read_text())
    img = cv2.imread(str(_image(out, r["filestem"])), cv2.IMREAD_UNCHANGED)
    h, w = img.shape
    line = next(ln for ln in (out / "folder_structure/yolov5/labels" / f"{r['filestem']}.txt").read_text()
                .splitlines() if ln.startswith("8 "))
    _, cx, cy, bw, bh = map(float, line.split())
    patch = img[round((cy - bh / 2) * h):round((cy + bh / 2) * h), round((cx - bw / 2) * w):round((cx + bw / 2) * w)]
    assert np.median(patch) > np.median(img)


def test_studies_in_age_order_and_consistent(synth):
    _, rows, _ = synth
    by_patient: dict[str, dict[int, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_patient[r["patient_id"]][int(r["study_number"])].append(r)
    for studies in by_patient.values():
        assert sorted(studies) == list(range(1, len(studies) + 1))
        ages = [float(studies[s][0]["age"]) for s in sorted(studies)]
        assert ages == sorted(ages)
        for views in studies.values():
            assert {v["projection"] for v in views} >= {"1", "2"}
            for key in ("age", "fracture_visible", "timehash", "metal", "laterality"):
                assert len({v[key] for v in views}) == 1, key


def test_deterministic_per_seed_and_worker_count(tmp_path):
    a = synthesize(tmp_path / "a", patients=6, seed=11, height=64, width=48)
    synthesize(tmp_path / "b", patients=6, seed=11, height=64, width=48, workers=3)
    synthesize(tmp_path / "c", patients=6, seed=12, height=64, width=48)
    fa, fb, fc = (_files(tmp_path / n) for n in "abc")
    assert fa == fb and len(fa) == 1 + 2 * a["images"]
    assert fa != fc


def test_progress_counts_images_and_crash_leaves_nothing(tmp_path):
    seen: list[tuple[int, int]] = []
    summary = synthesize(tmp_path / "ok", patients=3, height=48, width=40, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (summary["images"], summary["images"])
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    def boom(done: int, total: int) -> None:
        if done >= 2:
            raise RuntimeError("crash mid-write")

    for workers in (1, 2):
        with pytest.raises(RuntimeError):
            synthesize(tmp_path / "crash", patients=3, height=48, width=40, progress=boom, workers=workers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_refuses_non_empty_out(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists and is not empty"):
        synthesize(out, patients=2, height=48, width=40)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="patients >= 1"):
        synthesize(tmp_path / "none", patients=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthesize(empty, patients=2, height=48, width=40)["images"] >= 4


def test_age_is_learnable_in_principle(tmp_path):
    """Forearm + hand area (pixels above 10% of the image's own window) grows with age in AP views."""
    out = tmp_path / "age"
    synthesize(out, patients=40, seed=5, height=96, width=64)
    with open(out / "dataset.csv", encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["projection"] == "1"]
    assert len(rows) >= 50
    ages, area = [], []
    for r in rows:
        img = cv2.imread(str(_image(out, r["filestem"])), cv2.IMREAD_UNCHANGED).astype(np.float32)
        img = cv2.GaussianBlur(cv2.resize(img, (64, 96), interpolation=cv2.INTER_AREA), (0, 0), 1)
        lo, hi = np.percentile(img, [2, 99])
        ages.append(float(r["age"]))
        area.append(float(((img - lo) / (hi - lo + 1) > 0.1).mean()))
    assert spearmanr(ages, area).statistic > 0.5


def test_no_nuisance_feature_tells_the_label(tmp_path):
    """A model must learn the fracture, not a trace of the generator: image size, mean intensity, the cast,
    the text marker's position, the study number in the file name and the initial-exam flag each separate
    fracture from normal at AUROC <= 0.6 (either direction)."""
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "nuisance"
    synthesize(out, patients=200, seed=21, height=64, width=40)
    with open(out / "dataset.csv", encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["metal"] != "1"]  # metal is excluded from training by default
    label = np.array([r["fracture_visible"] == "1" for r in rows])
    assert 0.3 < label.mean() < 0.7 and len(rows) > 500
    features: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        img = cv2.imread(str(_image(out, r["filestem"])), cv2.IMREAD_UNCHANGED)
        features["image size"].append(img.size)
        features["mean intensity"].append(float(img.mean()))
        features["cast"].append(r["cast"] == "1")
        text = [line.split() for line in (out / "folder_structure/yolov5/labels" / f"{r['filestem']}.txt")
                .read_text().splitlines() if line.startswith("8 ")]
        features["text x"].append(float(text[0][1]) if text else -1.0)
        features["text y"].append(float(text[0][2]) if text else -1.0)
        features["study number"].append(int(STEM.match(r["filestem"]).group(3)))
        features["initial exam"].append(r["initial_exam"] == "1")
    for name, values in features.items():
        auroc = roc_auc_score(label, np.asarray(values, dtype=float))
        assert max(auroc, 1 - auroc) <= 0.6, f"{name} predicts the label: AUROC {auroc:.3f}"


def test_marker_shortcut_set_carries_the_label_only_in_the_markers_corner(tmp_path):
    out = tmp_path / "marker"
    summary = synthesize(out, patients=12, seed=4, height=SIZE[0], width=SIZE[1], shortcut="marker")
    with open(out / "dataset.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = [r["fracture_visible"] == "1" for r in rows]
    assert 0 < sum(labels) < len(rows) == summary["images"]
    for row, fracture in zip(rows, labels, strict=True):
        lines = (out / "folder_structure" / "yolov5" / "labels" / f"{row['filestem']}.txt").read_text().splitlines()
        classes = [int(line.split()[0]) for line in lines]
        assert 3 not in classes  # no fracture drawn
        text = [tuple(map(float, line.split()[1:3])) for line in lines if line.startswith("8 ")]
        assert len(text) == 1  # every image has its marker
        cx, cy = text[0]
        assert (cx < 0.5 and cy < 0.5) if fracture else (cx > 0.5 and cy > 0.5)
    with pytest.raises(InputError, match="shortcut"):
        synthesize(tmp_path / "bad", patients=2, shortcut="text")
