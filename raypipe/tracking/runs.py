"""MLflow runs for raypipe jobs.

Embedded default: a SQLite store under the run directory (MLflow 3.7+ refuses a bare ./mlruns
file store) with artifacts beside it; ``MLFLOW_TRACKING_URI`` overrides both.

Nothing that identifies a patient goes to MLflow: params come from the resolved config,
tags are hashes and names, metrics are aggregates.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

# Terminal output is ours: no per-download progress bars in the middle of the tables.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

# mlflow sets its logger to INFO on import; its schema-migration chatter is not for users.
logging.getLogger("mlflow").setLevel(logging.WARNING)

DEFAULT_EXPERIMENT = "raypipe"


def tracking_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def experiment_id(client: MlflowClient, name: str, run_dir: Path) -> str:
    """Get or create an experiment; with the embedded store its artifacts go under the run directory."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (Path(run_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def flat_params(prefix: str, obj: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_params(f"{name}.", value)
        else:
            out[name] = "None" if value is None else str(value)
    return out


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class EpochLogger:
    """Logs one report (a metrics dict with ``epoch``) to an MLflow run, step = epoch.

    Picklable (URI + run id only), so a Ray Train controller callback can carry it.
    """

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self._client: MlflowClient | None = None

    def __call__(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        step = int(metrics.get("epoch", 0))
        now = mlflow.utils.time.get_current_time_millis()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if k != "epoch" and isinstance(v, int | float)]
        self._client.log_batch(self.run_id, metrics=batch)

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "_client": None}
