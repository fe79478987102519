"""A MURA-v1.1-layout wrist set through the real CLI: data check, tune, promote, predict.

MURA records no projection and no age and publishes its own test split (`valid`): the `fracture`
target trains on every image, MURA's `valid` split is the fixed test set (train/val drawn from MURA's
`train`, no patient in both), and the targets MURA cannot feed (`fracture/AP`, `age`) stop with one line.
The images are the synthetic shortcut set (a text marker burned in on fracture images only) rewritten in
MURA's layout, 8-bit like MURA's: a tiny model learns the marker in a few epochs, so the promotion can
crown a champion for `predict` to use.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from raypipe.data.images import to_uint8, window
from raypipe.data.synth import synthesize
from tests.e2e.conftest import raypipe

# The base config is the study's first trial: with one trial, these settings (lr and batch size are searched,
# so they come from a config file, not --set).
TINY = {"image_size": 40, "lr": 0.004, "batch_size": 16, "masking": "off", "epochs": 4}


def write_mura_from(graz: Path, root: Path, valid_share: float = 0.25) -> Path:
    """A GRAZPEDWRI-DX-layout set rewritten as ``MURA-v1.1/{train,valid}/XR_WRIST/patientNNNNN/
    studyK_{positive|negative}/imageN.png`` plus the two ``*_labeled_studies.csv``. A MURA study has one
    label: images are grouped by (patient, study, label). The last patients form ``valid``, numbered from
    11185 like MURA's."""
    table = pd.read_csv(graz / "dataset.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    paths = {p.stem: p for p in graz.glob("images_part*/*.png")}
    patients = sorted(table["patient_id"].unique())
    n_valid = max(2, round(len(patients) * valid_share))
    lists: dict[str, list[str]] = {"train": [], "valid": []}
    for i, pid in enumerate(patients):
        split = "valid" if i >= len(patients) - n_valid else "train"
        name = f"patient{11185 + i if split == 'valid' else i + 1:05d}"
        rows = table[table["patient_id"] == pid]
        for k, ((_, label), group) in enumerate(rows.groupby(["study_number", "fracture_visible"]), start=1):
            rel = f"MURA-v1.1/{split}/XR_WRIST/{name}/study{k}_{'positive' if label == '1' else 'negative'}/"
            (root / rel).mkdir(parents=True)
            for n, stem in enumerate(group["filestem"], start=1):
                # MURA's PNGs are 8-bit and display-ready: the 16-bit film windowed as a viewer would
                img = to_uint8(window(cv2.imread(str(paths[stem]), cv2.IMREAD_UNCHANGED).astype("float32")))
                cv2.imwrite(str(root / rel / f"image{n}.png"), img)
            lists[split].append(f"{rel},{1 if label == '1' else 0}")
    for split, lines in lists.items():
        (root / "MURA-v1.1" / f"{split}_labeled_studies.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def mura(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mura")
    synthesize(tmp / "graz", patients=60, seed=11, height=128, width=80, shortcut="presence")
    return write_mura_from(tmp / "graz", tmp / "mura")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mura-config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def tuned(mura, config, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mura-runs")
    common = ["--data", str(mura), "--run-dir", str(run_dir), "--experiment", "mura"]
    proc = raypipe("tune", *common, "--target", "fracture", "--trials", "1", "--config", str(config))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    promoted = raypipe("promote", *common, "--target", "fracture", "--bootstrap", "100", "--folds", "2")
    assert promoted.returncode == 0, promoted.stdout[-4000:] + promoted.stderr[-4000:]
    return run_dir, proc, promoted


def test_data_check_reads_the_mura_layout(mura):
    proc = raypipe("data", "check", str(mura))
    assert proc.returncode == 0, proc.stderr
    images = len(list(mura.glob("MURA-v1.1/*/XR_WRIST/*/*/*.png")))
    assert f"images: {images}" in proc.stdout and "sources: {'mura': " in proc.stdout
    assert f"missing age: {images}" in proc.stdout  # MURA records no age
    assert f"held out: {len(list(mura.glob('MURA-v1.1/valid/XR_WRIST/*/*/*.png')))}" in proc.stdout  # valid


def test_valid_is_the_fixed_test_set_and_patients_never_cross(tuned, mura):
    run_dir, *_ = tuned
    data_dir = next((run_dir / "data").iterdir())
    manifest = pd.read_csv(data_dir / "manifest.csv", dtype=str, keep_default_na=False)
    splits = pd.read_csv(next(data_dir.glob("splits-*.csv")), dtype=str, keep_default_na=False)
    table = manifest.assign(split=splits["split"])
    assert (table["split"] == "test").tolist() == table["image_id"].str.startswith("valid/").tolist()
    assert set(table.loc[table["image_id"].str.startswith("train/"), "split"]) == {"train", "val"}
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    assert (table["split"] == "test").sum() == len(list(mura.glob("MURA-v1.1/valid/XR_WRIST/*/*/*.png")))


def test_fracture_tunes_and_is_promoted_on_the_valid_split(tuned):
    run_dir, tuned_proc, promoted = tuned
    assert "fracture" in tuned_proc.stdout
    assert "mura.fracture v1: " in promoted.stdout and "-> champion" in promoted.stdout, promoted.stdout[-2000:]
    assert "test auroc" in promoted.stdout  # on MURA's valid split (the test set checked above)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    version = client.get_model_version("mura.fracture", "1")
    assert "champion" in version.aliases, version.tags.get("promotion")


def test_predict_answers_with_the_fracture_champion(tuned, mura, tmp_path):
    run_dir, *_ = tuned
    image = sorted(mura.glob("MURA-v1.1/valid/XR_WRIST/*/*/image1.png"))[0]
    # MURA file names carry no projection and predict routes by projection: any one falls back to `fracture`.
    proc = raypipe("predict", str(image), "--projection", "AP", "--run-dir", str(run_dir), "--experiment", "mura",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert row["model"] == "mura.fracture" and row["version"] == "1"
    assert 0 <= row["probability"] <= 1 and row["decision"] in ("fracture", "normal")
    assert Path(row["gradcam"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_projection_targets_stop_with_one_line(tuned, mura, config):
    """`age` is refused the same way (tests/data/test_targets.py): one CLI start (~10 s of imports) is enough here."""
    run_dir, *_ = tuned  # its image cache is built: the refusal costs the imports only
    studies = sorted((run_dir / "tune").rglob("study.json"))
    proc = raypipe("tune", "--data", str(mura), "--run-dir", str(run_dir), "--experiment", "mura", "--target",
                   "fracture/AP", "--trials", "1", "--config", str(config))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip() == ("error: target fracture/AP: the source (mura) records no projection for any "
                                   "image; train 'fracture' (every image) instead"), proc.stderr
    assert sorted((run_dir / "tune").rglob("study.json")) == studies  # no study started


def test_all_targets_on_mura_plan_one_fracture_model(tuned, mura):
    """`raypipe tune` without --target (``all``) on a source with neither projections nor ages plans the one
    model it can feed, `fracture` over every image, instead of stopping with "no target has enough data"."""
    from raypipe.config import TrainConfig
    from raypipe.tune.options import TuneOptions
    from raypipe.tune.plan import plan

    run_dir, *_ = tuned  # the same split and image cache: planning reads them, no Ray is started
    with pytest.warns(UserWarning, match="skipping age: the source \\(mura\\) records no age"):
        studies = plan(mura, ["all"], None, TrainConfig(**TINY), {}, run_dir, "mura-all", TuneOptions(trials=1))
    assert [s.target.name for s in studies] == ["fracture"]
