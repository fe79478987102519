"""`raypipe pipeline run` end to end on tiny data: the age model and one fracture model per projection (the
demo's targets) tuned and promoted (champion only above chance, out of fold), a self-contained report, a
second run that skips every stage, and routed predictions on held-out images from a fresh process.

The data is the shortcut set, unmasked: a text marker is burned in on fracture images only, which tiny
models learn in a few epochs, so the fracture models clear the chance floor; the age model (a real but
slow signal) may not, and must then stay challenger. (Per age-group targets of 120 patients hold 20-30
training images: too few for any model to clear chance in a CI budget.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from raypipe.config import TrainConfig
from raypipe.data.groups import get_scheme
from tests.e2e.conftest import raypipe


@pytest.fixture(scope="module")
def pipeline(shortcut_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(shortcut_data),
        "train": {"image_size": 40, "epochs": 4, "lr": 0.004, "batch_size": 16, "test_per_class": 3,
                  "masking": "off"},
        "tune": {"targets": ["age", "fracture/AP", "fracture/Lat"], "trials": 1,
                 "per_target": {"age": {"train": {"image_size": 32}}}},
        "promote": {"bootstrap": 100, "folds": 2}}))
    run_dir = tmp / "runs"
    first = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(run_dir), timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return config, run_dir, first


def test_every_target_gets_a_champion_and_the_report_renders(pipeline):
    _, run_dir, first = pipeline
    record = json.loads((run_dir / "pipeline" / "tiny.json").read_text())
    tuned = record["tune"]["targets"]
    assert sorted(tuned) == ["age", "fracture/AP", "fracture/Lat"]
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    champions = []
    for target in tuned:
        name = f"tiny.{target.replace('/', '-')}"
        assert f"promote: {name} v1" in first.stdout
        version = client.get_model_version(name, "1")
        assert version.tags["raypipe.decided_on"] == "out-of-fold" and version.tags["split_hash"]
        low = json.loads(version.tags["raypipe.selection_ci95"])[0]
        if "champion" in version.aliases:  # a champion is never at chance; a version at chance never champion
            champions.append(target)
            assert low > (0.5 if target.startswith("fracture") else 0.0)
        if target != "age":  # every binary promotion audits its version for text-marker shortcuts
            assert version.tags["raypipe.shortcut_flag"] in ("true", "false")
            run = client.get_run(version.run_id)
            audit = json.loads(Path(client.download_artifacts(run.info.run_id, "shortcut_audit.json")).read_text())
            assert audit["flag"] == (version.tags["raypipe.shortcut_flag"] == "true")
            assert {"box_only_auroc", "auroc_masked", "auroc_shuffled", "shift"} <= set(audit)
            assert set(audit["subgroups"]) == {"metal", "cast", "initial_exam"}
        else:
            assert "includes chance" in version.tags["promotion"] or low <= 0.5, version.tags["promotion"]
    assert {"fracture/AP", "fracture/Lat"} <= set(champions), first.stdout[-3000:]

    studies = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                 "tags.`raypipe.kind` = 'study'")
    sizes = {r.data.tags["raypipe.target"]: r.data.params["image_size"] for r in studies}
    assert sizes.pop("age") == "32" and set(sizes.values()) == {"40"}  # tune.per_target

    page = (run_dir / "reports" / "tiny.html").read_text()
    assert "Test set by age (1-year bins)" in page and "Test set by sex" in page and "Tuning" in page
    assert "Decided on out-of-fold scores" in page and "did not decide" in page
    assert "Grad-CAM gallery" in page and "false positive" in page and "true negative" in page
    assert page.count("<h3>Shortcut audit</h3>") == len(tuned) - 1  # per binary champion
    assert page.count("data:image/png;base64,") >= 4 * (len(tuned) - 1)
    ages = [int(a) for a in re.findall(r"<tr><td>(\d+)</td>", page.split("<h2>fracture/")[1])]
    assert ages == sorted(ages) and ages  # one-year bins in age order
    assert not re.search(r"src=\"(?!data:)", page)  # self-contained: no external images


def test_second_run_skips_every_stage(pipeline):
    config, run_dir, _ = pipeline
    second = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("check", "split", "cache", "tune", "promote", "report"):
        assert f"{stage}: unchanged, skipped" in second.stdout, second.stdout
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert len(client.search_model_versions("name = 'tiny.age'")) == 1


def test_predict_routes_held_out_images_to_the_most_specific_champion(pipeline, tmp_path):
    _, run_dir, _ = pipeline
    data_dir = next((run_dir / "data").iterdir())
    manifest = pd.read_csv(data_dir / "manifest.csv")
    held_out = manifest[pd.read_csv(next(data_dir.glob("splits-*.csv")))["split"].to_numpy() == "test"]
    held_out = held_out.assign(group=get_scheme(TrainConfig().age_scheme).group_of(held_out["age"].to_numpy()))
    pairs = zip(held_out["projection"], held_out["group"], strict=True)
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    routable = held_out[[g >= 0 for _, g in pairs]]
    picked = [routable[routable["projection"] == p].iloc[0] for p in ("AP", "Lat")]
    batch = tmp_path / "batch.csv"
    pd.DataFrame({"image": [r["path"] for r in picked], "age": [r["age"] for r in picked]}).to_csv(batch, index=False)

    proc = raypipe("predict", "--csv", str(batch), "--run-dir", str(run_dir), "--experiment", "tiny",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["projection"] for r in rows] == ["AP", "Lat"]  # from the GRAZPEDWRI-DX file names
    for row, image in zip(rows, picked, strict=True):
        assert row["age_source"] == "given" and row["age_group"] == image["group"]
        # no per-group champion: the most specific one that exists, the projection's
        assert row["model"] == f"tiny.fracture-{row['projection']}" and row["version"] == "1"
        assert Path(row["gradcam"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Without --age the age champion, if there is one, picks the group; the projection's model answers.
    alone = raypipe("predict", picked[0]["path"], "--run-dir", str(run_dir), "--experiment", "tiny",
                    "--out", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    row = json.loads((tmp_path / "alone" / "predictions.jsonl").read_text())
    assert row["model"] == "tiny.fracture-AP"
    age_is_champion = "champion" in client.get_model_version("tiny.age", "1").aliases
    assert row["age_source"] == ("age champion v1" if age_is_champion else "unknown (no --age, no age champion)")
