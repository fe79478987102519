"""A study survives its driver: SIGKILL mid-study, then `--resume` finishes it with one MLflow child
run per trial, none left RUNNING, and an Optuna study with nothing left RUNNING either."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.e2e.conftest import REPO, raypipe

TRIALS = 6


def test_sigkill_driver_then_resume(synth_data, tmp_path):
    args = ["tune", "--data", str(synth_data), "--run-dir", str(tmp_path), "--experiment", "e2e",
            "--set", "image_size=48", "--set", "test_per_class=3", "--epochs", "4", "--target", "fracture",
            "--trials", str(TRIALS), "--max-concurrent", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")} | {"PYTHONUNBUFFERED": "1"}
    # Its own session: after the driver dies, the Ray processes it started are swept up with the group.
    driver = subprocess.Popen([sys.executable, "-m", "raypipe", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env, start_new_session=True)
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once two trials are done and more are to come
        line = driver.stdout.readline()
        seen.append(line)
        match = re.match(r"\[tune\] fracture: (\d+)/", line)
        if not line or (match and int(match.group(1)) >= 2):
            break
    assert match and 2 <= int(match.group(1)) < TRIALS, "".join(seen)[-3000:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(1)
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    before = client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'trial'")
    assert 2 <= len(before) < TRIALS + 2 and any(r.info.status == "RUNNING" for r in before + [
        client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'study'")[0]])

    resumed = raypipe(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming 1 target(s)" in resumed.stdout

    parents = client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'trial'")
    assert len(kids) == TRIALS
    assert all(k.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for k in kids)
    assert len({k.data.tags["raypipe.trial_id"] for k in kids}) == TRIALS
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids)
    assert {k.info.run_id for k in before if k.info.status != "RUNNING"} <= {k.info.run_id for k in kids}
    # no checkpoint staging left behind, also by a trial the killed driver started and the restored study
    # never knew (its run was deleted as an orphan)
    ids = {k.data.tags["raypipe.trial_id"] for k in kids + before}
    assert not [p for p in Path(tempfile.gettempdir()).glob("raypipe-ckpt-*") if any(i in p.name for i in ids)]
    counts = parents[0].data.metrics
    assert counts["trials_finished"] + counts["trials_pruned"] == TRIALS

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "tune" / "e2e" / "optuna-journal.log")))
    ostudy = optuna.load_study(study_name=parents[0].data.tags["raypipe.optuna_study"], storage=storage)
    states = [t.state for t in ostudy.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS
