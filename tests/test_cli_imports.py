"""The commands a person runs first answer in about a second: `--help` and the `data` commands never import
Ray, MLflow or torch (seconds each), whatever the rest of the CLI needs (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import write_grazpedwri

PROBE = """
import json, sys
from raypipe.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("ray", "mlflow", "torch", "timm") if m in sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["tune", "--help"], ["data", "check", "{data}"],
                                  ["data", "split", "{data}", "--run-dir", "{run}"]],
                         ids=["help", "tune-help", "data-check", "data-split"])
def test_light_commands_leave_ray_mlflow_and_torch_unimported(args, tmp_path):
    data = write_grazpedwri(tmp_path / "graz", n_patients=6, size=(48, 32))
    argv = [a.format(data=data, run=tmp_path / "run") for a in args]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [], proc.stdout[-2000:]
