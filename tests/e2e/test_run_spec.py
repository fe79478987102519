"""A pipeline config's `resources:` and the default experiment, end to end on tiny data.

- `pipeline run` with `resources: {workers_per_trial: 2}`: the trial and the promotion's cross-fit and
  retrain run as Ray Train DDP with 2 workers (gloo on CPU), which the loop itself reports (`world_size`);
  then `predict` and `report` with `--config` alone find that pipeline's experiment and champion.
- `tune --config plain.yaml` (a plain train config), then `promote`, `predict`, `report` with `--config
  plain.yaml` alone meet in the experiment `plain`.
- GPU settings on a cluster without a GPU: exit 2 with one line, before any trial starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import raypipe

TRAIN = {"image_size": 40, "epochs": 3, "lr": 0.004, "batch_size": 16, "test_per_class": 3, "masking": "off"}


def _client(run_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")


def _runs(run_dir: Path, experiment: str, kind: str) -> list:
    client = _client(run_dir)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], f"tags.`raypipe.kind` = '{kind}'")


def _ap_image(run_dir: Path) -> pd.Series:
    manifest = pd.read_csv(next((run_dir / "data").iterdir()) / "manifest.csv")
    return manifest[manifest["projection"] == "AP"].iloc[0]


def _predict_and_report(run_dir: Path, config: Path, tmp: Path, experiment: str) -> None:
    image = _ap_image(run_dir)
    proc = raypipe("predict", str(image["path"]), "--age", str(image["age"]), "--config", str(config),
                   "--run-dir", str(run_dir), "--out", str(tmp / "pred"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = json.loads((tmp / "pred" / "predictions.jsonl").read_text())
    assert row["model"] == f"{experiment}.fracture-AP"
    proc = raypipe("report", "--config", str(config), "--run-dir", str(run_dir), "--out", str(tmp / "r.html"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fracture/AP" in (tmp / "r.html").read_text()


@pytest.fixture(scope="module")
def ddp_pipeline(shortcut_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    config = tmp / "ddp.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(shortcut_data), "train": TRAIN, "tune": {"targets": ["fracture/AP"], "trials": 1},
        "promote": {"bootstrap": 50, "folds": 2}, "resources": {"workers_per_trial": 2}}))
    run_dir = tmp / "runs"
    proc = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(run_dir), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, config, run_dir, proc


def test_pipeline_resources_make_trials_and_retrain_ddp(ddp_pipeline):
    _, _, run_dir, proc = ddp_pipeline
    client = _client(run_dir)
    (study,) = _runs(run_dir, "ddp", "study")
    assert study.data.params["workers_per_trial"] == "2"
    (trial,) = _runs(run_dir, "ddp", "trial")
    assert {m.value for m in client.get_metric_history(trial.info.run_id, "world_size")} == {2}
    (promotion,) = _runs(run_dir, "ddp", "promote")
    assert promotion.data.params["workers_per_trial"] == "2"
    assert promotion.data.metrics["retrain_world_size"] == 2  # the loop's own count of DDP ranks
    assert "promote: ddp.fracture-AP v1" in proc.stdout
    # one spec, logged where a result can be re-run from: the study's parent run and the promote run
    for run in (study, promotion):
        assert "run_spec.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    spec = yaml.safe_load(Path(client.download_artifacts(promotion.info.run_id, "run_spec.yaml")).read_text())
    assert spec["resources"]["workers_per_trial"] == 2 and spec["train"]["workers"] == 2
    assert spec["promote"]["folds"] == 2 and spec["experiment"] == "ddp"
    assert "/#/experiments/" in proc.stdout and "/runs" in proc.stdout  # the runs view, not the GenAI overview


def test_predict_and_report_find_the_pipeline_by_its_config(ddp_pipeline, tmp_path):
    _, config, run_dir, _ = ddp_pipeline
    _predict_and_report(run_dir, config, tmp_path, "ddp")


def test_tune_promote_predict_report_meet_in_the_config_experiment(shortcut_data, tmp_path):
    config = tmp_path / "plain.yaml"  # a plain train config: its name is the experiment's
    config.write_text(yaml.safe_dump(TRAIN))
    run_dir = tmp_path / "runs"
    common = ["--data", str(shortcut_data), "--config", str(config), "--run-dir", str(run_dir)]
    proc = raypipe("tune", *common, "--target", "fracture/AP", "--trials", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = raypipe("promote", *common, "--target", "fracture/AP", "--folds", "2", "--bootstrap", "50")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plain.fracture-AP v1" in proc.stdout
    (promotion,) = _runs(run_dir, "plain", "promote")
    assert promotion.data.params["workers_per_trial"] == "1"  # the study's own resources
    _predict_and_report(run_dir, config, tmp_path, "plain")
    assert _client(run_dir).get_experiment_by_name("raypipe") is None


def test_gpus_on_a_cluster_without_one_exit_2_before_any_trial(synth_data, tmp_path):
    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump({"data": str(synth_data), "train": TRAIN | {"epochs": 1},
                                      "tune": {"targets": ["fracture/AP"], "trials": 1},
                                      "resources": {"gpus_per_trial": 1}}))
    proc = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # (Ray's own warnings come before it)
    assert last.startswith("error: resources.gpus_per_trial") and "has 0" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs").glob("tune/gpu/*/study.json"))  # no study started
