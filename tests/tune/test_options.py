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


def _study(target: str, round_: int, epochs: int = 12):
    return SimpleNamespace(round=round_, target=SimpleNamespace(name=target), cfg=SimpleNamespace(epochs=epochs))


@pytest.mark.parametrize(("searcher", "kind"), [("tpe", TPESampler), ("random", RandomSampler)])
def test_sampler_follows_the_searcher_with_a_seed_stream_per_target_and_round(searcher, kind) -> None:
    options = TuneOptions(trials=8, seed=5, searcher=searcher)
    studies = [_study("fracture/Lat/0", 1), _study("fracture/Lat/0", 2), _study("fracture/Lat/0", 1),
               _study("fracture/Lat/1", 1)]
    samplers = [_sampler(options, s) for s in studies]
    assert isinstance(samplers[0], kind)
    draws = [optuna.create_study(sampler=s).ask().suggest_float("lr", 0, 1) for s in samplers]
    assert draws[0] == draws[2]  # seeded: the same target and round draw the same
    assert draws[0] != draws[1]  # round 2 does not replay round 1's random samples
    assert draws[0] != draws[3]  # two targets side by side do not start from the same configs


def test_budget_defaults_follow_trials_and_epochs_and_settings_win() -> None:
    assert TuneOptions(trials=6).budget(12) == {"startup_trials": 2, "grace_period": 6, "reduction_factor": 2,
                                                "max_t": 12}
    big = TuneOptions(trials=60, reduction_factor=3).budget(30)
    assert (big["startup_trials"], big["grace_period"]) == (10, 10)
    assert TuneOptions(trials=6).budget(3)["grace_period"] == 3  # too short to prune anything
    chosen = TuneOptions(trials=6, grace_period=2, startup_trials=4).budget(12)
    assert (chosen["grace_period"], chosen["startup_trials"]) == (2, 4)


def test_options_take_the_tune_block_under_the_command_line() -> None:
    plan = from_dict(Preset, {"tune": {"trials": 12, "grace_period": 3, "searcher": "random"}}, "p.yaml").tune
    options = TuneOptions.from_plan(plan, trials=None, searcher="tpe", startup_trials=5)
    assert (options.trials, options.grace_period, options.searcher, options.startup_trials) == (12, 3, "tpe", 5)


@pytest.mark.parametrize(("name", "value"), [("searcher", "grid"), ("scheduler", "hyperband"), ("epoch_budget", 0),
                                             ("grace_period", 0), ("reduction_factor", 1), ("startup_trials", 0)])
def test_unknown_searcher_scheduler_or_budget_is_bad_input(name, value) -> None:
    with pytest.raises(InputError, match=name.replace("_", "-")):
        TuneOptions(**{name: value})
    with pytest.raises(InputError, match=f"tune.{name}"):
        from_dict(Preset, {"tune": {name: value}}, "preset.yaml")


def test_a_preset_can_choose_them() -> None:
    preset = from_dict(Preset, {"tune": {"searcher": "random", "scheduler": "fifo", "epoch_budget": 40}}, "p.yaml")
    assert (preset.tune.searcher, preset.tune.scheduler, preset.tune.epoch_budget) == ("random", "fifo", 40)
