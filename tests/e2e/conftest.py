"""End-to-end fixtures: a synthetic data set made once per session, the CLI run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raypipe.data.synth import synthesize

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "wrist"
    synthesize(out, patients=120, seed=7, height=128, width=80)
    return out


@pytest.fixture(scope="session")
def shortcut_data(tmp_path_factory) -> Path:
    """A set whose fracture label a tiny model learns in 2-4 epochs at 32-48 px: a text marker is burned in
    on fracture images only (no fracture is drawn). Trained with ``masking=off`` it gives the e2e tests
    models above chance, hence champions (and shortcut audits that flag them, as they should)."""
    out = tmp_path_factory.mktemp("synth-presence") / "wrist"
    synthesize(out, patients=120, seed=7, height=128, width=80, shortcut="presence")
    return out


def raypipe(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m raypipe ...`` in a fresh process, as a person would."""
    # A tracking URI from the caller's shell must not redirect the test's runs away from its run dir.
    # mlflow.set_tracking_uri/set_registry_uri (in-process tests, raypipe's own _register) export these: a
    # CLI run by a later test in the same worker would otherwise read and write another test's store
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    full_env = {**base, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "raypipe", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout)


def study_runs(tracking_uri: str, experiment: str):
    """(client, study parent runs, trial child runs) of an experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("raypipe.kind") == "study"]
    kids = [r for r in runs if r.data.tags.get("raypipe.kind") == "trial"]
    return client, parents, kids
