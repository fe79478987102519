"""Run one training job: in-process for one worker, Ray Train ``TorchTrainer`` (DDP) for more.

Both paths run ``loop.run`` and both stream per-epoch metrics to the same MLflow run: the
in-process session calls the logger directly; under Ray Train a controller-side
``UserCallback`` forwards rank 0's reports to it.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raypipe.train import loop
from raypipe.train.loop import TrainJob
from raypipe.train.session import LocalSession, ReportFn


@dataclass
class TrainResult:
    checkpoint: Path  # the kept epoch's checkpoint, a local directory (see checkpoint.py)
    best_epoch: int
    epochs_run: int


def init_ray() -> None:
    """Attach to ``RAY_ADDRESS`` when set, else start a local cluster bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 _node_ip_address="127.0.0.1")


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
            name=name, storage_path=str(Path(storage_path).resolve()),
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
        cpus_per_worker: float = 1.0, keep: str = "best") -> TrainResult:
    """Train ``job`` with ``job.cfg.workers`` workers; return the best (or, ``keep="last"``, the last)
    epoch's checkpoint as a local dir. Promotion keeps the last: its validation data is trained on."""
    cfg = job.cfg
    if cfg.workers <= 1:
        session = LocalSession(out_dir, job.monitor, cfg.use_gpu, on_report)
        state = loop.run(job, session)
        kept = (session.best if keep == "best" else None) or session.latest_checkpoint()
        if kept is None:
            raise RuntimeError("training produced no checkpoint")
        return TrainResult(kept, int(state["best_epoch"]), int(state["epoch"]))

    init_ray()
    trainer = torch_trainer(job, name, storage_path, [_ForwardReports(on_report)] if on_report else [],
                            cpus_per_worker)
    result = trainer.fit()
    # Ray keeps the best checkpoints but does not order them best-first: choose by the monitor.
    kept = result.best_checkpoints or [(result.checkpoint, result.metrics)]
    best_ckpt, best_metrics = max(kept, key=lambda pair: _score(pair[1], job.monitor))
    if keep == "last":
        best_ckpt = result.checkpoint
    if best_ckpt is None:
        raise RuntimeError("training produced no checkpoint")
    local = Path(out_dir) / "checkpoints" / "best"
    shutil.rmtree(local, ignore_errors=True)
    best_ckpt.to_directory(str(local))
    return TrainResult(local, int(best_metrics.get("epoch", 0)), int(result.metrics.get("epoch", 0)))
