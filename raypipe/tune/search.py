"""How a study searches: the Optuna sampler that proposes configs, the Tune scheduler that stops weak
trials, and the epoch budget that ends a study (``TuneOptions.searcher / scheduler / epoch_budget``,
``grace_period / reduction_factor / startup_trials``).

Both the sampler and ASHA read the trial's *running best* of the monitored metric (``best_val_auroc``,
reported by the loop every epoch): a trial whose metric peaks and then falls counts at its peak, the
value Optuna stores is the one the study ranks trials by, and ASHA compares trials on their best so
far rather than on one noisy epoch.
"""

from __future__ import annotations

import zlib

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from raypipe.tune.state import StudyState


def startup_trials(given: int | None, trials: int) -> int:
    """TPE models the results after this many trials (the base config is the first): a third of the
    budget, at least 2 and at most 10. Optuna's default of 10 would leave a small study random throughout;
    too few and TPE models noise."""
    return given if given is not None else max(2, min(10, trials // 3))


def grace_period(given: int | None, epochs: int, reduction_factor: int) -> int:
    """Epochs before ASHA may stop a trial. By default one rung, at ``epochs / reduction_factor``: a
    model trained from scratch has not separated from the others after an epoch or two, and a rung on
    noise stops good trials. Under 4 epochs there is nothing to save: no early stop."""
    if given is not None:
        return min(given, epochs)
    return epochs if epochs < 4 else max(2, epochs // reduction_factor)


def seed_for(seed: int, target: str, round_: int) -> int:
    """One seed stream per (seed, target, round): studies side by side must not draw the same start-up
    configs, and a warm-started round must not replay the last round's random samples."""
    return int(np.random.SeedSequence([seed, zlib.crc32(target.encode()), round_]).generate_state(1)[0])


def sampler(searcher: str, seed: int, n_startup: int):
    """``tpe`` or ``random`` (config.SEARCHERS, checked there), seeded."""
    from optuna.samplers import RandomSampler, TPESampler

    if searcher == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed, n_startup_trials=n_startup)


def scheduler(name: str, state: StudyState, metric: str, epochs: int, grace: int,
              reduction_factor: int) -> TrialScheduler:
    """``asha`` or ``fifo`` (config.SCHEDULERS, checked there)."""
    if name == "fifo":
        return FIFOScheduler()
    return PruneRecordingASHA(state, metric, epochs, grace, reduction_factor)


class PruneRecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last epoch: those are 'pruned'."""

    def __init__(self, state: StudyState, metric: str, epochs: int, grace: int, reduction_factor: int) -> None:
        super().__init__(time_attr="epoch", metric=metric, mode="max", max_t=epochs,
                         grace_period=grace, reduction_factor=reduction_factor)
        self.state = state

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("epoch", 0) < self._max_t:
            self.state.pruned.add(trial.trial_id)
        return decision


class EpochBudget(tune.Stopper):
    """Ends a study once its trials have reported ``budget`` epochs in total: equal-cost comparisons of
    searchers and schedulers, and a cap on a study's compute whatever ASHA prunes."""

    def __init__(self, budget: int) -> None:
        self.budget, self.seen = budget, set()

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "epoch" in result:  # a trial's final result repeats its last epoch: count (trial, epoch) once
            self.seen.add((trial_id, result["epoch"]))
        return len(self.seen) >= self.budget

    def stop_all(self) -> bool:
        return len(self.seen) >= self.budget
