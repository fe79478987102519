"""How a study searches: the Optuna sampler that proposes configs, the Tune scheduler that stops weak
trials, and the epoch budget that ends a study (``TuneOptions.searcher / scheduler / epoch_budget``)."""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from raypipe.tune.state import StudyState


def sampler(searcher: str, seed: int, trials: int):
    """``tpe`` or ``random`` (config.SEARCHERS), seeded."""
    from optuna.samplers import RandomSampler, TPESampler

    if searcher == "random":
        return RandomSampler(seed=seed)
    # Few start-up trials: the default 10 would leave a small study on random search throughout.
    return TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 2)))


def scheduler(name: str, state: StudyState, monitor: str, epochs: int) -> TrialScheduler:
    """``asha`` or ``fifo`` (config.SCHEDULERS)."""
    return FIFOScheduler() if name == "fifo" else PruneRecordingASHA(state, monitor, epochs)


class PruneRecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last epoch: those are 'pruned'."""

    def __init__(self, state: StudyState, monitor: str, epochs: int) -> None:
        super().__init__(time_attr="epoch", metric=monitor, mode="max", max_t=epochs,
                         grace_period=max(1, epochs // 3), reduction_factor=2)
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
