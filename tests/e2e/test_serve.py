"""A champion served by MLflow's own server, as the README shows: `mlflow models serve -m
models:/<name>@champion --env-manager local` on 127.0.0.1, a PNG POSTed as base64, probability, threshold
and label back; a path in the request is refused (no file-read oracle); the server is always stopped.

The champion is registered by promote's own ``_register`` (tests/ship/champions.py: a tiny random-init
model, seconds instead of a tune + promote): what is served does not depend on how well it was trained.
The server runs with a decoy ``raypipe`` package first on its PYTHONPATH that fails on import, so it
answers only if the model carries raypipe's code itself (code_paths), as a machine without raypipe
installed needs.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import write_grazpedwri
from tests.ship.champions import register_champion

BOX = "0.125000 0.083333 0.187500 0.125000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise AssertionError(f"no answer from {url} in {timeout} s: {log.read_text()[-3000:]}")


def test_mlflow_serves_the_champion_a_base64_png_and_refuses_server_paths(tmp_path):
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    uri = register_champion(run_dir, "served", "fracture", masking="fill", threshold=0.3)
    image = sorted(write_grazpedwri(tmp_path / "graz", n_patients=1).glob("images_part*/*.png"))[0]
    decoy = tmp_path / "decoy" / "raypipe"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the installed raypipe was used, not the model code')\n")

    port = free_port()
    log = tmp_path / "server.log"
    # the server execs `uvicorn` from PATH: the venv's bin goes first, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(decoy.parent),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_PYFUNC_INFERENCE_CONFIG", None)
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/served.fracture@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(server, f"{base}/ping", log)
        png = base64.b64encode(image.read_bytes()).decode()
        status, body = post(f"{base}/invocations", {"dataframe_split": {
            "columns": ["image_bytes", "text_boxes"], "data": [[png, BOX], [png, None]]}})
        assert status == 200, body
        first, second = body["predictions"]
        for row in (first, second):
            assert 0.0 <= row["probability"] <= 1.0 and row["threshold"] == 0.3
            assert row["label"] == ("fracture" if row["probability"] >= 0.3 else "normal")
        assert (first["masked"], first["boxes_masked"]) == (True, 1)
        assert (second["masked"], second["boxes_masked"]) == (False, 0)

        status, body = post(f"{base}/invocations", {"dataframe_records": [{"image": str(image)}]})
        assert status == 400 and "reads no file paths" in body.get("message", ""), body
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert server.poll() is not None
