"""The demo study (`make tune`'s job) timed end to end. Prints one JSON object.

    python benchmarks/tune_demo.py [--run-dir DIR] [--keep]

Runs `python -m raypipe tune --preset demo` in a fresh run directory (data synthesis, split, cache,
local Ray start, 9 studies x 6 trials, MLflow) and reads the outcome back from MLflow: wall time,
trials finished / pruned / failed, trial-epochs trained, and the best validation metric per target.
Target (issue 3): under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="raypipe-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    # The preset's data path is relative: keep the synthetic data inside the benchmark's run dir.
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raypipe", "tune", "--preset", "demo", "--run-dir", str(run_dir),
                           "--data", str(run_dir / "demo-data")], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    trials = [r for r in runs if r.data.tags.get("raypipe.kind") == "trial"]
    epochs = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in trials)
    best = {r.data.tags["raypipe.target"]: round(r.data.metrics.get(f"best_{r.data.tags['raypipe.monitor']}", 0), 3)
            for r in runs if r.data.tags.get("raypipe.kind") == "study"}
    print(json.dumps({
        "benchmark": "tune_demo", "wall_seconds": round(wall, 1), "target_seconds": 600,
        "studies": len(best), "trials": len(trials),
        "finished": sum(r.info.status == "FINISHED" for r in trials),
        "pruned": sum(r.info.status == "KILLED" for r in trials),
        "failed": sum(r.info.status == "FAILED" for r in trials), "trial_epochs": epochs,
        "best_val_metric": best, "cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(),
    }))
    if not args.keep and args.run_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
