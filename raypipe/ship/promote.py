"""Promotion: a study's winner, retrained on train+val, tested, registered; `champion` only if it wins.

``promote`` (``raypipe promote --target T``):
  1. the latest finished study of T in the experiment -> its best trial's config, the epoch where that
     trial peaked and the learning rate of each epoch up to it: the recipe, replayed exactly (the
     trial's schedule, stopped at its peak; see ``TrainConfig.stop_epoch / lr_by_epoch``);
  2. cross-fit the recipe over train+val in K patient-grouped folds: out-of-fold scores give the
     selection figure with its CI and the operating threshold (ship/selection.py);
  3. retrain the recipe on all of train+val (the one loop; Ray Train for W > 1): the shipped model;
  4. evaluate it once on the fixed test set, to report (patient-level bootstrap CIs, evaluate/clinical.py);
     binary models are also audited for text-marker shortcuts (``shortcut_audit.json``, evaluate/shortcuts.py);
  5. log it as an MLflow pyfunc defined in code (ship/pyfunc_model.py: safetensors + JSON spec, no
     pickle) and register it as a new version of ``<experiment>.<target>``;
  6. under a lock: alias ``champion`` only if its out-of-fold figure clears chance and beats the current
     champion's on the same images (paired patient bootstrap, lower bound above ``margin``), else
     ``challenger`` with the reason tagged. The test set never decides.
Step 6 and ``rollback`` (``champion`` back to the version it replaced) live in ship/aliases.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from raypipe import faults
from raypipe import spec as run_spec
from raypipe.config import RESOURCE_KEYS, PromotePlan, Resources, TrainConfig, from_dict
from raypipe.data.dataset import CachedImageDataset, to_model_input
from raypipe.data.prepare import prepare
from raypipe.data.targets import parse_target
from raypipe.errors import InputError
from raypipe.evaluate import shortcuts
from raypipe.evaluate.clinical import evaluate_test
from raypipe.models.backbones import build_model_from_spec
from raypipe.ray_cluster import check_gpus
from raypipe.ship import packaging, selection
from raypipe.ship.aliases import Promotion, _lock, decide
from raypipe.spec import compose
from raypipe.tracking.runs import (
    closing_run,
    experiment_id,
    fail_run,
    git_sha,
    process_uris,
    store_client,
    tracking_uri,
)
from raypipe.train import checkpoint, launch
from raypipe.train.job import make_job
from raypipe.train.metrics import scores_from_logits


def summary(p: Promotion) -> str:
    """One line a person reads after a promotion: what decided, what the test says, the outcome."""
    return (f"{p.model_name} v{p.version}: {p.metric} {p.value:.3f} (95% CI {p.ci95[0]:.3f}-{p.ci95[1]:.3f}), "
            f"test {p.metric.removeprefix('oof_')} {p.test_value:.3f} ({p.test_ci95[0]:.3f}-{p.test_ci95[1]:.3f}, "
            f"reported only) -> {p.alias}: {p.reason}"
            + (" [SHORTCUT FLAG: its test AUROC moves when the text masks are shuffled; see shortcut_audit.json]"
               if p.shortcut_flag else ""))


def model_name(experiment: str, target: str) -> str:
    return f"{experiment}.{target.replace('/', '-')}"


# ------------------------------------------------------------------------------------- the winner
def best_of_study(client: MlflowClient, exp_id: str, target: str) -> dict[str, Any]:
    """The latest finished study of ``target``: best trial's config, peak epoch, threshold, ids."""
    studies = client.search_runs(
        [exp_id], f"tags.`raypipe.kind` = 'study' and tags.`raypipe.target` = '{target}' "
                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    if not studies:
        raise InputError(f"target {target}", "no finished study to promote from: run `raypipe tune` first")
    study = studies[0]
    with tempfile.TemporaryDirectory() as tmp:
        best = json.loads(Path(client.download_artifacts(study.info.run_id, "best_trial.json", tmp)).read_text())
    monitor = study.data.tags["raypipe.monitor"]
    history = client.get_metric_history(best["run_id"], monitor)
    peak = max(history, key=lambda m: (m.value if not math.isnan(m.value) else -math.inf, -m.step))
    lr = {m.step: m.value for m in client.get_metric_history(best["run_id"], "lr")}
    return {"study_run_id": study.info.run_id, "study": study.data.tags["raypipe.study"], "monitor": monitor,
            "trial_run_id": best["run_id"], "trial_id": best["trial_id"], "config": best["config"],
            "epochs": int(peak.step), "lr_by_epoch": [lr[e] for e in range(1, int(peak.step) + 1) if e in lr],
            "split_hash": study.data.tags["raypipe.split_hash"],
            # what the study's trials ran on: a retrain asks for the same unless told otherwise
            "resources": from_dict(Resources, {k: float(v) if "." in v else int(v) for k, v in study.data.params.items()
                                               if k in RESOURCE_KEYS}, f"study {study.data.tags['raypipe.study']}")}


def replay_config(best: dict[str, Any]) -> TrainConfig:
    """The trial's recipe for a retrain: its config, its schedule's length (cosine T_max) and learning
    rates epoch by epoch (a plateau schedule's steps too), stopped at the epoch where it peaked. No early
    stopping: a retrain on train+val has no held-out data to stop on."""
    cfg = from_dict(TrainConfig, best["config"], f"study {best['study']} best_trial.json")
    peak = max(1, best["epochs"])
    lrs = best.get("lr_by_epoch") or []
    return dataclasses.replace(cfg, stop_epoch=peak, patience=peak + 1,
                               lr_by_epoch=lrs if len(lrs) == peak else None)


# ----------------------------------------------------------------------------------- promote
def promote(data: Path, target_spec: str, run_dir: Path, experiment: str, margin: float = 0.0,
            source: str = "auto", n_boot: int = 1000, folds: int = 3, shortcut_tolerance: float = 0.02,
            resources: Resources | None = None) -> Promotion:
    """``resources``: what the cross-fit and the retrain ask for (None = what the study's trials had)."""
    run_dir = Path(run_dir)
    uri = tracking_uri(run_dir)
    client = store_client(uri)
    exp_id = experiment_id(client, experiment, run_dir)
    best = best_of_study(client, exp_id, target_spec)
    res = resources or best["resources"]
    check_gpus(res.gpus_per_trial)
    spec = compose(experiment, target_spec, replay_config(best), resources=res,
                   promote=PromotePlan(margin, n_boot, folds, shortcut_tolerance), origin=f"study {best['study']}")
    cfg = spec.train
    fit_resources = {"cpus_per_worker": res.cpus_per_worker, "gpus_per_worker": res.gpus_per_trial / res.workers_per_trial}
    prepared = prepare(data, cfg, run_dir, source)
    if prepared.split_hash != best["split_hash"]:
        raise InputError(f"target {target_spec}", "the data split changed since the study; tune again")
    target = parse_target(target_spec, prepared.scheme)
    job = make_job(prepared, target, cfg)
    val_rows, val_y = prepared.select(target, "val")
    trval_rows, trval_y = np.concatenate([job.train_rows, val_rows]), np.concatenate([job.train_labels, val_y])
    job = dataclasses.replace(job, train_rows=trval_rows, train_labels=trval_y)
    # grouping only, never logged: integer codes of the patients of train+val, in row order
    groups = selection.patient_codes(pd.concat([prepared.frame(target, "train"), prepared.frame(target, "val")])
                                     ["patient_id"].to_numpy())
    test_rows, test_y = prepared.select(target, "test")
    if len(test_rows) == 0:
        raise InputError(f"target {target.name}", "no images in the fixed test set")
    test_rows_frame = prepared.frame(target, "test")
    patients = test_rows_frame["patient_id"].to_numpy()  # grouping only: never logged
    # Subgroups reported like a clinical study: one-year age bins and sex (aggregates only). Not for
    # the age model: within one age bin its true class is constant, so macro-F1 there means nothing.
    # A source without ages (MURA) has no age bins.
    ages = test_rows_frame["age"].to_numpy(dtype=float)
    subgroup_labels = {"sex": test_rows_frame["sex"].astype(str).to_numpy()} if job.n_classes == 2 else {}
    if subgroup_labels and np.isfinite(ages).all():
        subgroup_labels["age_bin"] = np.floor(ages).astype(int)

    _close_dead_promotions(client, exp_id, target.name)
    run = client.create_run(exp_id, run_name=f"promote {target.name}", tags={
        "raypipe.kind": "promote", "raypipe.target": target.name, "raypipe.study": best["study"],
        "raypipe.host": socket.gethostname(), "raypipe.pid": str(os.getpid()),
        "raypipe.trial_id": best["trial_id"], "raypipe.trial_run_id": best["trial_run_id"],
        "raypipe.data_hash": prepared.data_hash, "raypipe.split_hash": prepared.split_hash,
        "raypipe.git_sha": git_sha(), "mlflow.source.name": "raypipe promote"})
    run_id = run.info.run_id
    with closing_run(client, run_id):
        out_dir = run_dir / "promote" / run_id
        run_spec.log(client, run_id, spec)  # what to re-run this promotion from MLflow alone
        evidence = _cross_fit(job, groups, folds, out_dir, run_dir, run_id, n_boot, fit_resources)
        result = launch.fit(job, out_dir / "final", run_dir / "ray", name=f"promote-{run_id}", keep="last",
                            **fit_resources)
        client.log_metric(run_id, "retrain_world_size", result.world_size)  # as the loop saw it
        faults.point("promote:trained")
        model = _load(result.checkpoint)
        scores = _predict(model, job.cache, test_rows, job.n_classes)
        threshold = evidence.threshold()
        threshold_source = ("Youden point of the out-of-fold scores (the recipe cross-fitted in "
                            f"{evidence.folds} patient-grouped folds of train+val)") if job.n_classes == 2 else "argmax"
        report = evaluate_test(test_y, scores, patients, job.n_classes, threshold, n_boot=n_boot, seed=cfg.seed,
                               groups=subgroup_labels, prevalence=float(np.mean(trval_y)))
        metric = best["monitor"].removeprefix("val_")
        report |= {"class_names": job.class_names, "threshold_source": threshold_source,
                   "selection": selection.describe(evidence),
                   "note": "The test set is evaluated once per version, to report; the champion is decided on "
                           "out-of-fold scores of train+val, never on test."}
        if job.n_classes == 2:
            report["gallery"] = _gallery(client, run_id, model, cfg, test_rows_frame, test_y, scores, threshold)
        client.log_dict(run_id, report, "test_evaluation.json")
        audit = None
        if job.n_classes == 2:  # does the champion read text markers? (evaluate/shortcuts.py)
            audit = shortcuts.audit_model(model, cfg, data, prepared, target, test_rows_frame, test_y, scores,
                                          patients, threshold, shortcut_tolerance)
            client.log_dict(run_id, audit, "shortcut_audit.json")
            client.set_tag(run_id, "raypipe.shortcut_flag", str(audit["flag"]).lower())
        with tempfile.TemporaryDirectory() as tmp:  # labels and scores only: no identifiers
            np.savez(Path(tmp) / "test_predictions.npz", y=test_y, scores=scores)
            client.log_artifact(run_id, str(Path(tmp) / "test_predictions.npz"))
            client.log_artifact(run_id, str(evidence.save(Path(tmp))), "selection")
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(f"test_{k}", v, 0, 0)
                                          for k, v in report["metrics"].items() if not math.isnan(v)]
                         + [mlflow.entities.Metric(f"oof_{metric}", evidence.value, 0, 0)])
        version = _register(uri, run_id, result.checkpoint, threshold, model_name(experiment, target.name))
        faults.point("promote:registered")
        tags = {"study": best["study"], "trial_id": best["trial_id"], "data_hash": prepared.data_hash,
                "split_hash": prepared.split_hash, "git_sha": git_sha(), "metric": metric,
                f"test_{metric}": repr(report["metrics"][metric]),
                f"test_{metric}_ci95": json.dumps(report["ci95"][metric]), "threshold": repr(threshold),
                "threshold_source": threshold_source[:250], "raypipe.decided_on": "out-of-fold",
                "raypipe.selection_metric": f"oof_{evidence.metric}",
                "raypipe.selection_value": repr(evidence.value),
                "raypipe.selection_ci95": json.dumps(list(evidence.ci95))}
        if audit is not None:
            tags["raypipe.shortcut_flag"] = str(audit["flag"]).lower()
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
        with _lock(run_dir, version.name):
            promotion = decide(client, version.name, version.version, evidence, prepared.split_hash, margin,
                               n_boot=n_boot)
        promotion.test_value, promotion.test_ci95 = report["metrics"][metric], tuple(report["ci95"][metric])
        promotion.shortcut_flag = None if audit is None else audit["flag"]
        client.set_tag(run_id, "raypipe.alias", promotion.alias)
        client.set_tag(run_id, "raypipe.reason", promotion.reason)
    return promotion


def _cross_fit(job, groups: np.ndarray, folds: int, out_dir: Path, run_dir: Path, run_id: str,
               n_boot: int, fit_resources: dict[str, float]) -> selection.Selection:
    """Out-of-fold scores of the recipe over train+val (``job.train_rows``), as selection evidence."""
    rows, y = job.train_rows, job.train_labels

    def score_fold(fold: int, train_idx: np.ndarray, held_idx: np.ndarray) -> np.ndarray:
        fold_job = dataclasses.replace(job, train_rows=rows[train_idx], train_labels=y[train_idx],
                                       val_rows=rows[held_idx], val_labels=y[held_idx])
        result = launch.fit(fold_job, out_dir / "folds" / str(fold), run_dir / "ray",
                            name=f"promote-{run_id}-fold{fold}", keep="last", **fit_resources)
        return checkpoint.read_predictions(result.checkpoint)["scores"]  # the held-out rows, in order

    oof = selection.cross_fit(rows, y, groups, folds, job.cfg.seed, score_fold)
    return selection.evidence(y, oof, groups, folds, n_boot, job.cfg.seed)


def _close_dead_promotions(client: MlflowClient, exp_id: str, target: str) -> None:
    """Mark FAILED the RUNNING promote runs of ``target`` whose process on this host is gone (killed)."""
    runs = client.search_runs([exp_id], f"tags.`raypipe.kind` = 'promote' and tags.`raypipe.target` = '{target}' "
                                        "and attributes.status = 'RUNNING'")
    for run in runs:
        tags = run.data.tags
        if tags.get("raypipe.host") != socket.gethostname() or not tags.get("raypipe.pid", "").isdigit():
            continue  # another machine's promotion: only it knows whether it is alive
        try:
            os.kill(int(tags["raypipe.pid"]), 0)
        except ProcessLookupError:
            fail_run(client, run.info.run_id, "the promoting process died before it finished")
        except PermissionError:
            pass  # alive, another user's


def _load(ckpt_dir: Path) -> torch.nn.Module:
    model = build_model_from_spec(json.loads((Path(ckpt_dir) / checkpoint.SPEC_FILE).read_text()))
    checkpoint.load_weights(ckpt_dir, model)
    return model.eval()


def _gallery(client: MlflowClient, run_id: str, model: torch.nn.Module, cfg: TrainConfig, frame, y: np.ndarray,
             scores: np.ndarray, threshold: float, per_cell: int = 2) -> list[dict[str, Any]]:
    """Grad-CAM overlays of the most confident true/false positives/negatives, logged as artifacts.

    Artifact names say only the cell and rank (``gradcam/false_negative_1.png``): file names of the
    data set can carry patient identifiers.
    """
    from raypipe.explain import gradcam

    predicted = scores >= threshold
    # cell -> (members, sort key): the most confident calls first (highest score for a positive call)
    cells = {"true_positive": ((y == 1) & predicted, -scores), "false_positive": ((y == 0) & predicted, -scores),
             "false_negative": ((y == 1) & ~predicted, scores), "true_negative": ((y == 0) & ~predicted, scores)}
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell, (mask, key) in cells.items():
            idx = np.flatnonzero(mask)
            idx = idx[np.argsort(key[idx], kind="stable")]
            for rank, i in enumerate(idx[:per_cell], start=1):
                row = frame.iloc[int(i)]
                png = gradcam.save_png(gradcam.overlay(model, row["path"], cfg.image_size, cfg.masking,
                                                       row["text_boxes"] or "", max_side=384),
                                       Path(tmp) / f"{cell}_{rank}.png")
                client.log_artifact(run_id, str(png), "gradcam")
                entries.append({"cell": cell, "rank": rank, "artifact": f"gradcam/{png.name}",
                                "probability": float(scores[i]), "label": int(y[i])})
    return entries


def _predict(model: torch.nn.Module, cache, rows: np.ndarray, n_classes: int) -> np.ndarray:
    dataset = CachedImageDataset(cache, rows, np.zeros(len(rows), dtype=np.int64), 0.0, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    with torch.no_grad():
        logits = torch.cat([model(to_model_input(images)).float() for images, _ in loader])
    return scores_from_logits(logits, n_classes)


def _register(uri: str, run_id: str, ckpt_dir: Path, threshold: float, name: str):
    """Log the pyfunc (raypipe's code + safetensors + spec) in the promote run and register a new version."""
    spec = json.loads((Path(ckpt_dir) / checkpoint.SPEC_FILE).read_text()) | {"threshold": threshold}
    with process_uris(uri), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no input_example": paths to images on this machine
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        mlflow.start_run(run_id=run_id)
        try:
            # raypipe's code travels in the model (ship/packaging.py): its requirements never name raypipe
            info = mlflow.pyfunc.log_model(
                name="model", registered_model_name=name,
                **packaging.pyfunc_arguments(Path(ckpt_dir) / checkpoint.MODEL_FILE, spec_path))
        finally:
            # Not a `with` block: leaving one marks the run FINISHED, and the promotion is not finished
            # until the alias is decided (a kill in between must leave the run RUNNING, then FAILED).
            mlflow.end_run(status="RUNNING")
    return store_client(uri).get_model_version(name, str(info.registered_model_version))
