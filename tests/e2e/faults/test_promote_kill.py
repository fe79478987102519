"""SIGKILL during promotion: the registry never has two champions, nor one pointing at a missing
version, and the next promotion cleans up after the dead one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import raypipe

# The shortcut set (a marker on fractures only) unmasked: a model above chance in 3 epochs, so the first promotion makes a champion.
TINY = ["--set", "image_size=40", "--set", "test_per_class=3", "--set", "masking=off", "--epochs", "3"]
MODEL = "faults.fracture-AP"


def promote(data, run_dir, *extra: str, fault: str | None = None):
    env = {"RAYPIPE_FAULT": fault} if fault else None
    return raypipe("promote", "--data", str(data), "--run-dir", str(run_dir), "--experiment", "faults",
                   "--target", "fracture/AP", "--bootstrap", "50", "--folds", "2", *extra, env=env)


@pytest.fixture(scope="module")
def tuned(shortcut_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("promote-kill")
    base = run_dir / "base.yaml"  # the base config, trial 0 of the study (lr is searched: not a --set)
    base.write_text("lr: 0.004\nbatch_size: 16\n")
    proc = raypipe("tune", "--data", str(shortcut_data), "--run-dir", str(run_dir), "--experiment", "faults",
                   "--target", "fracture/AP", "--trials", "1", "--config", str(base), *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def champion(client):
    version = client.get_model_version_by_alias(MODEL, "champion")
    client.get_model_version(MODEL, version.version)  # it exists
    return str(version.version)


def test_killed_promotions_leave_the_champion_and_the_next_one_cleans_up(tuned, shortcut_data):
    run_dir = tuned
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    first = promote(shortcut_data, run_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert champion(client) == "1"

    # Make any new version above chance win, so the kills land where it would take the alias: without its
    # out-of-fold evidence, v1 looks like a champion from before selection without test, which gives way.
    v1_run = client.get_run(client.get_model_version(MODEL, "1").run_id)
    shutil.rmtree(Path(v1_run.info.artifact_uri.removeprefix("file://")) / "selection")
    # After registering (a version without an alias) and between tagging and moving the alias. A kill
    # before registering (`promote:trained`) touches the registry not at all and costs CI another retrain.
    for point in ("promote:registered", "promote:deciding"):
        killed = promote(shortcut_data, run_dir, fault=point)
        assert killed.returncode == -9, (point, killed.stdout[-2000:], killed.stderr[-2000:])
        assert champion(client) == "1", point  # still the old one, and it exists

    exp_id = client.get_experiment_by_name("faults").experiment_id
    status = sorted(r.info.status for r in client.search_runs([exp_id], "tags.`raypipe.kind` = 'promote'"))
    assert status == ["FAILED", "FINISHED", "RUNNING"]  # each promotion closes the dead before it

    last = promote(shortcut_data, run_dir)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    versions = {str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert versions == {"1", "2", "3", "4"}  # killed after registering: versions 2 and 3, never champions
    assert champion(client) == "4"
    assert client.get_model_version(MODEL, "4").tags["previous_champion"] == "1"
    runs = client.search_runs([exp_id], "tags.`raypipe.kind` = 'promote'")
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 2 + ["FINISHED"] * 2
    assert client.get_registered_model(MODEL).aliases == {"champion": 4}  # one alias, no challenger
