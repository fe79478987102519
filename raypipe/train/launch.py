"""Run one training job: in-process for one worker, Ray Train ``TorchTrainer`` (DDP) for more.

Both paths run ``loop.run`` and both stream per-epoch metrics to the same MLflow run: the
in-process session calls the logger directly; under Ray Train a controller-side
``UserCallback`` forwards rank 0's reports to it.
Where Ray keeps runs: raypipe/storage.py; starting or joining the cluster: raypipe/ray_cluster.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raypipe import fsio
from raypipe.ray_cluster import init_ray
from raypipe.train import loop
from raypipe.train.loop import TrainJob
from raypipe.train.session import LocalSession, ReportFn


@dataclass
class TrainResult:
    checkpoint: Path  # the kept epoch's checkpoint, a local directory (see checkpoint.py)
    best_epoch: int
    epochs_run: int
    world_size: int = 1  # as the loop reported it: the number of DDP ranks that trained


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
