"""SIGKILL during promotion: the registry never has two champions, nor one pointing at a missing
version, and the next promotion cleans up after the dead one."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import raypipe

TINY = ["--set", "image_size=32", "--set", "test_per_class=3", "--epochs", "2"]


def promote(data, run_dir, *extra: str, fault: str | None = None):
    env = {"RAYPIPE_FAULT": fault} if fault else None
    return raypipe("promote", "--data", str(data), "--run-dir", str(run_dir), "--experiment", "faults",
                   "--target", "age", "--bootstrap", "50", *extra, env=env)


@pytest.fixture(scope="module")
def tuned(synth_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("promote-kill")
    proc = raypipe("tune", "--data", str(synth_data), "--run-dir", str(run_dir), "--experiment", "faults",
                   "--target", "age", "--trials", "2", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def champion(client):
    version = client.get_model_version_by_alias("faults.age", "champion")
    client.get_model_version("faults.age", version.version)  # it exists
    return str(version.version)


def test_killed_promotions_leave_the_champion_and_the_next_one_cleans_up(tuned, synth_data):
    run_dir = tuned
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    first = promote(synth_data, run_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert champion(client) == "1"

    # Make any new version win, so the kills land where it would take the alias.
    client.set_model_version_tag("faults.age", "1", "test_macro_f1", "-1.0")
    # After registering (a version without an alias) and between tagging and moving the alias. A kill
    # before registering (`promote:trained`) touches the registry not at all and costs CI another retrain.
    for point in ("promote:registered", "promote:deciding"):
        killed = promote(synth_data, run_dir, fault=point)
        assert killed.returncode == -9, (point, killed.stdout[-2000:], killed.stderr[-2000:])
        assert champion(client) == "1", point  # still the old one, and it exists

    exp_id = client.get_experiment_by_name("faults").experiment_id
    status = sorted(r.info.status for r in client.search_runs([exp_id], "tags.`raypipe.kind` = 'promote'"))
    assert status == ["FAILED", "FINISHED", "RUNNING"]  # each promotion closes the dead before it

    last = promote(synth_data, run_dir)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    versions = {str(v.version) for v in client.search_model_versions("name = 'faults.age'")}
    assert versions == {"1", "2", "3", "4"}  # killed after registering: versions 2 and 3, never champions
    assert champion(client) == "4"
    assert client.get_model_version("faults.age", "4").tags["previous_champion"] == "1"
    runs = client.search_runs([exp_id], "tags.`raypipe.kind` = 'promote'")
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 2 + ["FINISHED"] * 2
    assert client.get_registered_model("faults.age").aliases == {"champion": 4}  # one alias, no challenger
