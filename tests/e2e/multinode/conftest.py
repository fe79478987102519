"""Fixtures for the multi-node tests: a two-node Ray cluster with token auth, an MLflow tracking server.

Both run as processes of their own, bound to 127.0.0.1, and are stopped by process id afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """End a process group this test started: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class TwoNodes:
    address: str
    head: str  # node ids
    worker: str
    env: dict[str, str]  # what a driver needs to join: RAY_ADDRESS and the token settings
    proc: subprocess.Popen

    def remove_worker(self) -> None:
        """Kill every process of the worker node at once (a lost machine)."""
        self.proc.stdin.write("remove-worker\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert answer == {"removed": self.worker}, answer


@pytest.fixture
def two_nodes():
    """Head and worker node, one CPU each, token auth with a token of their own."""
    # Short: Ray's socket paths live under the temp dir and must stay under ~100 characters.
    home = Path(tempfile.mkdtemp(prefix="rp-mn-"))
    token = home / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.multinode.cluster", "1", "1"], cwd=REPO,
                            env=env | auth | {"PYTHONUNBUFFERED": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line, "the cluster process ended before it was up"
        info = json.loads(line)
        # The nodes listen on 127.0.0.1 only. A driver given RAY_ADDRESS=127.0.0.1:port would swap the
        # loopback address for the machine's outward one before connecting; Ray's single-machine mode
        # (this variable at 0) keeps it on loopback.
        driver_env = auth | {"RAY_ADDRESS": info["address"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        yield TwoNodes(info["address"], info["head"], info["worker"], driver_env, proc)
    finally:
        proc.stdin.close()  # the cluster process shuts Ray down and exits
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            _stop(proc)
        try:  # whatever of its Ray processes outlived it shares its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free 127.0.0.1 port (SQLite backend, proxied artifacts); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    # No background job runner (a handful of extra processes): runs, metrics and artifacts are all we use.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri
    finally:
        _stop(proc)
        log.close()
