"""`make ray-up` + `ray job submit ... -- python -m raypipe tune ...` as the README shows it: a token-auth
Ray head on 127.0.0.1, a job that tunes, its runs in MLflow; a job whose every trial fails is FAILED (the
CLI's exit code reaches Ray); the head, shared by the module's tests, stopped after."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ray-head")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")}
    # every port free: another head on this machine (a parallel test run) holds Ray's defaults
    ports = {"RAY_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port()), "RAY_AGENT_PORT": str(free_port())}
    make_vars = [f"RUN_DIR={tmp_path}", *(f"{k}={v}" for k, v in ports.items())]
    up = run(["make", "-s", "ray-up", *make_vars], env)
    assert up.returncode == 0, up.stdout + up.stderr
    token = tmp_path / "ray-head" / "auth_token"
    assert token.stat().st_mode & 0o077 == 0  # the token is private to its owner
    yield env, f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}", token
    down = run(["make", "-s", "ray-down", *make_vars], env)
    assert down.returncode == 0, down.stderr


def submit(ray_head, job: list[str], *options: str) -> subprocess.CompletedProcess:
    env, address, token = ray_head
    ray = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + 180  # on a loaded 2-core machine the agent has taken over a minute
    while True:  # right after `ray start` the head's job agent may not be up yet: Ray says retry
        submitted = run([ray, "job", "submit", "--address", address, "--working-dir", ".", *options, *job],
                        env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        if "No available agent to submit job" not in submitted.stderr or time.monotonic() > deadline:
            break
        time.sleep(5)
    return submitted


def test_job_submit_tunes_on_a_token_auth_head(ray_head, synth_data, tmp_path):
    env, address, token = ray_head
    ray = str(Path(sys.executable).parent / "ray")
    run_dir = tmp_path / "runs"
    job = ["--", "python", "-m", "raypipe", "tune", "--data", str(synth_data), "--run-dir", str(run_dir),
           "--experiment", "job", "--target", "fracture", "--trials", "2", "--epochs", "2",
           "--set", "image_size=48", "--set", "test_per_class=3"]

    refused = run([ray, "job", "submit", "--address", address, "--no-wait", "--", "python", "-c", "1"],
                  env | {"RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0  # no token, no job

    submitted = submit(ray_head, job)
    assert submitted.returncode == 0 and "succeeded" in submitted.stdout + submitted.stderr, \
        submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "best trial per target" in submitted.stdout

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("job")
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.data.tags.get("raypipe.kind") == "study" for r in runs) == 1
    assert sum(r.data.tags.get("raypipe.kind") == "trial" for r in runs) == 2
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)


def test_a_study_whose_every_trial_fails_is_a_failed_job(ray_head, synth_data, tmp_path):
    """Every trial raises in its loop (the models' test hook, armed for the job's processes through its runtime
    env): `raypipe tune` exits 1, and Ray reports the job FAILED, not SUCCEEDED."""
    job = ["--", "python", "-m", "raypipe", "tune", "--data", str(synth_data), "--run-dir", str(tmp_path / "runs"),
           "--experiment", "job-fails", "--target", "fracture", "--trials", "1", "--epochs", "1",
           "--set", "image_size=48", "--set", "test_per_class=3"]
    runtime_env = json.dumps({"env_vars": {"RAYPIPE_FAULT": "raise:seed=0"}})  # every trial: seed 0
    submitted = submit(ray_head, job, "--runtime-env-json", runtime_env)
    out = submitted.stdout + submitted.stderr
    assert submitted.returncode == 1, out[-3000:]
    assert "failed" in out and "exit code 1" in out, out[-3000:]
    assert "no trial of fracture finished" in out, out[-3000:]
