"""One training job end to end: data -> job -> fit -> MLflow run with plots and best checkpoint.

``make_job`` and ``log_outcome`` are shared with tuning, which runs many jobs per target.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from raypipe import fsio
from raypipe import spec as run_spec
from raypipe.config import TrainConfig, to_dict
from raypipe.data.prepare import PreparedData, Progress, prepare
from raypipe.data.targets import Target, parse_target
from raypipe.errors import InputError, bad_input
from raypipe.models.backbones import model_spec
from raypipe.ray_cluster import check_gpus
from raypipe.spec import RunSpec
from raypipe.tracking import plots
from raypipe.tracking.runs import EpochLogger, closing_run, experiment_id, git_sha, store_client, tracking_uri
from raypipe.train import checkpoint, launch
from raypipe.train.loop import TrainJob
from raypipe.train.metrics import confusion, default_monitor, evaluate, predictions


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    tracking_uri: str
    target: str
    best_epoch: int
    epochs_run: int
    best_metrics: dict[str, float]
    checkpoint: Path


def check_choices(cfg: TrainConfig, origin: str = "config") -> None:
    """Named choices are checked before any worker starts: a typo is exit 2, not a worker traceback."""
    import timm

    from raypipe.config import CHOICES, check_choice

    for key in sorted(CHOICES.keys() & {f.name for f in dataclasses.fields(cfg)}):
        if why := check_choice(key, getattr(cfg, key)):
            raise InputError(origin, why, field=key)
    if not timm.is_model(cfg.backbone):
        raise InputError(origin, f"unknown backbone {cfg.backbone!r} (any timm model name)", field="backbone")
    if cfg.pretrained:  # a missing file or uncached, unreachable hub weights: before any worker starts
        from raypipe.models.backbones import resolve_pretrained

        resolve_pretrained(cfg.pretrained)


def make_job(prepared: PreparedData, target: Target, cfg: TrainConfig) -> TrainJob:
    train_rows, train_y = prepared.select(target, "train")
    val_rows, val_y = prepared.select(target, "val")
    where = f"target {target.name}"
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise InputError(where, f"no images in the {'train' if len(train_rows) == 0 else 'val'} split")
    n_classes = target.n_classes(prepared.scheme)
    names = target.class_names(prepared.scheme)
    monitor = default_monitor(n_classes) if cfg.monitor == "auto" else cfg.monitor
    spec = model_spec(cfg, n_classes) | {"target": target.name, "class_names": names, "masking": cfg.masking,
                                         "normalise": {"mean": 0.5, "std": 0.25}, "age_cuts": list(prepared.scheme.cuts)}
    return TrainJob(cfg, target.name, names, monitor, prepared.cache, train_rows, train_y, val_rows, val_y, spec)


def log_outcome(client: MlflowClient, run_id: str, job: TrainJob, best_dir: Path) -> dict[str, float]:
    """Log the best epoch's plots and checkpoint; return its validation metrics."""
    preds = checkpoint.read_predictions(best_dir)
    y, scores = preds["y"], preds["scores"]
    metrics = evaluate(y, scores, job.n_classes)
    threshold = metrics.get("threshold", 0.5)
    slug = job.target.replace("/", "-")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cm = confusion(y, predictions(scores, job.n_classes, threshold), job.n_classes)
        plots.confusion_png(cm, job.class_names, out / "confusion_matrix.png", f"{job.target} (validation)")
        if job.n_classes == 2:
            plots.roc_png(y, scores, out / "roc.png", f"{job.target} (validation)", threshold)
        for png in out.glob("*.png"):
            client.log_artifact(run_id, str(png), "plots")
    for name in (checkpoint.MODEL_FILE, checkpoint.SPEC_FILE, checkpoint.STATE_FILE):
        client.log_artifact(run_id, str(best_dir / name), f"checkpoint-{slug}")
    client.log_dict(run_id, {"confusion_matrix": cm.tolist(), "class_names": job.class_names},
                    "confusion_matrix.json")
    return {f"best_val_{k}": float(v) for k, v in metrics.items()}


def train_target(data: Path, spec: RunSpec, run_dir: Path, source_kind: str = "auto",
                 progress: Progress | None = None) -> TrainOutcome:
    """``raypipe train``: prepare the data, train one target, record everything (and ``spec``) in MLflow."""
    run_dir = Path(run_dir)
    cfg, target_spec, experiment = spec.train, spec.target, spec.experiment
    check_choices(cfg)
    check_gpus(spec.resources.gpus_per_trial)
    prepared = prepare(data, cfg, run_dir, source_kind, progress)
    with bad_input("--target"):
        target = parse_target(target_spec, prepared.scheme)
    job = make_job(prepared, target, cfg)

    uri = tracking_uri(run_dir)
    client = store_client(uri)
    exp_id = experiment_id(client, experiment, run_dir)
    run = client.create_run(exp_id, run_name=f"train {target.name}", tags={
        "raypipe.kind": "train", "raypipe.target": target.name, "raypipe.data_hash": prepared.data_hash,
        "raypipe.split_hash": prepared.split_hash, "raypipe.git_sha": git_sha(), "raypipe.monitor": job.monitor,
        "mlflow.source.name": "raypipe train"})
    run_id = run.info.run_id
    with closing_run(client, run_id):
        run_spec.log(client, run_id, spec)
        out_dir = run_dir / "train" / run_id
        fsio.write_yaml(out_dir / "config.yaml", {"target": target.name, **to_dict(cfg)})
        client.log_artifact(run_id, str(out_dir / "config.yaml"))
        result = launch.fit(job, out_dir, run_dir / "ray", name=f"train-{run_id}", on_report=EpochLogger(uri, run_id),
                            cpus_per_worker=spec.resources.cpus_per_worker,
                            gpus_per_worker=spec.resources.gpus_per_trial / spec.resources.workers_per_trial)
        best = log_outcome(client, run_id, job, result.checkpoint)
        now = mlflow.utils.time.get_current_time_millis()
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, result.best_epoch) for k, v in best.items()])
        client.set_tag(run_id, "raypipe.best_epoch", str(result.best_epoch))
    return TrainOutcome(run_id, exp_id, uri, target.name, result.best_epoch, result.epochs_run, best,
                        result.checkpoint)
