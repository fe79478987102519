"""A tuning run's settings (``TuneOptions``): the pipeline config's ``tune:`` block under the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raypipe.config import TunePlan, check_value
from raypipe.errors import InputError
from raypipe.tune import search


@dataclass
class TuneOptions:
    """A tuning run's settings: the pipeline config's ``tune:`` block (``TunePlan``) under the command
    line's values (``from_plan``), plus what only a command says (resources, resume, storage)."""

    trials: int = 8
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent: int | None = None  # per study; None = as many as the cluster's CPUs allow
    seed: int = 0
    resume: bool = False
    verbose: bool = False
    storage: str | None = None  # --storage / $RAYPIPE_STORAGE; None = the run dir
    searcher: str = "tpe"  # config.SEARCHERS
    scheduler: str = "asha"  # config.SCHEDULERS
    epoch_budget: int | None = None  # trial-epochs per study (EpochBudget); None = trials x epochs at most
    grace_period: int | None = None  # ASHA; None = search.grace_period's default
    reduction_factor: int = 2  # ASHA
    startup_trials: int | None = None  # TPE; None = search.startup_trials's default

    def __post_init__(self) -> None:
        for name in ("trials", "max_concurrent", "seed", "searcher", "scheduler", "epoch_budget", "grace_period",
                     "reduction_factor", "startup_trials"):
            if getattr(self, name) is not None and (why := check_value(name, getattr(self, name))):
                raise InputError("command line", why, field=f"--{name.replace('_', '-')}")

    @classmethod
    def from_plan(cls, plan: TunePlan | None, **given: Any) -> TuneOptions:
        """The ``tune:`` block's values, each replaced by the command line's where it gave one (not None)."""
        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(TunePlan)}
        values = {name: getattr(plan or TunePlan(), name) for name in shared}
        return cls(**(values | {k: v for k, v in given.items() if v is not None}))

    def budget(self, epochs: int) -> dict[str, int]:
        """The resolved search budget of a study whose trials run up to ``epochs`` epochs."""
        return {"startup_trials": search.startup_trials(self.startup_trials, self.trials),
                "grace_period": search.grace_period(self.grace_period, epochs, self.reduction_factor),
                "reduction_factor": self.reduction_factor, "max_t": epochs}
