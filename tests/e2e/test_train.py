"""`raypipe train` end to end: real data layout, real Ray Train (DDP on gloo), real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import raypipe

FAST = ["--set", "image_size=48", "--set", "batch_size=16", "--set", "test_per_class=3", "--set", "lr=0.002",
        "--set", "patience=10", "--set", "augment=0.2", "--set", "loader_workers=0"]


def run_train(data: Path, run_dir: Path, workers: int, epochs: int = 4) -> MlflowClient:
    proc = raypipe("train", "--data", str(data), "--target", "fracture", "--workers", str(workers), "--epochs",
                   str(epochs), "--run-dir", str(run_dir), "--experiment", "e2e", *FAST)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MLflow run" in proc.stdout and "mlflow ui" in proc.stdout
    return MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")


def only_run(client: MlflowClient):
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def one_worker(synth_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run1")
    client = run_train(synth_data, run_dir, workers=1)
    return client, only_run(client), run_dir


def test_mlflow_run_has_params_metrics_tags_artifacts(one_worker):
    client, run, run_dir = one_worker
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "test_convnext" and run.data.params["image_size"] == "48"
    assert run.data.params["target"] == "fracture"
    for tag in ("raypipe.data_hash", "raypipe.split_hash", "raypipe.git_sha"):
        assert len(run.data.tags[tag]) >= 7
    history = client.get_metric_history(run.info.run_id, "val_auroc")
    assert [m.step for m in history] == [1, 2, 3, 4]
    for name in ("train_loss", "val_loss", "val_f1", "val_auprc", "val_sensitivity", "val_specificity"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 4, name
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    files |= {f.path for d in ("plots", "checkpoint-fracture") for f in client.list_artifacts(run.info.run_id, d)}
    assert {"config.yaml", "run_spec.yaml", "confusion_matrix.json", "plots/confusion_matrix.png", "plots/roc.png",
            "checkpoint-fracture/model.safetensors", "checkpoint-fracture/spec.json"} <= files
    assert (run_dir / "mlartifacts").is_dir()  # embedded store keeps artifacts under the run dir


def test_training_reduces_loss(one_worker):
    client, run, _ = one_worker
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert losses[-1] < losses[0]


def test_no_patient_identifiers_reach_mlflow(one_worker, synth_data):
    client, run, _ = one_worker
    import pandas as pd

    csv = pd.read_csv(synth_data / "dataset.csv", encoding="utf-8-sig", dtype=str)
    secrets = set(csv["filestem"]) | set(csv["timehash"]) | {f"patient {p}" for p in csv["patient_id"]}
    text = " ".join([*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.metrics])
    assert not any(s in text for s in secrets)


def test_ddp_two_workers_matches_one_worker(one_worker, synth_data, tmp_path):
    _, run1, _ = one_worker
    client = run_train(synth_data, tmp_path, workers=2)
    run2 = only_run(client)
    assert run2.info.status == "FINISHED"
    assert len(client.get_metric_history(run2.info.run_id, "val_auroc")) == 4
    assert (tmp_path / "ray").is_dir()  # Ray Train storage: the job really ran as a TorchTrainer
    # Same config, global batch split over 2 ranks: same quality within the noise of a tiny run.
    assert abs(run2.data.metrics["best_val_auroc"] - run1.data.metrics["best_val_auroc"]) < 0.2
    losses = [m.value for m in client.get_metric_history(run2.info.run_id, "train_loss")]
    assert losses[-1] < losses[0]
