"""Same seed, same data, same config: the same study.

Two small tune runs in separate run directories (started side by side, so scheduling and timing
differ) must sample the same trial configs (seeded Optuna TPE) and, on CPU, report the same first-epoch
metrics for each trial. One trial at a time: with several in flight, which results TPE has seen when it
samples the next config depends on timing, and reproducibility is not promised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.e2e.conftest import REPO

TRIALS = 2
TIMING = {"epoch_seconds", "time_this_iter_s", "time_total_s", "timestamp"}


def start(data: Path, run_dir: Path) -> subprocess.Popen:
    args = ["tune", "--data", str(data), "--run-dir", str(run_dir), "--experiment", "det", "--target", "fracture",
            "--trials", str(TRIALS), "--max-concurrent", "1", "--seed", "3", "--epochs", "2",
            "--set", "image_size=48", "--set", "test_per_class=3"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")}
    return subprocess.Popen([sys.executable, "-m", "raypipe", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env | {"PYTHONUNBUFFERED": "1"})


def trials(run_dir: Path) -> dict[int, tuple[dict[str, str], dict[str, float]]]:
    """Trial number -> (sampled params, every metric of epoch 1 except timings)."""
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("det")
    out = {}
    for run in client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'trial'"):
        first = {}
        for key in run.data.metrics:
            if key not in TIMING and not key.startswith("best_"):
                values = [m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == 1]
                if values:
                    first[key] = values[-1]
        out[int(run.data.tags["raypipe.trial_number"])] = (run.data.params, first)
    return out


def test_same_seed_same_trials_and_first_epoch_metrics(synth_data, tmp_path) -> None:
    runs = [start(synth_data, tmp_path / name) for name in ("a", "b")]
    logs = [proc.communicate(timeout=600)[0] for proc in runs]
    for proc, log in zip(runs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]
    a, b = trials(tmp_path / "a"), trials(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, TRIALS + 1))
    assert len({tuple(sorted(a[n][0].items())) for n in a}) == TRIALS  # the trials differ from each other...
    for n in a:
        params_a, first_a = a[n]
        params_b, first_b = b[n]
        assert params_a == params_b, f"trial {n} sampled differently"  # ...and match across runs exactly
        assert {"train_loss", "val_loss", "val_auroc"} <= set(first_a), sorted(first_a)
        assert first_a == first_b, f"trial {n}: epoch-1 metrics differ"
