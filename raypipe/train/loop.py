"""The one training loop. Every path runs it: in-process, Ray Train DDP, Tune trials.

Read ``run`` top to bottom: data, model, resume, epochs (train, validate, checkpoint, report,
early stopping). Ranks split the training batches; rank 0 validates on the whole validation
set with the unwrapped model and broadcasts the early-stopping decision.

A restarted worker group (a dead worker, a lost node) or a restored trial resumes from the session's
last checkpoint: weights, optimizer and schedule, epoch, best score and early-stopping counter; its
first report after that carries ``resumed_from_epoch``.
The loop touches no tracking store and no path of the driver's: sessions report, launchers log.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from raypipe import faults
from raypipe.config import TrainConfig
from raypipe.data.cache import ImageCache
from raypipe.data.dataset import CachedImageDataset, to_model_input
from raypipe.data.sampling import KeyedDraws, build_sampler
from raypipe.models.backbones import build_model, model_spec
from raypipe.models.losses import build_loss
from raypipe.train import checkpoint
from raypipe.train.metrics import evaluate, scores_from_logits
from raypipe.train.session import RaySession, Session


@dataclass
class TrainJob:
    """Everything a worker needs; small and picklable (the cache pickles as a path)."""

    cfg: TrainConfig
    target: str
    class_names: list[str]
    monitor: str
    cache: ImageCache
    train_rows: np.ndarray
    train_labels: np.ndarray
    val_rows: np.ndarray
    val_labels: np.ndarray
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def with_config(self, cfg: TrainConfig) -> TrainJob:
        """The same data and target with another config (a tuning trial); the saved spec follows it."""
        return dataclasses.replace(self, cfg=cfg, spec=self.spec | model_spec(cfg, self.n_classes))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: the same loop with a Ray Train session."""
    session = RaySession("train")
    if config.get("placement_group_key") and session.rank == 0:
        from raypipe.ray_cluster import record_placement_group

        record_placement_group(config["placement_group_key"])
    run(config["job"], session)


def run(job: TrainJob, session: Session) -> dict[str, Any]:
    cfg, device, world = job.cfg, session.device, session.world_size
    # 1. Seeds: the same config gives the same run on CPU.
    torch.manual_seed(cfg.seed + session.rank)
    np.random.seed(cfg.seed + session.rank)

    # 2. Data: cached images; each rank draws its own share of every epoch.
    train_ds = CachedImageDataset(job.cache, job.train_rows, job.train_labels, cfg.augment, train=True, seed=cfg.seed)
    val_ds = CachedImageDataset(job.cache, job.val_rows, job.val_labels, 0.0, train=False, seed=cfg.seed)
    sampler = KeyedDraws(build_sampler(cfg, job.train_labels, session.rank, world), session.rank, world)
    batch = max(1, cfg.batch_size // world)  # cfg.batch_size is global
    # Persistent workers start once per run, not per epoch: the epoch reaches them in every sampler key.
    loader_args = {"num_workers": cfg.loader_workers, "pin_memory": device.type == "cuda",
                   "persistent_workers": cfg.loader_workers > 0}
    train_loader = train_data_loader(train_ds, sampler, batch, **loader_args)
    val_loader = DataLoader(val_ds, batch_size=2 * batch, shuffle=False, **loader_args)

    # 3. Model, loss, optimiser, schedule.
    model = build_model(cfg, job.n_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = build_loss(cfg, job.n_classes, np.bincount(job.train_labels, minlength=job.n_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")

    # 4. Resume from the last checkpoint, if the launcher has one.
    state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad_epochs": 0, "metrics": {}}
    resumed: int | None = None  # reported once, with the first epoch after a restart
    if (last := session.latest_checkpoint()) is not None:
        state = checkpoint.restore(last, model, optimizer, scheduler)
        resumed = int(state["epoch"])

    # 5. Epochs: train, validate (rank 0), checkpoint + report, early stopping.
    last_epoch = min(cfg.epochs, cfg.stop_epoch or cfg.epochs)  # the schedule spans cfg.epochs regardless
    for epoch in range(state["epoch"] + 1, last_epoch + 1):
        if state["bad_epochs"] >= cfg.patience:
            break
        if cfg.lr_by_epoch:  # a replay (a promotion's retrain): the trial's learning rates, epoch by epoch
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_by_epoch[min(epoch, len(cfg.lr_by_epoch)) - 1]
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        kill_point = f"train:rank{session.rank}@{epoch}"
        fault = functools.partial(faults.point, kill_point, FAULT_DELAY_S) if faults.armed(kill_point) else None
        train_loss = _train_epoch(model, train_loader, criterion, optimizer, cfg.grad_clip, amp, device, world, fault)
        # world_size: how many DDP ranks trained this epoch, so a run shows it really ran distributed
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                                   "world_size": world}
        if resumed is not None:
            metrics["resumed_from_epoch"], resumed = resumed, None
        ckpt_dir = None
        if session.rank == 0:
            y, scores, val_loss = _predict(checkpoint.unwrap(model), val_loader, criterion, job.n_classes, amp, device)
            metrics |= {"val_loss": val_loss} | {f"val_{k}": v for k, v in evaluate(y, scores, job.n_classes).items()}
            score = metrics.get(job.monitor, math.nan)
            improved = not math.isnan(score) and score > state["best"]
            state = {"epoch": epoch, "best": score if improved else state["best"],
                     "best_epoch": epoch if improved else state["best_epoch"],
                     "bad_epochs": 0 if improved else state["bad_epochs"] + 1, "metrics": metrics}
            # The running best is what a study ranks trials by: the searcher and ASHA read it, so a trial
            # whose metric peaks and then falls counts at its peak, wherever it stops.
            metrics |= {"best_epoch": state["best_epoch"], best_key(job.monitor): _finite(state["best"]),
                        "epoch_seconds": time.perf_counter() - started}
            ckpt_dir = checkpoint.save(session.staging_dir(), model, optimizer, scheduler,
                                       state, job.spec, {"y": y, "scores": scores})
        bad_epochs, score = _from_rank0([state["bad_epochs"], metrics.get(job.monitor, math.nan)], device, world)
        if not cfg.lr_by_epoch:
            _step_scheduler(scheduler, cfg, score)
        session.report(metrics, ckpt_dir)
        state["bad_epochs"], state["epoch"] = int(bad_epochs), epoch
    return state


def train_data_loader(dataset, sampler, batch: int, **loader_args: Any) -> DataLoader:
    """Batches of this rank's share of the epoch. ``drop_last`` (no tiny last batch for BatchNorm) is
    decided from the rank's share, not the whole set: a rank whose share fits one batch still trains."""
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=len(sampler) > batch, **loader_args)


def best_key(monitor: str) -> str:
    """The reported running best of ``monitor`` (``best_val_auroc``): a study's objective."""
    return f"best_{monitor}"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def _train_epoch(model, loader, criterion, optimizer, grad_clip, amp, device, world, after_step=None) -> float:
    model.train()
    total, count = torch.zeros((), device=device), 0
    for images, labels in loader:
        images = to_model_input(images.to(device, non_blocking=True))
        if device.type == "cuda":
            images = images.to(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with amp:
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.detach() * len(labels)
        count += len(labels)
        if after_step is not None:
            after_step()
    stats = torch.stack([total, torch.tensor(float(count), device=device)])
    if world > 1:
        dist.all_reduce(stats)
    return float(stats[0] / stats[1].clamp(min=1))


@torch.no_grad()
def _predict(model, loader, criterion, n_classes, amp, device) -> tuple[np.ndarray, np.ndarray, float]:
    model.eval()
    ys, scores, loss_sum = [], [], 0.0
    for images, labels in loader:
        images, labels = to_model_input(images.to(device)), labels.to(device)
        with amp:
            logits = model(images).float()
        loss_sum += float(criterion(logits, labels)) * len(labels)
        ys.append(labels.cpu().numpy())
        scores.append(scores_from_logits(logits, n_classes))
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
    s = np.concatenate(scores) if scores else np.zeros((0,) if n_classes == 2 else (0, n_classes))
    return y, s, loss_sum / max(len(y), 1)


# A worker killed mid-epoch (tests/e2e/faults/test_worker_kill.py) dies this long after its first step of
# the epoch: > 2 polls of Ray Train's controller (every 2 s), so the previous epoch's report is taken in
# first (a report still in flight when a worker dies is dropped with it).
FAULT_DELAY_S = 5.0


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")  # config.CHOICES: refused before any worker starts


def _step_scheduler(scheduler, cfg: TrainConfig, score: float) -> None:
    if cfg.schedule == "plateau":
        scheduler.step(-math.inf if math.isnan(score) else score)
    else:
        scheduler.step()


def _from_rank0(values: list[float], device: torch.device, world: int) -> list[float]:
    """Rank 0's validation outcome for every rank: all step the schedule and stop alike."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()
