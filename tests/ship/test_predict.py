"""`raypipe predict` against registered champions (real SQLite MLflow registry, tiny random-init models):
text boxes found where users keep them and masked as in training, Grad-CAM on the masked input, a clear
`masked: false` and warning when a masking champion gets no boxes, mixed age schemes refused, overlays
that never overwrite each other."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from raypipe.errors import InputError
from raypipe.explain import gradcam
from raypipe.ship.predict import Job, Router, predict_images
from tests.conftest import write_grazpedwri
from tests.ship.champions import SIZE, register_champion

REPO = Path(__file__).resolve().parents[2]
BOX = "0.125000 0.083333 0.187500 0.125000"  # the text box write_grazpedwri burns into every image


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("predict")
    register_champion(run_dir, "mask", "fracture", masking="fill")
    register_champion(run_dir, "mixed", "fracture", scheme="4group")
    register_champion(run_dir, "mixed", "age", scheme="3group")
    register_champion(run_dir, "latonly", "fracture/Lat")
    data = write_grazpedwri(run_dir / "graz", n_patients=2)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    return run_dir, MlflowClient(uri, registry_uri=uri), data


def ap_image(data: Path) -> Path:
    return sorted(data.glob("images_part*/*_WRI-L1_*.png"))[0]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raypipe", "predict", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_boxes_come_from_the_layout_labels_folder_or_csv_and_are_masked(store, tmp_path):
    run_dir, client, data = store
    image = ap_image(data)
    loose = tmp_path / "loose" / image.name  # the same film away from its data set: no boxes anywhere
    loose.parent.mkdir()
    shutil.copy(image, loose)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{image.stem}.txt").write_text(f"3 0.5 0.5 0.2 0.2\n8 {BOX}\n8 0.8 0.9 0.1 0.05\n")
    warnings: list[str] = []
    rows = predict_images(client, "mask", [Job(image, age=9), Job(loose, age=9), Job(loose, age=9, text_boxes=BOX)],
                          tmp_path / "out", warn=warnings.append)
    assert [(r["boxes_from"], r["masked"], r["boxes_masked"]) for r in rows] == [
        ("grazpedwri", True, 1), ("none", False, 0), ("csv", True, 1)]
    assert {r["masking"] for r in rows} == {"fill"}
    assert rows[0]["probability"] == pytest.approx(rows[2]["probability"], abs=1e-7)  # same film, same box
    assert rows[1]["probability"] != pytest.approx(rows[0]["probability"], abs=1e-9)  # the marker, raw
    assert len(warnings) == 1 and str(loose) in warnings[0] and "mask.fracture" in warnings[0]

    by_labels = predict_images(client, "mask", [Job(loose, age=9)], tmp_path / "out2", labels_dir=labels,
                               warn=warnings.append)[0]
    assert (by_labels["boxes_from"], by_labels["boxes_masked"]) == ("labels", 2)  # class 8 only
    assert len(warnings) == 1


def test_gradcam_is_computed_on_the_masked_input(store, tmp_path):
    run_dir, client, data = store
    image = ap_image(data)
    row = predict_images(client, "mask", [Job(image, age=9)], tmp_path, warn=print)[0]
    shown = cv2.imread(row["gradcam"])
    net = Router(client, "mask").champion("fracture").model.model
    masked = gradcam.overlay(net, image, SIZE, "fill", BOX)
    raw = gradcam.overlay(net, image, SIZE, "off")
    assert np.abs(shown.astype(int) - masked.astype(int)).max() <= 1
    assert np.abs(shown.astype(int) - raw.astype(int)).max() > 1


def test_same_file_name_in_two_folders_gives_two_overlays(store, tmp_path):
    _, client, data = store
    image = ap_image(data)
    twin = tmp_path / "other" / image.name
    twin.parent.mkdir()
    cv2.imwrite(str(twin), np.flipud(cv2.imread(str(image), cv2.IMREAD_UNCHANGED)))
    rows = predict_images(client, "mask", [Job(image, age=9), Job(twin, age=9)], tmp_path / "out", warn=print)
    overlays = [Path(r["gradcam"]) for r in rows]
    assert overlays[0] != overlays[1] and all(p.is_file() for p in overlays)
    assert overlays[0].read_bytes() != overlays[1].read_bytes()


def test_champions_on_different_age_schemes_are_refused(store, tmp_path):
    _, client, data = store
    with pytest.raises(InputError, match="different age schemes") as refused:
        predict_images(client, "mixed", [Job(ap_image(data), age=9)], tmp_path, warn=print)
    assert "mixed.age v1 [8.0, 15.0]" in str(refused.value) and "mixed.fracture v1 [5.0, 10.0, 15.0]" in str(refused.value)
    # an experiment with champions, none for this projection: the missing one is named
    with pytest.raises(InputError, match="no fracture champion for fracture/AP or fracture"):
        predict_images(client, "latonly", [Job(ap_image(data), age=9)], tmp_path, warn=print)


def test_cli_masks_csv_boxes_warns_once_and_refuses_bad_input_in_one_line(store, tmp_path):
    run_dir, _, data = store
    image = ap_image(data)
    loose = tmp_path / image.name
    shutil.copy(image, loose)
    batch = tmp_path / "batch.csv"
    batch.write_text(f"image,age,text_boxes\n{image},9,\n{loose},9,\n{loose},9,{BOX}\n")
    common = ["--run-dir", str(run_dir), "--experiment", "mask"]
    proc = run_cli("--csv", str(batch), *common, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["masked"], r["boxes_masked"], r["boxes_from"]) for r in rows] == [
        (True, 1, "grazpedwri"), (False, 0, "none"), (True, 1, "csv")]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(loose) in warnings[0] and "--csv row" in warnings[0]

    batch.write_text(f"image,age,text_boxes\n{image},9,0.5 0.5 0.2\n")
    bad = run_cli("--csv", str(batch), *common)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "row 2" in bad.stderr and "text_boxes" in bad.stderr
    mixed = run_cli(str(image), "--age", "9", "--run-dir", str(run_dir), "--experiment", "mixed")
    assert mixed.returncode == 2 and "different age schemes" in mixed.stderr, mixed.stderr
    assert mixed.stderr.strip().count("\n") == 0
