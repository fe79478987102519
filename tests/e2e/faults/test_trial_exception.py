"""A trial whose training loop raises fails alone: Tune marks it ERROR, its MLflow child run is FAILED
with the error line, the other trials run on and finish, and MLflow, Tune and Optuna agree.

The exception comes from the models' test hook (`RAYPIPE_FAULT=raise:head_hidden=96`, see raypipe/faults.py, read by
`build_model` inside the trial's loop, in the Ray worker): every trial that samples `head_hidden: 96`
raises, as a bug in a model configuration would. Trial 1 is the base config (head_hidden 256); with
`--seed 3`, TPE's first random trial samples 96 and the next 256, so a study of three sequential trials
has both kinds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray.tune import ExperimentAnalysis

from tests.e2e.conftest import raypipe, study_runs

TRIALS = 3
SPACE = """\
params:
  head_hidden: {type: categorical, choices: [96, 256]}
  lr:          {type: loguniform, low: 1.0e-3, high: 1.0e-2}
"""


def test_exception_in_one_trial_fails_that_trial_only(synth_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    proc = raypipe("tune", "--data", str(synth_data), "--run-dir", str(tmp_path), "--experiment", "faults",
                   "--target", "fracture", "--trials", str(TRIALS), "--max-concurrent", "1", "--space", str(space), "--seed", "3",
                   "--epochs", "2", "--set", "image_size=48", "--set", "test_per_class=3",
                   env={"RAYPIPE_FAULT": "raise:head_hidden=96"}, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # the study itself succeeded

    client, parents, kids = study_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "faults")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == TRIALS and len({k.data.tags["raypipe.trial_id"] for k in kids}) == TRIALS
    failed = [k for k in kids if k.data.params["head_hidden"] == "96"]
    healthy = [k for k in kids if k.data.params["head_hidden"] != "96"]
    assert failed and healthy, f"the sampler gave {[k.data.params['head_hidden'] for k in kids]}: need both"
    for kid in failed:
        assert kid.info.status == "FAILED", kid.info.run_name
        assert "injected fault: head_hidden=96" in kid.data.tags["raypipe.error"], kid.data.tags["raypipe.error"]
        assert "\n" not in kid.data.tags["raypipe.error"]
    for kid in healthy:  # ran on, all their epochs reported (or stopped by ASHA, never failed)
        assert kid.info.status in ("FINISHED", "KILLED"), kid.info.run_name
        assert "raypipe.error" not in kid.data.tags
        assert [m.step for m in client.get_metric_history(kid.info.run_id, "val_auroc")][:1] == [1]
    assert not any(k.info.status == "RUNNING" for k in kids)
    counts = parents[0].data.metrics
    assert counts["trials_failed"] == len(failed)
    assert counts["trials_finished"] + counts["trials_pruned"] == len(healthy)
    best = parents[0].data.tags["raypipe.best_run_id"]
    assert best in {k.info.run_id for k in healthy}

    status = {t.trial_id: t.status for t in ExperimentAnalysis(str(tmp_path / "tune" / "faults" /
                                                                   "fracture-round-1")).trials}
    assert {status[k.data.tags["raypipe.trial_id"]] for k in failed} == {"ERROR"}
    assert {status[k.data.tags["raypipe.trial_id"]] for k in healthy} == {"TERMINATED"}
    ids = [k.data.tags["raypipe.trial_id"] for k in kids]  # the failed trial's checkpoint staging too
    assert not [p for p in Path(tempfile.gettempdir()).glob("raypipe-ckpt-*") if any(i in p.name for i in ids)]

    storage = JournalStorage(JournalFileBackend(parents[0].data.tags["raypipe.optuna_storage"]))
    ostudy = optuna.load_study(study_name=parents[0].data.tags["raypipe.optuna_study"], storage=storage)
    states = {t.number: (t.state, t.params["head_hidden"]) for t in ostudy.get_trials()}
    assert len(states) == TRIALS
    for state, hidden in states.values():
        expected = optuna.trial.TrialState.FAIL if hidden == 96 else optuna.trial.TrialState.COMPLETE
        assert state == expected, states


def test_a_study_whose_every_trial_failed_exits_1(synth_data, tmp_path):
    """`ray job submit` reads the exit code: a study with no finished trial must not report success."""
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  head_hidden: {type: categorical, choices: [96]}\n")
    proc = raypipe("tune", "--data", str(synth_data), "--run-dir", str(tmp_path), "--experiment", "allfail",
                   "--target", "fracture", "--trials", "1", "--space", str(space), "--epochs", "1",
                   "--set", "image_size=32", "--set", "test_per_class=3",
                   env={"RAYPIPE_FAULT": "raise:head_hidden=96"}, timeout=400)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no trial of fracture finished" in proc.stderr
