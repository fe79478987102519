"""`make ray-up` + `ray job submit ... -- python -m raypipe tune ...` as the README shows it: a token-auth
Ray head on 127.0.0.1, a job that tunes, its runs in MLflow, the head stopped after."""

from __future__ import annotations

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


@pytest.fixture
def ray_head(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    ports = {"RAY_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port())}
    make_vars = [f"RUN_DIR={tmp_path}", *(f"{k}={v}" for k, v in ports.items())]
    up = run(["make", "-s", "ray-up", *make_vars], env)
    assert up.returncode == 0, up.stdout + up.stderr
    token = tmp_path / "ray-head" / "auth_token"
    assert token.stat().st_mode & 0o077 == 0  # the token is private to its owner
    yield env, f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}", token
    down = run(["make", "-s", "ray-down", *make_vars], env)
    assert down.returncode == 0, down.stderr


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

    for _ in range(6):  # right after `ray start` the head's job agent may not be up yet: Ray says retry
        submitted = run([ray, "job", "submit", "--address", address, "--working-dir", ".", *job],
                        env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        if "No available agent to submit job" not in submitted.stderr:
            break
        time.sleep(5)
    assert submitted.returncode == 0 and "succeeded" in submitted.stdout + submitted.stderr, \
        submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "best trial per target" in submitted.stdout

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("job")
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.data.tags.get("raypipe.kind") == "study" for r in runs) == 1
    assert sum(r.data.tags.get("raypipe.kind") == "trial" for r in runs) == 2
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
