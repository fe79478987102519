"""The run spec (raypipe/spec.py): one composition of every layer, in a fixed order, checked and frozen."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from raypipe import spec as run_spec
from raypipe.config import PromotePlan, Resources, TrainConfig
from raypipe.errors import InputError

PER_TARGET = {"fracture": {"train": {"lr": 0.01, "epochs": 7}}, "fracture/AP": {"train": {"epochs": 9}}}


def test_layers_apply_in_order_config_fixed_per_target_set_resources():
    base = TrainConfig(lr=0.001, epochs=3, image_size=64, batch_size=8)
    spec = run_spec.compose("x", "fracture/AP/1", base, per_target=PER_TARGET,
                            fixed={"image_size": 48, "epochs": 5, "batch_size": 16}, overrides={"batch_size": 4},
                            resources=Resources(workers_per_trial=2, gpus_per_trial=1))
    cfg = spec.train
    assert (cfg.image_size, cfg.epochs, cfg.lr, cfg.batch_size) == (48, 9, 0.01, 4)
    assert (cfg.workers, cfg.use_gpu) == (2, True)  # resources set the train config's workers and GPU use
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train = base  # type: ignore[misc]


def test_a_searched_key_cannot_be_fixed_and_bad_values_name_their_origin():
    with pytest.raises(InputError, match="--set.*lr is searched by s.yaml"):
        run_spec.compose("x", "age", TrainConfig(), overrides={"lr": 0.1}, space="s.yaml", searched=("lr",))
    with pytest.raises(InputError, match=r"tune.per_target \(fracture/AP\).*lr is searched"):
        run_spec.compose("x", "fracture/AP", TrainConfig(), per_target=PER_TARGET, searched=("lr",))
    with pytest.raises(InputError, match="my.yaml.*batch_size"):
        run_spec.compose("x", "age", TrainConfig(), overrides={"batch_size": 0}, origin="my.yaml")


def test_params_and_yaml_say_everything_to_rerun_it():
    spec = run_spec.compose("x", "age", TrainConfig(), resources=Resources(cpus_per_worker=0.5), searched=("lr",),
                            tune={"trials": 4}, promote=PromotePlan(folds=2), space="age.yaml")
    params = run_spec.params(spec)
    assert params["cpus_per_worker"] == "0.5" and params["promote.folds"] == "2" and params["target"] == "age"
    assert "lr" not in params  # searched: every trial logs its own
    again = run_spec.load(yaml.safe_dump(spec.to_dict()), "run_spec.yaml")
    assert again == spec
