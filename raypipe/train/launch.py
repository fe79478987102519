"""Run one training job: in-process for one worker, Ray Train ``TorchTrainer`` (DDP) for more.

Both paths run ``loop.run`` and both stream per-epoch metrics to the same MLflow run: the
in-process session calls the logger directly; under Ray Train a controller-side
``UserCallback`` forwards rank 0's reports to it.

``Storage`` is where Ray keeps experiments and checkpoints (``--storage``): a directory (on more
than one node: a shared filesystem every node mounts at the same path) or an object-store URI such
as ``s3://bucket/prefix``, which Ray and this module open with ``pyarrow.fs``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raypipe import fsio
from raypipe.errors import InputError
from raypipe.train import loop
from raypipe.train.loop import TrainJob
from raypipe.train.session import LocalSession, ReportFn


@dataclass
class TrainResult:
    checkpoint: Path  # the kept epoch's checkpoint, a local directory (see checkpoint.py)
    best_epoch: int
    epochs_run: int
    world_size: int = 1  # as the loop reported it: the number of DDP ranks that trained


# Object stores Ray reaches through pyarrow.fs; anything else with a scheme is a typo.
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
STORAGE_ENV = "RAYPIPE_STORAGE"


@dataclass(frozen=True)
class Storage:
    """Ray's ``storage_path`` for tuning: Tune experiments, trial and Train checkpoints, study records.

    ``uri`` is an absolute directory or ``scheme://bucket/prefix`` (query parameters such as
    ``?endpoint_override=...`` are kept and passed to pyarrow). A directory also holds the image cache
    and the Optuna journal; an object store holds neither (a memory map and Optuna's journal need a
    POSIX file): those stay in the driver's ``--run-dir`` (see ``cache_root`` and ``journal_dir``).
    """

    uri: str

    @classmethod
    def resolve(cls, spec: str | Path | None, run_dir: Path) -> Storage:
        """``--storage`` (or ``$RAYPIPE_STORAGE``) -> a checked ``Storage``; none given: the run dir."""
        text = str(spec or "").strip()
        if not text:
            return cls(str(Path(run_dir).resolve()))
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() != "file":
            if scheme.lower() not in REMOTE_SCHEMES or not scheme.isalnum():
                raise InputError("--storage", f"unknown scheme '{scheme}://' in {text!r}: give a directory or "
                                 "s3://bucket/prefix (also gs://, hdfs://, abfs://)")
            if not urlsplit(text).netloc:
                raise InputError("--storage", f"{text!r} names no bucket: use {scheme}://bucket/prefix")
            return cls(text.rstrip("/"))
        path = Path(rest if sep else text).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise InputError("--storage", f"{path} is a file, not a directory")
        return cls(str(path))

    @property
    def local(self) -> bool:
        return "://" not in self.uri

    def join(self, *parts: str) -> str:
        """A path or URI below this storage (query parameters stay at the end)."""
        return join_uri(self.uri, *parts)

    def cache_root(self, run_dir: Path) -> Path:
        """The image cache: beside the experiments on a (shared) directory, else node-local."""
        return Path(self.uri) / "cache" if self.local else Path(run_dir).resolve() / "cache"

    def journal_dir(self, run_dir: Path, experiment: str) -> Path:
        """Where an experiment's Optuna journal lives: only the driver writes it, and it needs POSIX."""
        base = Path(self.uri) if self.local else Path(run_dir).resolve()
        return base / "tune" / experiment

    def __str__(self) -> str:
        return self.uri


def join_uri(base: str, *parts: str) -> str:
    if "://" not in base:
        return str(Path(base).joinpath(*parts))
    head, _, query = base.partition("?")
    joined = "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)])
    return f"{joined}?{query}" if query else joined


def _fs(uri: str):
    """(pyarrow filesystem, path) exactly as Ray resolves a ``storage_path``."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def read_text(uri: str) -> str | None:
    """A small file under a storage path or URI; ``None`` if it does not exist."""
    if "://" not in uri:
        path = Path(uri)
        return path.read_text() if path.is_file() else None
    fs, path = _fs(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        return None


def write_text(uri: str, text: str) -> None:
    """Atomically on a filesystem (temporary file + rename); a single PUT on an object store."""
    if "://" not in uri:
        fsio.write_text(uri, text)
        return
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def list_names(uri: str) -> list[str]:
    """Names of the entries directly below a storage path or URI (none if it does not exist)."""
    if "://" not in uri:
        path = Path(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def init_ray() -> None:
    """Attach to ``RAY_ADDRESS`` when set, else start a private local cluster bound to 127.0.0.1.

    ``address="local"``: without it ``ray.init()`` joins whatever cluster ``ray start`` last left on
    this machine (``/tmp/ray/ray_current_cluster``), someone else's included.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address or address.split("://")[-1].split(":")[0] in ("127.0.0.1", "localhost"):
        _stay_on_loopback()
    if address:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError("RAY_ADDRESS", f"cannot join the Ray cluster at {address}: {first} (a token-auth "
                             "cluster also needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)") from None
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 _node_ip_address="127.0.0.1")


def check_gpus(per_trial: float) -> None:
    """Refuse, before any trial or retrain starts, GPU settings the Ray cluster cannot place (a trial
    asking for a GPU on a CPU-only cluster would wait PENDING forever)."""
    if per_trial <= 0:
        return
    init_ray()
    have = float(ray.cluster_resources().get("GPU", 0))
    if have < per_trial:
        raise InputError("resources.gpus_per_trial", f"asks for {per_trial:g} GPU(s) per trial but the Ray cluster "
                         f"has {have:g}; set gpus_per_trial: 0 (or --gpus-per-trial 0) to train on CPUs")


def _stay_on_loopback() -> None:
    """Keep a single-machine cluster on 127.0.0.1.

    Ray rewrites 127.0.0.1 to the host's address (for a driver joining a head too), and its GCS, raylet
    and agents then listen on every interface, unless it believes it runs a single-machine
    (Windows/macOS-style) cluster. The variable reaches Ray's own processes; the constant is this
    process's cached copy of it.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"


def _score(metrics: dict[str, Any], monitor: str) -> float:
    value = float(metrics.get(monitor, math.nan))
    return -math.inf if math.isnan(value) else value


class _ForwardReports(ray.train.UserCallback):
    """Runs in the Ray Train controller: hands rank 0's metrics to a logger."""

    def __init__(self, on_report: ReportFn) -> None:
        self.on_report = on_report

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics:
            self.on_report(metrics[0], None)


def torch_trainer(job: TrainJob, name: str, storage_path: Path | str, callbacks: list,
                  cpus_per_worker: float = 1.0, gpus_per_worker: float = 1.0, max_failures: int = 2,
                  placement_group_key: str | None = None) -> TorchTrainer:
    """A DDP run of the loop. Re-running with the same ``name`` and ``storage_path`` resumes it from
    its last checkpoint; a dead worker restarts the group from there (``max_failures`` times).
    With ``placement_group_key``, rank 0 records its worker group's placement group under that key
    (see ``release_placement_group``)."""
    cfg = job.cfg
    return TorchTrainer(
        loop.train_loop_per_worker,
        train_loop_config={"job": job, "placement_group_key": placement_group_key},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if cfg.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path if "://" in str(storage_path) else str(Path(storage_path).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=job.monitor, checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )


def record_placement_group(key: str) -> None:
    """In a Train worker: remember the worker group's placement group in Ray's key-value store."""
    from ray.experimental.internal_kv import _internal_kv_put

    group = ray.util.get_current_placement_group()
    if group is not None:
        _internal_kv_put(key, group.id.hex().encode(), overwrite=True)


def release_placement_group(key: str) -> None:
    """Remove the placement group recorded under ``key``.

    A TorchTrainer run inside a Tune trial keeps its workers' placement group after it returns (Ray
    issue 54305, still so in 2.60): on a small cluster the next trial then waits for CPUs forever.
    """
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    recorded = _internal_kv_get(key)
    if recorded:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(recorded.decode()))))
        _internal_kv_del(key)


def fit(job: TrainJob, out_dir: Path, storage_path: Path, name: str, on_report: ReportFn | None = None,
        cpus_per_worker: float = 1.0, keep: str = "best", gpus_per_worker: float = 1.0) -> TrainResult:
    """Train ``job`` with ``job.cfg.workers`` workers; return the best (or, ``keep="last"``, the last)
    epoch's checkpoint as a local dir. Promotion keeps the last: its validation data is trained on."""
    cfg = job.cfg
    if cfg.workers <= 1:
        session = LocalSession(out_dir, job.monitor, cfg.use_gpu, on_report)
        state = loop.run(job, session)
        kept = (session.best if keep == "best" else None) or session.latest_checkpoint()
        if kept is None:
            raise RuntimeError("training produced no checkpoint")
        return TrainResult(kept, int(state["best_epoch"]), int(state["epoch"]),
                           int(state["metrics"].get("world_size", 1)))

    init_ray()
    trainer = torch_trainer(job, name, storage_path, [_ForwardReports(on_report)] if on_report else [],
                            cpus_per_worker, gpus_per_worker)
    try:
        result = trainer.fit()
    finally:  # a worker killed mid-report leaves its staging folder; the run is over now
        from raypipe.train.checkpoint import remove_staging

        remove_staging(name)
    # Ray keeps the best checkpoints but does not order them best-first: choose by the monitor.
    kept = result.best_checkpoints or [(result.checkpoint, result.metrics)]
    best_ckpt, best_metrics = max(kept, key=lambda pair: _score(pair[1], job.monitor))
    if keep == "last":
        best_ckpt = result.checkpoint
    if best_ckpt is None:
        raise RuntimeError("training produced no checkpoint")
    local = Path(out_dir) / "checkpoints" / "best"
    with fsio.atomic_dir(local) as tmp:  # a crash mid-copy keeps the previous best whole
        best_ckpt.to_directory(str(tmp))
    return TrainResult(local, int(best_metrics.get("epoch", 0)), int(result.metrics.get("epoch", 0)),
                       int(result.metrics.get("world_size", cfg.workers)))
