"""MLflow runs for raypipe jobs.

Embedded default: a SQLite store under the run directory (MLflow 3.7+ refuses a bare ./mlruns
file store) with artifacts beside it; ``MLFLOW_TRACKING_URI`` overrides both, for every command. On a
cluster point it at a tracking server (``http://host:5000``, started with ``--artifacts-destination``
so artifacts go through it too): only the driver process writes runs, and nothing it logs needs a
file that only the driver's node has.

Nothing that identifies a patient goes to MLflow: params come from the resolved config,
tags are hashes and names, metrics are aggregates.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Terminal output is ours: no per-download progress bars in the middle of the tables.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

# mlflow sets its logger to INFO on import; its schema-migration chatter is not for users.
logging.getLogger("mlflow").setLevel(logging.WARNING)


def tracking_uri(run_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` (a tracking server must answer), else SQLite under ``run_dir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    return uri


def store_client(uri: str) -> MlflowClient:
    """A client whose model registry is the tracking store ``uri`` itself.

    ``store_client(uri)`` alone takes its registry from mlflow's process-wide registry URI when one
    was ever set (``mlflow.set_registry_uri`` also exports ``MLFLOW_REGISTRY_URI`` to children): in
    a process that touched another store first it would read and write the other store's models.
    """
    return MlflowClient(uri, registry_uri=uri)


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """mlflow's process-wide tracking and registry URIs set to ``uri`` for the block, then restored.

    Fluent calls (``mlflow.start_run``, ``log_model``, ``models:/`` loads) read only these globals,
    and setting them exports environment variables that every later subprocess would inherit.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in _URI_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])  # None unsets the tracking variable too
        registry_utils._registry_uri = saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@functools.cache
def _check_server(uri: str) -> None:
    """Fail fast, in one line, on a server that is not there (MLflow itself retries for minutes)."""
    from raypipe.errors import InputError

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # something answers (a proxy, an auth front): let MLflow speak for it
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError("MLFLOW_TRACKING_URI", f"no MLflow server answers at {uri}: {reason}") from None


# What can carry a patient identifier in error text (GRAZPEDWRI-DX file names start with the patient
# id, MURA folders are named patientNNNNN): anything path-like (a separator in it), a file name with an
# extension, and any word holding a run of 4+ digits (ids, time hashes, file stems without extension).
# A decimal's fraction (0.0001) is a number, not an id.
_PATHLIKE = re.compile(r"""(?:[A-Za-z]:)?[^\s'"`()\[\]{}<>,;=:]*[/\\][^\s'"`()\[\]{}<>,;:]*""")
_FILENAME = re.compile(r"[\w.\-]+\.(?:png|jpe?g|tiff?|bmp|dcm|dicom|jp2|txt|csv|json|ya?ml|npz|npy|pt|pth"
                       r"|safetensors|log|u8|pkl|parquet)\b", re.IGNORECASE)
_DIGIT_RUN = re.compile(r"(?<![\w.])\w*\d{4,}[\w\-]*")


def scrub(text: str) -> str:
    """``text`` without paths, file names and identifier-like words: safe for an MLflow tag.

    Error text goes to MLflow (``raypipe.error`` on a FAILED trial run), where no patient identifier
    may go; each such part becomes ``<path>``, ``<file>`` or ``<id>``, the rest of the message stays.
    """
    text = _PATHLIKE.sub("<path>", text)
    text = _FILENAME.sub("<file>", text)
    return _DIGIT_RUN.sub("<id>", text)


def ui_hint(uri: str) -> str:
    """How a person opens the runs of ``uri`` in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"open the MLflow UI: {uri}"
    return f"open the MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1"


def fail_run(client: MlflowClient, run_id: str, reason: str | None = None) -> None:
    """Mark a run FAILED, with the reason as its ``raypipe.reason`` tag: the one way raypipe fails a run."""
    if reason:
        client.set_tag(run_id, "raypipe.reason", reason[:5000])
    client.set_terminated(run_id, "FAILED")


@contextlib.contextmanager
def closing_run(client: MlflowClient, run_id: str) -> Iterator[str]:
    """The run ends FINISHED with the block, or FAILED when the block raises (or is interrupted)."""
    try:
        yield run_id
    except BaseException:
        fail_run(client, run_id)
        raise
    client.set_terminated(run_id, "FINISHED")


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
    """The commit of the running code (the ``raypipe.git_sha`` tag of every run).

    A git checkout answers with its HEAD. Installed copies have no ``.git``: a source tree exported by
    ``cluster/export-ref.sh`` carries the commit in ``REVISION``, and the Docker image (and the AWS
    nodes, from that file) in ``RAYPIPE_GIT_SHA``. "unknown" when none of them says.
    """
    source = Path(__file__).resolve().parents[2]  # the folder holding the raypipe package
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=source).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        if sha := (source / "REVISION").read_text().strip():
            return sha
    except OSError:
        pass
    return os.environ.get("RAYPIPE_GIT_SHA", "").strip() or "unknown"


class EpochLogger:
    """Logs one report (a metrics dict with ``epoch``) to an MLflow run, step = epoch.

    Picklable (URI + run id only), so a Ray Train controller callback can carry it.
    """

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self._client: MlflowClient | None = None

    def __call__(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        if self._client is None:
            self._client = store_client(self.uri)
        step = int(metrics.get("epoch", 0))
        now = mlflow.utils.time.get_current_time_millis()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if k != "epoch" and isinstance(v, int | float)]
        self._client.log_batch(self.run_id, metrics=batch)

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "_client": None}
