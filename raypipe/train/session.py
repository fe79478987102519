"""Where the training loop reports to: the one thing that differs between launchers.

The loop in ``loop.py`` is the same for every path; it talks to a ``Session``:
- ``LocalSession``: in-process, one worker (no Ray worker group: ~15-20 s cheaper to start);
- ``RaySession("train")``: a Ray Train worker (DDP), reporting through ``ray.train``;
- ``RaySession("tune")``: a single-worker Tune trial, reporting through ``ray.tune``.

A session owns checkpoints once reported: ``report`` may move or copy the directory. Ray sessions
add the reporting process's Ray node id to every report (``NODE_KEY``, a string: MLflow's metric
logging skips it; the Tune driver turns it into the child run's ``raypipe.node`` tag).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from raypipe import fsio

ReportFn = Callable[[dict[str, Any], Path | None], None]
NODE_KEY = "raypipe_node"


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint(self) -> Path | None: ...

    def staging_dir(self) -> Path:
        """A fresh folder to write the next checkpoint into before ``report`` (see checkpoint.py)."""
        ...


def pick_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


class LocalSession:
    """One in-process worker. Keeps the latest and the best checkpoint under ``out_dir``."""

    rank = 0
    world_size = 1

    def __init__(self, out_dir: Path, monitor: str, use_gpu: bool = False, on_report: ReportFn | None = None):
        self.dir = Path(out_dir) / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.monitor = monitor
        self.device = pick_device(use_gpu)
        self.on_report = on_report
        self.best: Path | None = None
        self.best_score = -math.inf

    def staging_dir(self) -> Path:
        # Beside the kept checkpoints (same filesystem): a crash leaves it in the run's own folder.
        staging = self.dir.parent / "staging"
        staging.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="epoch-", dir=staging))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        kept = None
        if checkpoint_dir is not None:
            kept = self.dir / f"epoch_{int(metrics['epoch']):03d}"
            # Copied beside its place and renamed in: a crash mid-copy (often across filesystems from
            # /tmp) never leaves a torn epoch directory that latest_checkpoint() would accept.
            with fsio.atomic_dir(kept) as tmp:
                shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            score = metrics.get(self.monitor, math.nan)
            if score > self.best_score:  # NaN never wins
                self.best, self.best_score = kept, score
            for old in self.dir.glob("epoch_*"):
                if old not in (kept, self.best):
                    shutil.rmtree(old, ignore_errors=True)
        if self.on_report:
            self.on_report(metrics, kept)

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.dir.glob("epoch_*") if (p / "state.json").exists())
        return done[-1] if done else None


class RaySession:
    """Reports through Ray: ``ray.train`` in a Ray Train worker (DDP is already set up by
    ``TorchTrainer``), ``ray.tune`` in a single-worker Tune trial. The two APIs have the same shape."""

    def __init__(self, api: str = "train", use_gpu: bool = False) -> None:
        import importlib

        self.api = importlib.import_module(f"ray.{api}")
        if api == "train":
            import ray.train.torch

            ctx = self.api.get_context()
            self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
            self.device = ray.train.torch.get_device()
            self.owner = f"{ctx.get_experiment_name()}-rank{self.rank}"  # the Train run: trial-<id>, promote-<id>
        else:
            self.rank, self.world_size = 0, 1
            self.device = pick_device(use_gpu)
            self.owner = self.api.get_context().get_trial_id()
        self._restored: tempfile.TemporaryDirectory | None = None
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def staging_dir(self) -> Path:
        from raypipe.train.checkpoint import new_staging_dir

        return new_staging_dir(self.owner)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = self.api.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Copies the directory into Ray's storage (a shared path or an object store, from any node).
        self.api.report({**metrics, NODE_KEY: self.node}, checkpoint=checkpoint)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self.api.get_checkpoint()
        if checkpoint is None:
            return None
        self._restored = tempfile.TemporaryDirectory(prefix="raypipe-restore-")
        return Path(checkpoint.to_directory(self._restored.name))
