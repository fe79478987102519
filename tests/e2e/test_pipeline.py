"""`raypipe pipeline run` end to end on tiny data: the age model and every projection x age-group fracture
model tuned and promoted to champion, a self-contained report, a second run that skips every stage, and
routed predictions on held-out images from a fresh process."""

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
def pipeline(synth_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(synth_data), "train": {"image_size": 32, "epochs": 2, "test_per_class": 3},
        "tune": {"targets": ["all"], "trials": 1, "per_target": {"age": {"train": {"image_size": 40}}}},
        "promote": {"bootstrap": 100}}))
    run_dir = tmp / "runs"
    first = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(run_dir), timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return config, run_dir, first


def test_every_target_gets_a_champion_and_the_report_renders(pipeline):
    _, run_dir, first = pipeline
    record = json.loads((run_dir / "pipeline" / "tiny.json").read_text())
    tuned = record["tune"]["targets"]
    assert "age" in tuned and {t.split("/")[1] for t in tuned if t.startswith("fracture/")} == {"AP", "Lat"}
    per_group = [t for t in tuned if re.fullmatch(r"fracture/(AP|Lat)/\d", t)]
    assert len(per_group) >= 4
    for group in range(4):  # a group too small to tune on this tiny set is skipped, and says so
        for projection in ("AP", "Lat"):
            name = f"fracture/{projection}/{group}"
            assert name in tuned or f"skipping {name}:" in first.stderr, first.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    for target in tuned:
        champion = client.get_model_version_by_alias(f"tiny.{target.replace('/', '-')}", "champion")
        assert champion.tags["split_hash"] and champion.tags["metric"] in ("auroc", "macro_f1")
        assert f"promote: tiny.{target.replace('/', '-')} v1" in first.stdout
        if target != "age":  # every binary promotion audits its champion for text-marker shortcuts
            assert champion.tags["raypipe.shortcut_flag"] in ("true", "false")
            run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                     f"tags.`raypipe.kind` = 'promote' and tags.`raypipe.target` = '{target}'")[0]
            audit = json.loads(Path(client.download_artifacts(run.info.run_id, "shortcut_audit.json")).read_text())
            assert audit["flag"] == (champion.tags["raypipe.shortcut_flag"] == "true")
            assert {"box_only_auroc", "auroc_masked", "auroc_shuffled", "shift"} <= set(audit)
            assert set(audit["subgroups"]) == {"metal", "cast", "initial_exam"}

    studies = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                 "tags.`raypipe.kind` = 'study'")
    sizes = {r.data.tags["raypipe.target"]: r.data.params["image_size"] for r in studies}
    assert sizes.pop("age") == "40" and set(sizes.values()) == {"32"}  # tune.per_target

    page = (run_dir / "reports" / "tiny.html").read_text()
    assert "Test set by age (1-year bins)" in page and "Test set by sex" in page and "Tuning" in page
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


def test_predict_routes_held_out_images_to_their_group_champion(pipeline, synth_data, tmp_path):
    _, run_dir, _ = pipeline
    tuned = json.loads((run_dir / "pipeline" / "tiny.json").read_text())["tune"]["targets"]
    data_dir = next((run_dir / "data").iterdir())
    manifest = pd.read_csv(data_dir / "manifest.csv")
    held_out = manifest[pd.read_csv(next(data_dir.glob("splits-*.csv")))["split"].to_numpy() == "test"]
    held_out = held_out.assign(group=get_scheme(TrainConfig().age_scheme).group_of(held_out["age"].to_numpy()))
    pairs = zip(held_out["projection"], held_out["group"], strict=True)
    routable = held_out[[f"fracture/{p}/{g}" in tuned for p, g in pairs]]
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
        assert row["model"] == f"tiny.fracture-{row['projection']}-{row['age_group']}" and row["version"] == "1"
        assert Path(row["gradcam"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Without --age the age champion picks the group; a group with no champion is one clear line, exit 2.
    alone = raypipe("predict", picked[0]["path"], "--run-dir", str(run_dir), "--experiment", "tiny",
                    "--out", str(tmp_path / "alone"))
    if alone.returncode == 0:
        row = json.loads((tmp_path / "alone" / "predictions.jsonl").read_text())
        assert row["age_source"] == "age champion v1" and f"fracture/AP/{row['age_group']}" in tuned
    else:
        assert alone.returncode == 2 and "no fracture champion for fracture/AP/" in alone.stderr
        assert alone.stderr.strip().count("\n") == 0, alone.stderr
