"""Searcher, scheduler and epoch-budget options of a study: built as asked, refused when unknown."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.samplers import RandomSampler, TPESampler

from raypipe.config import Preset, from_dict
from raypipe.errors import InputError
from raypipe.tune.search import EpochBudget
from raypipe.tune.study import TuneOptions, _sampler


def test_epoch_budget_counts_each_trial_epoch_once_and_then_stops_everything() -> None:
    stop = EpochBudget(3)
    assert not stop("a", {"epoch": 1}) and not stop("b", {"epoch": 1})
    assert not stop("a", {"epoch": 1})  # a trial's final result repeats its last epoch: not counted again
    assert not stop.stop_all()
    assert not stop("a", {"other": 0})  # a result without an epoch counts for nothing
    assert stop("b", {"epoch": 2}) and stop.stop_all()


@pytest.mark.parametrize(("searcher", "kind"), [("tpe", TPESampler), ("random", RandomSampler)])
def test_sampler_follows_the_searcher_and_a_new_seed_per_round(searcher, kind) -> None:
    options = TuneOptions(trials=8, seed=5, searcher=searcher)
    samplers = [_sampler(options, SimpleNamespace(round=r)) for r in (1, 2, 1)]
    assert isinstance(samplers[0], kind)
    draws = [optuna.create_study(sampler=s).ask().suggest_float("lr", 0, 1) for s in samplers]
    assert draws[0] == draws[2]  # seeded: the same round draws the same
    assert draws[0] != draws[1]  # round 2 does not replay round 1's random samples


@pytest.mark.parametrize(("name", "value"), [("searcher", "grid"), ("scheduler", "hyperband"), ("epoch_budget", 0)])
def test_unknown_searcher_scheduler_or_budget_is_bad_input(name, value) -> None:
    with pytest.raises(InputError, match=name.replace("_", "-")):
        TuneOptions(**{name: value})
    with pytest.raises(InputError, match=f"tune.{name}"):
        from_dict(Preset, {"tune": {name: value}}, "preset.yaml")


def test_a_preset_can_choose_them() -> None:
    preset = from_dict(Preset, {"tune": {"searcher": "random", "scheduler": "fifo", "epoch_budget": 40}}, "p.yaml")
    assert (preset.tune.searcher, preset.tune.scheduler, preset.tune.epoch_budget) == ("random", "fifo", 40)
