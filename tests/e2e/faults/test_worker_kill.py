"""A DDP trial survives one of its Train workers: rank 1 is SIGKILLed in the middle of epoch 2 (the loop's
test hook, `RAYPIPE_FAULT=train:rank1@2` + `RAYPIPE_FAULT_ONCE`, see raypipe/faults.py), Ray Train restarts the worker group,
the loop resumes from the epoch-1 checkpoint, and the study ends as if nothing happened: one MLflow child
run per trial, none RUNNING, no epoch reported twice, Optuna and Tune agreeing on the completed trials,
and every checkpoint loadable without unpickling.
"""

from __future__ import annotations

import json
import os

import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray.tune import ExperimentAnalysis
from safetensors.torch import load_file

from tests.e2e.conftest import raypipe, study_runs

TRIALS = 1  # one DDP trial is enough to kill a rank in; each more costs ~25 s of CI


def test_sigkilled_ddp_worker_restarts_from_its_checkpoint(synth_data, tmp_path):
    marker = tmp_path / "rank-1-killed"
    proc = raypipe("tune", "--data", str(synth_data), "--run-dir", str(tmp_path), "--experiment", "faults",
                   "--target", "fracture", "--trials", str(TRIALS), "--workers-per-trial", "2", "--epochs", "2",
                   "--set", "image_size=48", "--set", "test_per_class=3",
                   env={"RAYPIPE_FAULT": "train:rank1@2", "RAYPIPE_FAULT_ONCE": str(marker)}, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.is_file(), "the hook never fired: " + proc.stdout[-2000:]
    pid = int(marker.read_text().split()[0])
    try:
        os.kill(pid, 0)
        raise AssertionError(f"rank 1 (pid {pid}) is still alive")
    except ProcessLookupError:
        pass

    client, parents, kids = study_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "faults")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == TRIALS and len({k.data.tags["raypipe.trial_id"] for k in kids}) == TRIALS
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids), [k.info.status for k in kids]
    # Trials run one at a time (2 CPUs, 2 workers each): #1 is the one whose worker died. Its new worker
    # group resumed at epoch 2 from the epoch-1 checkpoint and said so.
    first = next(k for k in kids if k.data.tags["raypipe.trial_number"] == "1")
    assert first.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.info.run_id, "val_auroc")] == [1, 2]
    resumed = client.get_metric_history(first.info.run_id, "resumed_from_epoch")
    assert [(m.step, m.value) for m in resumed] == [(2, 1.0)]
    for kid in kids:
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "val_auroc")]
        assert steps == list(range(1, len(steps) + 1)), (kid.info.run_name, steps)

    study_dir = tmp_path / "tune" / "faults" / "fracture-round-1"
    tune_trials = ExperimentAnalysis(str(study_dir)).trials
    assert sorted(t.status for t in tune_trials) == ["TERMINATED"] * TRIALS
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "tune" / "faults" / "optuna-journal.log")))
    ostudy = optuna.load_study(study_name=parents[0].data.tags["raypipe.optuna_study"], storage=storage)
    states = [t.state for t in ostudy.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(tune_trials) and len(states) == TRIALS

    checkpoints = sorted(p for p in study_dir.glob("train/trial-*/checkpoint_*") if p.is_dir())
    assert {c.parent.name for c in checkpoints} == {f"trial-{t.trial_id}" for t in tune_trials}
    epochs_of_first = set()
    for ckpt in checkpoints:
        assert load_file(str(ckpt / "model.safetensors"))  # weights: no code can hide in them
        optim = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        assert optim["optimizer"]["state"] and "scheduler" in optim
        state = json.loads((ckpt / "state.json").read_text())
        if ckpt.parent.name == f"trial-{first.data.tags['raypipe.trial_id']}":
            epochs_of_first.add(state["epoch"])
    assert 2 in epochs_of_first  # the restarted group finished the epoch it lost
