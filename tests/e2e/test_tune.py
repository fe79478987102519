"""`raypipe tune` end to end: real local Ray cluster, real Optuna storage, real MLflow store.

Two targets x five trials of `test_convnext` on 48 px images: the MLflow layout (one parent per study,
one child per trial with params, per-epoch metrics and a final status), pruned trials marked, the
Optuna study persisted and consistent with the child runs, and the best trial better than the worst.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.e2e.conftest import raypipe

TINY = ["--set", "image_size=48", "--set", "test_per_class=3", "--epochs", "4"]
TRIALS = 5


def tune(data, run_dir, *args: str, timeout: int = 600):
    proc = raypipe("tune", "--data", str(data), "--run-dir", str(run_dir), "--experiment", "e2e", *TINY, *args,
                   timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def layout(run_dir):
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.data.tags["raypipe.target"]: r for r in runs if r.data.tags.get("raypipe.kind") == "study"}
    children = {target: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
                for target, parent in parents.items()}
    return client, parents, children


@pytest.fixture(scope="module")
def study(shortcut_data, tmp_path_factory):
    # marker data, unmasked: the fracture model learns within 4 epochs, so promotion has a champion to make
    run_dir = tmp_path_factory.mktemp("tune")
    base = run_dir / "base.yaml"  # the base config (trial 0); a searched key cannot be fixed with --set
    base.write_text("masking: off\nlr: 0.004\n")
    proc = tune(shortcut_data, run_dir, "--target", "fracture", "--target", "age", "--trials", str(TRIALS),
                "--config", str(base))
    return run_dir, proc


def test_prints_best_trial_per_target_and_how_to_open_mlflow(study):
    _, proc = study
    assert "best trial per target" in proc.stdout and "base config" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert "[tune] fracture:" in proc.stdout  # the compact progress lines, not Ray's trial tables
    assert "Trial status" not in proc.stdout and "Traceback" not in proc.stderr


def test_one_parent_per_study_one_child_per_trial(study):
    run_dir, _ = study
    client, parents, children = layout(run_dir)
    assert set(parents) == {"fracture", "age"}
    for target, parent in parents.items():
        monitor = parent.data.tags["raypipe.monitor"]
        assert monitor == ("val_auroc" if target == "fracture" else "val_macro_f1")
        assert parent.info.status == "FINISHED"
        for tag in ("raypipe.data_hash", "raypipe.split_hash", "raypipe.space_sha256", "raypipe.best_run_id"):
            assert len(parent.data.tags[tag]) >= 8, tag
        assert parent.data.params["space"] == f"{'fracture' if target == 'fracture' else 'age'}.yaml"
        assert parent.data.params["image_size"] == "48" and "lr" not in parent.data.params  # lr is searched
        plots = {a.path for a in client.list_artifacts(parent.info.run_id, "study_plots")}
        assert {"study_plots/optimization_history.png", "study_plots/parallel_coordinate.png"} <= plots

        kids = children[target]
        assert len(kids) == TRIALS
        assert len({k.data.tags["raypipe.trial_id"] for k in kids}) == TRIALS
        assert sorted(int(k.data.tags["raypipe.trial_number"]) for k in kids) == list(range(1, TRIALS + 1))
        for kid in kids:
            assert kid.info.run_name == f"{target} #{kid.data.tags['raypipe.trial_number']}"
            assert "lr" in kid.data.params and "loss" in kid.data.params
            assert ("focal_gamma" in kid.data.params) == (kid.data.params["loss"] == "focal")
            steps = [m.step for m in client.get_metric_history(kid.info.run_id, monitor)]
            assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 4
            assert kid.info.status in ("FINISHED", "KILLED")
            pruned = kid.data.tags["raypipe.pruned"] == "true"
            assert pruned == (kid.info.status == "KILLED")
            if pruned:  # ASHA stopped it before the last epoch
                assert len(steps) < 4


def test_asha_pruned_some_trials(study):
    _, _, children = layout(study[0])
    assert sum(k.info.status == "KILLED" for kids in children.values() for k in kids) >= 1


def test_the_parent_run_says_where_the_study_time_went(study):
    """Every study reports its own overhead (issue 17): Ray start, the wait for the first trial, time in
    epochs vs in trials, and the per-trial overhead beyond the epochs."""
    _, parents, children = layout(study[0])
    for target, parent in parents.items():
        m = parent.data.metrics
        assert 0 < m["time_ray_start_s"] < m["time_study_s"]
        assert 0 < m["time_to_first_trial_s"] < m["time_study_s"]
        assert 0 < m["time_in_epochs_s"] < m["time_in_trials_s"]  # a trial is more than its epochs
        assert m["time_overhead_per_trial_s"] == pytest.approx(
            (m["time_in_trials_s"] - m["time_in_epochs_s"]) / len(children[target]), rel=0.01, abs=0.01)


def test_best_trial_beats_the_worst_and_is_recorded_on_the_parent(study):
    client, parents, children = layout(study[0])
    for target, parent in parents.items():
        monitor = parent.data.tags["raypipe.monitor"]
        scores = {k.info.run_id: k.data.metrics[f"best_{monitor}"] for k in children[target]}
        assert parent.data.metrics[f"best_{monitor}"] == pytest.approx(max(scores.values()))
        assert scores[parent.data.tags["raypipe.best_run_id"]] == max(scores.values())
        assert max(scores.values()) > min(scores.values())
        best = client.get_run(parent.data.tags["raypipe.best_run_id"])
        assert parent.data.tags["best.lr"] == best.data.params["lr"]


def test_optuna_study_persisted_and_matches_mlflow(study):
    run_dir, _ = study
    client, parents, children = layout(run_dir)
    storage = JournalStorage(JournalFileBackend(str(run_dir / "tune" / "e2e" / "optuna-journal.log")))
    peaked_then_fell = 0
    for target, parent in parents.items():
        monitor = parent.data.tags["raypipe.monitor"]
        ostudy = optuna.load_study(study_name=parent.data.tags["raypipe.optuna_study"], storage=storage)
        trials = ostudy.get_trials()
        assert len(trials) == TRIALS
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert not any(math.isnan(t.value) for t in trials)
        # Optuna learns what the study ranks by: every trial's value is its best epoch, also for a trial
        # whose metric fell after its peak or that ASHA stopped; the child run's best_<metric> agrees.
        by_lr = {round(float(k.data.params["lr"]), 12): k for k in children[target]}
        for trial in trials:
            kid = by_lr[round(trial.params["lr"], 12)]
            history = [m.value for m in sorted(client.get_metric_history(kid.info.run_id, monitor),
                                               key=lambda m: m.step)]
            assert trial.value == pytest.approx(max(history)) == pytest.approx(kid.data.metrics[f"best_{monitor}"])
            peaked_then_fell += history[-1] < max(history)
        assert ostudy.best_value == pytest.approx(parent.data.metrics[f"best_{monitor}"])
    assert peaked_then_fell >= 1  # the case that matters happened (10 trials of 4 noisy epochs)


def test_trial_0_is_the_base_config_and_the_study_never_ends_below_it(study):
    _, parents, children = layout(study[0])
    for target, parent in parents.items():
        monitor = parent.data.tags["raypipe.monitor"]
        base = [k for k in children[target] if k.data.tags["raypipe.base_config"] == "true"]
        assert [k.data.tags["raypipe.trial_number"] for k in base] == ["1"]
        params = base[0].data.params  # TrainConfig's defaults and --set, as the config gives them
        assert (float(params["lr"]), params["loss"], params["sampler"]) == (0.004, "focal", "none")
        assert parent.data.metrics[f"base_{monitor}"] == pytest.approx(base[0].data.metrics[f"best_{monitor}"])
        assert parent.data.metrics[f"best_{monitor}"] >= parent.data.metrics[f"base_{monitor}"]
        assert {"grace_period", "reduction_factor", "startup_trials", "max_t"} <= set(parent.data.params)


def test_stopped_trials_leave_no_checkpoint_staging_folder(study):
    _, _, children = layout(study[0])
    ids = [k.data.tags["raypipe.trial_id"] for kids in children.values() for k in kids]
    left = [p for p in Path(tempfile.gettempdir()).glob("raypipe-ckpt-*") if any(i in p.name for i in ids)]
    assert not left, left


def test_random_search_without_asha_within_an_epoch_budget(synth_data, tmp_path):
    # 4 trials x 4 epochs allowed, but a budget of 6 trial-epochs: the study stops once 6 are reported,
    # and FIFO stops none early (whatever stops, stops for the budget).
    tune(synth_data, tmp_path, "--target", "fracture/AP", "--trials", "4", "--max-concurrent", "1",
         "--searcher", "random", "--scheduler", "fifo", "--epoch-budget", "6")
    client, parents, children = layout(tmp_path)
    parent = parents["fracture/AP"]
    assert {k: parent.data.params[k] for k in ("searcher", "scheduler", "epoch_budget")} == \
        {"searcher": "random", "scheduler": "fifo", "epoch_budget": "6"}
    epochs = [len(client.get_metric_history(r.info.run_id, "train_loss")) for r in children["fracture/AP"]]
    assert sorted(epochs) == [2, 4], epochs  # one trial at a time: 4 + 2, then the budget is spent
    assert parent.data.metrics["trials_pruned"] == 0


def test_ddp_trials_run_back_to_back_on_two_cpus(synth_data, tmp_path):
    """W=2: each trial drives a TorchTrainer (gloo); its workers' CPUs come back when the trial ends
    (ASHA stops trials by killing them, which in Ray 2.60 leaks the placement group otherwise)."""
    tune(synth_data, tmp_path, "--target", "fracture", "--trials", "2", "--workers-per-trial", "2",
         "--epochs", "2", timeout=400)
    client, parents, children = layout(tmp_path)
    kids = children["fracture"]
    assert len(kids) == 2 and all(k.info.status in ("FINISHED", "KILLED") for k in kids)
    for kid in kids:  # rank 0's per-epoch reports reached MLflow through TuneReportCallback
        assert [m.step for m in client.get_metric_history(kid.info.run_id, "val_auroc")][:1] == [1]
    assert parents["fracture"].data.params["workers_per_trial"] == "2"


def test_bad_space_and_nothing_to_resume_exit_2_with_one_line(synth_data, tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("params:\n  lr: {type: loguniform, low: 0.01, high: 0.001}\n")
    proc = raypipe("tune", "--data", str(synth_data), "--run-dir", str(tmp_path), "--target", "fracture",
                   "--space", str(bad))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert str(bad) in proc.stderr and "params.lr" in proc.stderr and "below high" in proc.stderr
    assert not (tmp_path / "tune").exists() and not (tmp_path / "mlflow.db").exists()

    proc = raypipe("tune", "--data", str(synth_data), "--run-dir", str(tmp_path), "--target", "age", "--resume",
                   *TINY)
    assert proc.returncode == 2 and "nothing to resume for age" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def promoted(study, shortcut_data):
    run_dir, _ = study
    proc = raypipe("promote", "--data", str(shortcut_data), "--run-dir", str(run_dir), "--experiment", "e2e",
                   "--target", "fracture", "--bootstrap", "100", "--folds", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc


def test_promote_decides_out_of_fold_and_registers_a_champion_loadable_from_a_fresh_process(promoted, shortcut_data):
    run_dir, proc = promoted
    assert "e2e.fracture v1: oof_auroc" in proc.stdout and "reported only) -> champion: first version" in proc.stdout
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    version = client.get_model_version_by_alias("e2e.fracture", "champion")
    low, high = json.loads(version.tags["test_auroc_ci95"])
    assert low <= float(version.tags["test_auroc"]) <= high
    assert version.tags["raypipe.decided_on"] == "out-of-fold" and version.tags["raypipe.selection_metric"] == "oof_auroc"
    assert json.loads(version.tags["raypipe.selection_ci95"])[0] > 0.5  # a champion is never at chance
    assert "out-of-fold" in version.tags["threshold_source"]
    assert version.tags["split_hash"] == layout(run_dir)[1]["fracture"].data.tags["raypipe.split_hash"]
    evaluation = json.loads(Path(client.download_artifacts(version.run_id, "test_evaluation.json")).read_text())
    assert evaluation["selection"]["decided_on"] == "out-of-fold" and 0 < evaluation["prevalence"] < 1
    # the marker carries this label and masking was off: the audit says the model reads it
    assert version.tags["raypipe.shortcut_flag"] == "true"

    # A second promotion of the same study retrains the same recipe: it cannot beat the champion by a margin.
    again = raypipe("promote", "--data", str(shortcut_data), "--run-dir", str(run_dir), "--experiment", "e2e",
                    "--target", "fracture", "--bootstrap", "100", "--folds", "2", "--margin", "0.01")
    assert again.returncode == 0 and "-> challenger" in again.stdout, again.stdout + again.stderr

    images = sorted(str(p) for p in shortcut_data.glob("images_part*/*.png"))[:3]
    script = ("import json, sys, mlflow, pandas as pd\n"  # bytes, as a served model gets them (paths: no)
              "model = mlflow.pyfunc.load_model('models:/e2e.fracture@champion')\n"
              "out = model.predict(pd.DataFrame({'image_bytes': [open(p, 'rb').read() for p in sys.argv[1:]]}))\n"
              "print(json.dumps(out.to_dict(orient='records')))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir / 'mlflow.db'}"}
    loaded = subprocess.run([sys.executable, "-c", script, *images], capture_output=True, text=True, env=env,
                            cwd=run_dir, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    rows = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert len(rows) == 3 and all(0 <= r["probability"] <= 1 and r["label"] in ("normal", "fracture") for r in rows)
    assert {r["threshold"] for r in rows} == {float(version.tags["threshold"])}


def test_predict_routes_explains_and_refuses_bad_input(promoted, shortcut_data, tmp_path):
    run_dir, _ = promoted
    ap, lat = sorted(shortcut_data.glob("images_part*/*_WRI-?1_*.png"))[0], sorted(shortcut_data.glob("images_part*/*_WRI-?2_*.png"))[0]
    proc = raypipe("predict", str(ap), str(lat), "--age", "9", "--run-dir", str(run_dir), "--experiment", "e2e",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["projection"] for r in rows] == ["AP", "Lat"]  # from the GRAZPEDWRI-DX file names
    for row in rows:
        assert row["model"] == "e2e.fracture" and row["version"] == "1" and row["age_group"] == 1
        assert row["decision"] == ("fracture" if row["probability"] >= row["threshold"] else "normal")
        overlay = Path(row["gradcam"])
        assert overlay.is_file() and overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    broken = tmp_path / "broken_AP.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = raypipe("predict", str(broken), "--age", "9", "--run-dir", str(run_dir), "--experiment", "e2e")
    assert bad.returncode == 2 and str(broken) in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.stderr
    none = raypipe("predict", str(ap), "--age", "9", "--run-dir", str(run_dir), "--experiment", "nonesuch")
    assert none.returncode == 2 and "no champion models" in none.stderr, none.stderr
