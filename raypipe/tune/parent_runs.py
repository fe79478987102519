"""A study's MLflow parent run: its run spec and search settings when it starts; its best trial,
counts and plots when it ends (``finalize``). Trials' child runs: tracking/study_runs.py."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from raypipe import spec as run_spec
from raypipe.config import to_dict
from raypipe.tracking.runs import git_sha
from raypipe.tracking.study_runs import StudyLogger, find_or_create_parent
from raypipe.train import checkpoint
from raypipe.tune import optuna_store, search
from raypipe.tune.options import TuneOptions
from raypipe.tune.plan import Study
from raypipe.tune.state import trial_number


@dataclass
class StudyOutcome:
    target: str
    monitor: str
    parent_run_id: str
    best_value: float
    best_trial: int | None
    best_run_id: str | None
    best_params: dict[str, Any]
    base_value: float  # trial 0, the study's own config unchanged (nan: not run, or its choices are not searched)
    finished: int
    pruned: int
    failed: int
    seconds: float


def parent_run(client: MlflowClient, exp_id: str, study: Study, options: TuneOptions) -> str:
    tags = {"raypipe.target": study.target.name, "raypipe.monitor": study.job.monitor,
            "raypipe.data_hash": study.data_hash, "raypipe.split_hash": study.split_hash,
            "raypipe.space": str(study.space.path), "raypipe.space_sha256": study.space.sha256,
            "raypipe.optuna_study": study.optuna_name, "raypipe.optuna_storage": str(study.optuna_storage),
            "raypipe.tune_path": study.path,
            "raypipe.git_sha": git_sha(), "mlflow.source.name": "raypipe tune"}
    existing = client.search_runs([exp_id], f"tags.`raypipe.study` = '{study.key}'", max_results=1)
    run_id = find_or_create_parent(client, exp_id, study.key, f"{study.target.name} study (round {study.round})", tags)
    if not existing:  # params are immutable: only a new parent gets them
        params = run_spec.params(study.spec) | {"space": study.space.path.name,
                                                "trials": str(options.trials), "tune_seed": str(options.seed),
                                           "searcher": options.searcher, "scheduler": options.scheduler,
                                           "epoch_budget": str(options.epoch_budget or "none"),
                                           "tune_seed_stream": str(search.seed_for(options.seed, study.target.name,
                                                                                   study.round))}
        params |= {k: str(v) for k, v in options.budget(study.cfg.epochs).items()}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        run_spec.log(client, run_id, study.spec, with_params=False)
    return run_id


def finalize(client: MlflowClient, study: Study, logger: StudyLogger) -> StudyOutcome:
    """Close every child run, then write the study's best trial, counts and plots to the parent run."""
    state, monitor, run_id = study.state, study.job.monitor, study.state.parent_run_id
    trials = _tune_trials(study)
    orphans = logger.reconcile(trials)["orphans"]
    # Staging folders the per-trial sweep (tune/trial.py) missed: a trial that wrote again before its process
    # died, or one a killed driver started and the restored study never knew (an orphan)
    for trial_id in [t.trial_id for t in trials] + orphans:
        checkpoint.remove_staging(trial_id)
    optuna_store.close_stale_trials(study)
    best_value, best = -math.inf, None
    for trial in trials:
        value = float(trial.metric_analysis.get(monitor, {}).get("max", math.nan))
        if not math.isnan(value) and value > best_value:
            best_value, best = value, trial
    best_params = dict(best.config) if best else {}
    base_value = next((float(t.metric_analysis.get(monitor, {}).get("max", math.nan)) for t in trials
                       if state.is_base(t.config)), math.nan)
    counts = logger.counts()
    now = mlflow.utils.time.get_current_time_millis()
    metrics = [Metric(k, float(v), now, 0) for k, v in counts.items() | logger.timing.metrics().items()]
    best_run_id = None
    if not math.isnan(base_value):
        metrics.append(Metric(f"base_{monitor}", base_value, now, 0))
    if best:
        best_run_id = logger.run_id_for(best.trial_id)
        metrics.append(Metric(f"best_{monitor}", best_value, now, 0))
        tags = {"raypipe.best_trial_id": best.trial_id, "raypipe.best_trial_number": str(trial_number(best)),
                "raypipe.best_run_id": best_run_id or ""} | {f"best.{k}": str(v) for k, v in best_params.items()}
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.log_dict(run_id, {"trial_id": best.trial_id, "trial_number": trial_number(best), monitor: best_value,
                                 "run_id": best_run_id, "params": best_params,
                                 "config": to_dict(dataclasses.replace(study.cfg, **best_params))}, "best_trial.json")
    client.log_batch(run_id, metrics=metrics)
    optuna_store.log_study_plots(client, run_id, study)
    client.set_terminated(run_id, "FINISHED" if best else "FAILED")
    state.ended = time.monotonic()
    return StudyOutcome(study.target.name, monitor, run_id, best_value,
                        trial_number(best) if best else None, best_run_id, best_params, base_value,
                        counts["trials_finished"], counts["trials_pruned"], counts["trials_failed"],
                        state.ended - state.started)


def _tune_trials(study: Study) -> list:
    """Tune's trial objects of this round, read back from its saved experiment state."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(study.path).trials
