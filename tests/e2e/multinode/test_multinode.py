"""`raypipe tune` on a two-node Ray cluster, as a user runs it: `RAY_ADDRESS` + the cluster's token, a
shared `--storage` directory, `MLFLOW_TRACKING_URI` pointing at a tracking server.

Trials land on both nodes (their MLflow child runs say where: `raypipe.node`), nothing is written to the
driver's run dir that a trial would need, and losing the worker node mid-study costs a retry on the
head, not a trial: one child run per trial, none RUNNING, the Optuna study complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.e2e.conftest import REPO, raypipe, study_runs
from tests.e2e.multinode.conftest import free_port

TINY = ["--set", "image_size=48", "--set", "test_per_class=3", "--target", "fracture", "--max-concurrent", "2"]


def tune_args(data: Path, tmp_path: Path, experiment: str, trials: int, epochs: int) -> list[str]:
    return ["tune", "--data", str(data), "--run-dir", str(tmp_path / "runs"), "--storage", str(tmp_path / "shared"),
            "--experiment", experiment, "--trials", str(trials), "--epochs", str(epochs), *TINY]


def optuna_states(tmp_path: Path, experiment: str, parent) -> list:
    journal = tmp_path / "shared" / "tune" / experiment / "optuna-journal.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=parent.data.tags["raypipe.optuna_study"], storage=storage)
    return [t.state for t in study.get_trials()]


def test_trials_land_on_both_nodes_with_shared_storage_and_a_tracking_server(two_nodes, mlflow_server, shortcut_data,
                                                                             tmp_path):
    # the shortcut set (a marker on fractures only) unmasked: above chance in 3 epochs, so promotion makes a champion to predict with
    trials = 4
    proc = raypipe(*tune_args(shortcut_data, tmp_path, "mn", trials, 3), "--set", "masking=off",
                   env=two_nodes.env | {"MLFLOW_TRACKING_URI": mlflow_server}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"open the MLflow UI: {mlflow_server}" in proc.stdout

    client, parents, kids = study_runs(mlflow_server, "mn")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == trials and len({k.data.tags["raypipe.trial_id"] for k in kids}) == trials
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids)
    assert {k.data.tags["raypipe.node"] for k in kids} == {two_nodes.head, two_nodes.worker}
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "study_plots")}
    assert "study_plots/optimization_history.png" in plots  # artifacts went through the server

    # Tune experiment, checkpoints, study record, Optuna journal and image cache: on the shared storage;
    # the driver's run dir keeps only the manifest and split, and no MLflow store of its own.
    shared, run_dir = tmp_path / "shared", tmp_path / "runs"
    study_dir = shared / "tune" / "mn" / "fracture-round-1"
    assert (study_dir / "study.json").is_file()
    assert list(study_dir.glob("*/checkpoint_*/model.safetensors"))
    assert list((shared / "cache").glob("*/images.u8"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["data"]
    assert optuna_states(tmp_path, "mn", parents[0]).count(optuna.trial.TrialState.COMPLETE) == trials

    # The commands after tuning use the same server: register a champion, report on it, predict with it.
    server = {"MLFLOW_TRACKING_URI": mlflow_server}
    common = ["--run-dir", str(run_dir), "--experiment", "mn"]
    promoted = raypipe("promote", "--data", str(shortcut_data), *common, "--target", "fracture", "--bootstrap", "50",
                       "--folds", "2", env=server)
    assert promoted.returncode == 0 and "mn.fracture v1" in promoted.stdout, promoted.stdout[-2000:] + promoted.stderr[-2000:]
    assert "-> champion" in promoted.stdout, promoted.stdout[-2000:]
    report = raypipe("report", "--experiment", "mn", "--out", str(tmp_path / "report.html"), "--run-dir",
                     str(run_dir), env=server)
    assert report.returncode == 0 and (tmp_path / "report.html").stat().st_size > 0, report.stderr[-2000:]
    image = sorted(shortcut_data.glob("images_part*/*_WRI-?1_*.png"))[0]
    predicted = raypipe("predict", str(image), "--age", "9", *common, "--out", str(tmp_path / "pred"), env=server)
    assert predicted.returncode == 0 and '"model": "mn.fracture"' in predicted.stdout, predicted.stderr[-2000:]
    assert not (run_dir / "mlflow.db").exists()


def test_losing_the_worker_node_mid_study_retries_its_trial_on_the_head(two_nodes, mlflow_server, synth_data,
                                                                        tmp_path):
    # ASHA's first decision is at epoch 9 // 2 = 4 (its grace period): the trial seen at epoch 2 is still
    # running when its node goes, whatever it scores.
    trials, epochs = 3, 9
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env |= two_nodes.env | {"MLFLOW_TRACKING_URI": mlflow_server, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "raypipe", *tune_args(synth_data, tmp_path, "loss", trials,
                                                                               epochs)],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = MlflowClient(mlflow_server)
        lost = None
        deadline = time.monotonic() + 240
        while lost is None and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            exp = client.get_experiment_by_name("loss")
            if exp is None:
                continue
            running = client.search_runs([exp.experiment_id], f"tags.`raypipe.node` = '{two_nodes.worker}' "
                                         "and attributes.status = 'RUNNING'", max_results=1)
            # Wait for its second epoch: by then the driver has registered the first epoch's checkpoint for
            # certain (a node lost right at the trial's first report may leave it no checkpoint to resume).
            if running and len(client.get_metric_history(running[0].info.run_id, "val_auroc")) >= 2:
                lost = running[0]
                two_nodes.remove_worker()
        assert lost is not None, "no trial ran on the worker node: " + log.read_text()[-3000:]
        driver.wait(300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, log.read_text()[-4000:]

    _, parents, kids = study_runs(mlflow_server, "loss")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == trials and len({k.data.tags["raypipe.trial_id"] for k in kids}) == trials
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids), [k.info.status for k in kids]
    retried = next(k for k in kids if k.info.run_id == lost.info.run_id)
    # It trained on the worker, then on the head, from its last checkpoint. An epoch whose report reached
    # the driver but whose checkpoint died with the node is trained (and reported) again: a repeat, never
    # a gap or a restart from scratch.
    assert retried.data.tags["raypipe.nodes"] == f"{two_nodes.worker},{two_nodes.head}"
    steps = [m.step for m in client.get_metric_history(retried.info.run_id, "val_auroc")]
    assert steps == sorted(steps) and sorted(set(steps)) == list(range(1, max(steps) + 1)) and len(set(steps)) >= 2
    resumed = client.get_metric_history(retried.info.run_id, "resumed_from_epoch")
    assert len(resumed) == 1 and resumed[0].value >= 1 and resumed[0].step == resumed[0].value + 1
    states = optuna_states(tmp_path, "loss", parents[0])
    assert states.count(optuna.trial.TrialState.COMPLETE) == trials and len(states) == trials


def test_unknown_storage_scheme_and_a_silent_tracking_server_exit_2_with_one_line(synth_data, tmp_path):
    args = tune_args(synth_data, tmp_path, "bad", 1, 1)
    bad = raypipe(*[("ftp://host/x" if a == str(tmp_path / "shared") else a) for a in args])
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "--storage" in bad.stderr and "unknown scheme 'ftp://'" in bad.stderr

    nobody = f"http://127.0.0.1:{free_port()}"
    silent = raypipe(*args, env={"MLFLOW_TRACKING_URI": nobody}, timeout=120)
    assert silent.returncode == 2 and silent.stderr.strip().count("\n") == 0, silent.stderr
    assert f"MLFLOW_TRACKING_URI: no MLflow server answers at {nobody}" in silent.stderr
    assert not (tmp_path / "shared").exists() and not (tmp_path / "runs").exists()  # nothing half-done
