"""A tuning run's settings (``TuneOptions``): the pipeline config's ``tune:`` block under the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import RESOURCE_KEYS, Resources, TunePlan, check_value, resources_for
from raypipe.errors import InputError
from raypipe.tune import search


@dataclass
class TuneOptions:
    """A tuning run's settings: the pipeline config's ``tune:`` block (``TunePlan``) under the command
    line's values (``from_plan``), plus what only a command says (resume, storage). Resources: the config's
    ``resources:`` block (``resources``) under the command line's (``workers_per_trial``... None = not
    given), per target with ``tune.per_target`` in between (``resources_for``)."""

    trials: int = 8
    workers_per_trial: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_worker: float | None = None
    resources: Resources = field(default_factory=Resources)
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
                     "reduction_factor", "startup_trials", *RESOURCE_KEYS):
            if getattr(self, name) is not None and (why := check_value(name, getattr(self, name))):
                raise InputError("command line", why, field=f"--{name.replace('_', '-')}")

    @classmethod
    def from_plan(cls, plan: TunePlan | None, resources: Resources | None = None, **given: Any) -> TuneOptions:
        """The ``tune:`` block's values, each replaced by the command line's where it gave one (not None)."""
        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(TunePlan)}
        values = {name: getattr(plan or TunePlan(), name) for name in shared}
        return cls(**(values | {k: v for k, v in given.items() if v is not None}), resources=resources or Resources())

    def resources_for(self, per_target: dict[str, Any], target: str) -> Resources:
        """What each trial of ``target`` asks for: ``resources:``, ``tune.per_target``, the command line."""
        return resources_for(self.resources, per_target, target, {k: getattr(self, k) for k in RESOURCE_KEYS})

    def spec(self) -> dict[str, Any]:
        """What decides a study's search (a run spec's ``tune``; resources and storage are its own fields)."""
        return {k: getattr(self, k) for k in ("trials", "seed", "searcher", "scheduler", "epoch_budget", "grace_period",
                                              "reduction_factor", "startup_trials", "max_concurrent")}

    def budget(self, epochs: int) -> dict[str, int]:
        """The resolved search budget of a study whose trials run up to ``epochs`` epochs."""
        return {"startup_trials": search.startup_trials(self.startup_trials, self.trials),
                "grace_period": search.grace_period(self.grace_period, epochs, self.reduction_factor),
                "reduction_factor": self.reduction_factor, "max_t": epochs}
