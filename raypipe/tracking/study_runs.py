"""MLflow layout of a study: one parent run per study, one child run per Tune trial.

Written from the Tune driver by ``StudyLogger`` (a ``ray.tune.Callback``), not by Ray's
``MLflowLoggerCallback``, which cannot nest and makes a second run for a trial after a restore.
Every run is found by tags before one is created (``raypipe.study`` for the parent,
``raypipe.trial_id`` for a child), so a resumed study continues its runs instead of duplicating them.

Child run status: FINISHED (ran to its end or early-stopped itself), KILLED with tag
``raypipe.pruned=true`` (stopped by ASHA), FAILED (raised). ``reconcile`` at the end of a study
closes what a killed driver left RUNNING and deletes runs of trials Tune no longer knows.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from raypipe.tracking.runs import scrub, store_client
from raypipe.tune.state import StudyState, trial_number

TERMINAL = {RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)}
# Tune adds bookkeeping keys to every result; only the loop's own metrics go to MLflow.
SKIP_KEYS = set(AUTO_RESULT_KEYS) | {"epoch", "trial_id", "experiment_tag", "checkpoint_dir_name"}


def find_or_create_parent(client: MlflowClient, experiment_id: str, key: str, name: str,
                          tags: dict[str, str]) -> str:
    runs = client.search_runs([experiment_id], f"tags.`raypipe.study` = '{key}' and tags.`raypipe.kind` = 'study'",
                              max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    return client.create_run(experiment_id, run_name=name, tags={
        "raypipe.kind": "study", "raypipe.study": key, **tags}).info.run_id


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000)


class PhaseTimes:
    """Where a study's wall time goes, logged as metrics on its parent run (``metrics()``): Ray start, the
    wait for the first trial, and each trial's wall time beyond its epochs (process start, data loading,
    checkpoints, reporting). Driver-side, monotonic seconds; a resumed study counts this command only."""

    def __init__(self) -> None:
        self.run_started = time.monotonic()
        self.ray_start_s = math.nan
        self.first_trial_at = math.nan
        self.epoch_seconds = 0.0  # the loop's own epoch_seconds, summed over every reported epoch
        self.trial_seconds = 0.0  # trial wall time, start to end, summed
        self.trials = 0  # trials that ended in this command
        self._open: dict[str, float] = {}

    def trial_started(self, trial_id: str) -> None:
        now = time.monotonic()
        self._open.setdefault(trial_id, now)
        if math.isnan(self.first_trial_at):
            self.first_trial_at = now

    def trial_ended(self, trial_id: str) -> None:
        if (began := self._open.pop(trial_id, None)) is not None:
            self.trial_seconds += time.monotonic() - began
            self.trials += 1

    def metrics(self) -> dict[str, float]:
        out = {"time_ray_start_s": self.ray_start_s, "time_to_first_trial_s": self.first_trial_at - self.run_started,
               "time_in_epochs_s": self.epoch_seconds, "time_in_trials_s": self.trial_seconds,
               "time_study_s": time.monotonic() - self.run_started}
        if self.trials:
            out["time_overhead_per_trial_s"] = (self.trial_seconds - self.epoch_seconds) / self.trials
        return {k: round(v, 3) for k, v in out.items() if math.isfinite(v)}


class StudyLogger(tune.Callback):
    """Tune driver callback: child runs under ``state.parent_run_id`` with params, epochs, status."""

    def __init__(self, uri: str, experiment_id: str, state: StudyState) -> None:
        self.uri, self.experiment_id, self.state = uri, experiment_id, state
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self.timing = PhaseTimes()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment
        return {"uri": self.uri, "experiment_id": self.experiment_id, "state": self.state,
                "_client": None, "_runs": {}, "timing": PhaseTimes()}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = store_client(self.uri)
        return self._client

    def run_id_for(self, trial_id: str) -> str | None:
        """The child run of a trial id, if one exists (cached; looked up by tag after a restore)."""
        if trial_id not in self._runs:
            found = self.client.search_runs(
                [self.experiment_id],
                f"tags.`raypipe.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.state.parent_run_id}'",
                max_results=1)
            if not found:
                return None
            self._runs[trial_id] = found[0].info.run_id
        return self._runs[trial_id]

    def run_id(self, trial) -> str:
        """The child run of ``trial``: found by its trial id tag, created (with params) only once."""
        run_id = self.run_id_for(trial.trial_id)
        if run_id is None:
            parent = self.state.parent_run_id
            number = trial_number(trial)
            run_id = self.client.create_run(self.experiment_id, run_name=f"{self.state.target} #{number}", tags={
                "mlflow.parentRunId": parent, "raypipe.kind": "trial", "raypipe.study": self.state.key,
                "raypipe.target": self.state.target, "raypipe.trial_id": trial.trial_id,
                "raypipe.trial_number": str(number), "raypipe.monitor": self.state.monitor,
                "raypipe.base_config": str(self.state.is_base(trial.config)).lower()}).info.run_id
            params = [Param(k, str(v)) for k, v in sorted(trial.config.items())]
            if params:
                self.client.log_batch(run_id, params=params)
            self._runs[trial.trial_id] = run_id
        return run_id

    # ------------------------------------------------------------------ Tune callback hooks
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status="RUNNING")
        self.state.started_trial(trial.trial_id)
        self.timing.trial_started(trial.trial_id)

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = mlflow.utils.time.get_current_time_millis()
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if k not in SKIP_KEYS and isinstance(v, int | float) and not isinstance(v, bool)]
        if metrics:
            self.client.log_batch(self.run_id(trial), metrics=metrics)
        self.timing.epoch_seconds += float(result.get("epoch_seconds", 0.0))
        self.state.result(trial, float(result.get(self.state.monitor, math.nan)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, "KILLED" if self.state.was_pruned(trial.trial_id) else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._close(trial, "FAILED", _error_line(trial))

    def _close(self, trial, status: str, error: str | None = None) -> None:
        run_id = self.run_id(trial)
        pruned = status == "KILLED"
        tags = {"raypipe.pruned": str(pruned).lower()}
        if error:
            tags["raypipe.error"] = scrub(error)[:500]  # no paths: file names carry patient ids
        # best_<monitor> needs no writing here: the loop reports its running best every epoch.
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status)
        self.state.ended_trial(trial.trial_id, failed=status == "FAILED")
        self.timing.trial_ended(trial.trial_id)

    def load_existing(self) -> None:
        """A resumed study's earlier trials count in the progress table and the best so far."""
        for run in children(self.client, self.experiment_id, self.state.parent_run_id):
            trial_id = run.data.tags.get("raypipe.trial_id", "")
            self._runs[trial_id] = run.info.run_id
            status = run.info.status
            if status in TERMINAL:
                self.state.ended_trial(trial_id, failed=status == "FAILED")
                if run.data.tags.get("raypipe.pruned") == "true":
                    self.state.pruned.add(trial_id)
            score = run.data.metrics.get(f"best_{self.state.monitor}", math.nan)
            if not math.isnan(score) and score > self.state.best:
                self.state.best, self.state.best_trial = score, int(run.data.tags.get("raypipe.trial_number", 0))

    def counts(self) -> dict[str, int]:
        """Trials by outcome, from the child runs (they outlive any one driver process)."""
        out = {"trials_finished": 0, "trials_pruned": 0, "trials_failed": 0}
        for run in children(self.client, self.experiment_id, self.state.parent_run_id):
            key = {"FINISHED": "trials_finished", "KILLED": "trials_pruned", "FAILED": "trials_failed"}.get(
                run.info.status)
            if key:
                out[key] += 1
        return out

    def reconcile(self, trials: list) -> dict[str, Any]:
        """After ``fit``: every trial's run terminal and matching Tune; runs of unknown trials deleted.

        A driver killed between starting a trial and saving the experiment state leaves a child run
        for a trial id that the restored study never sees again: it would be a duplicate.
        """
        known = {t.trial_id: t for t in trials}
        deleted, orphans = 0, []
        for run in children(self.client, self.experiment_id, self.state.parent_run_id):
            trial_id = run.data.tags.get("raypipe.trial_id")
            trial = known.get(trial_id)
            if trial is None:
                self.client.set_tag(run.info.run_id, "raypipe.orphan", "trial lost when the driver stopped")
                if run.info.status not in TERMINAL:
                    self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.delete_run(run.info.run_id)
                deleted += 1
                orphans.append(trial_id)
            elif run.info.status not in TERMINAL:
                self._runs[trial_id] = run.info.run_id
                if trial.status == "ERROR":
                    self._close(trial, "FAILED", _error_line(trial))
                else:
                    self._close(trial, "KILLED" if self.state.was_pruned(trial_id) or trial.status != "TERMINATED"
                                else "FINISHED")
        return {"deleted": deleted, "orphans": orphans}


def _error_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "error"
    except OSError:
        return "error (see the Tune trial directory)"
