"""The Ray cluster raypipe starts hands trials warm processes: its worker pool has imported torch, the
training loop and Ray Train before a trial or a DDP worker group asks for one (issue 17: those imports were
most of a first trial's and a W=2 trial's start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from tests.e2e.conftest import REPO

DRIVER = """
import json, sys
import ray
from raypipe.ray_cluster import PRELOAD_MODULES, init_ray
init_ray()

@ray.remote(num_cpus=1)
class Probe:  # an actor, as Tune's trial and Ray Train's workers are
    def __init__(self):
        self.found = {m: m in sys.modules for m in PRELOAD_MODULES + ("torch", "timm")}

    def found_at_start(self):
        return self.found

print(json.dumps(ray.get(Probe.remote().found_at_start.remote())), flush=True)
ray.shutdown()
"""


def test_a_new_actor_finds_torch_and_the_loop_already_imported():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    proc = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=env | {"RAY_TMPDIR": tempfile.mkdtemp(prefix="rppre-", dir="/tmp")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found and all(found.values()), found
