"""Search spaces: shipped files load, conditionals hold, every mistake is one clear InputError."""

from __future__ import annotations

import optuna
import pytest

from raypipe.config import TrainConfig
from raypipe.errors import InputError
from raypipe.tune.spaces import load_space, shipped


def write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def sample(space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        space.define(trial)
        out.append(trial.params)
        study.tell(trial, 0.0)
    return out


def test_shipped_spaces_load_and_respect_their_conditions():
    assert {"age", "fracture"} <= set(shipped())
    fracture = load_space("fracture")
    samples = sample(fracture, 60)
    for params in samples:
        assert ("focal_gamma" in params) == (params["loss"] == "focal")
        # alpha weighs the classes, so it exists only where no sampler balances them already
        assert ("focal_alpha" in params) == (params["loss"] == "focal" and params["sampler"] == "none")
        assert ("sampler_power" in params) == (params["sampler"] == "weighted")
        assert 3e-4 <= params["lr"] <= 1e-2 and params["batch_size"] in (16, 32)
        assert params.get("focal_gamma", 0.5) * 2 == int(params.get("focal_gamma", 0.5) * 2)  # step 0.5
    assert {p["loss"] for p in samples} == {"focal", "bce"}
    age = sample(load_space("age"), 30)
    assert all(("label_smoothing" in p) == (p["loss"] == "ce") for p in age)


def test_fixed_settings_and_trial_config(tmp_path):
    space = load_space(write(tmp_path, "fixed: {epochs: 3, image_size: 48}\n"
                                       "params:\n  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
                                       "  head_hidden: {type: int, low: 32, high: 128, step: 32}\n"))
    assert space.fixed == {"epochs": 3, "image_size": 48}
    params = sample(space, 5)
    assert all(p["head_hidden"] in (32, 64, 96, 128) for p in params)
    cfg = space.trial_config(TrainConfig(), params[0])
    assert cfg.lr == params[0]["lr"] and cfg.head_hidden == params[0]["head_hidden"]


@pytest.mark.parametrize("body, field, reason", [
    ("params:\n  lr: {type: normal, low: 0.1, high: 1}\n", "params.lr.type", "unknown distribution"),
    ("params:\n  lr: {type: uniform, low: 0.1, high: 0.1}\n", "params.lr", "must be below high"),
    ("params:\n  lr: {type: loguniform, low: 0, high: 1}\n", "params.lr.low", "low > 0"),
    ("params:\n  loss: {type: categorical, choices: []}\n", "params.loss.choices", "non-empty"),
    ("params:\n  learning_rate: {type: uniform, low: 0, high: 1}\n", "params.learning_rate", "unknown parameter"),
    ("params:\n  image_size: {type: int, low: 32, high: 64}\n", "params.image_size", "cannot be searched"),
    ("params:\n  loss: {type: categorical, choices: [focal, dice]}\n", "params.loss.choices", "unknown loss 'dice'"),
    ("params:\n  batch_size: {type: uniform, low: 8, high: 64}\n", "params.batch_size.type", "integer"),
    ("params:\n  focal_gamma: {type: uniform, low: 0, high: 3, when: {loss: focal}}\n",
     "params.focal_gamma.when", "not a categorical parameter listed above"),
    ("params:\n  loss: {type: categorical, choices: [focal, bce]}\n"
     "  focal_gamma: {type: uniform, low: 0, high: 3, when: {loss: ce}}\n", "params.focal_gamma.when.loss",
     "not a choice of loss"),
    ("params:\n  lr: {type: uniform, low: 0.1, high: 1, stepp: 0.1}\n", "params.lr.stepp", "unknown key"),
    ("params:\n  lr: {type: loguniform, low: 0.001, high: 1, step: 0.1}\n", "params.lr.step", "no step"),
    ("fixed: {epoch: 3}\nparams:\n  lr: {type: uniform, low: 0.1, high: 1}\n", "fixed.epoch", "unknown key"),
    ("params: {}\n", "params", "at least one"),
    ("fixed: {lr: 0.1}\nparams:\n  lr: {type: uniform, low: 0.1, high: 1}\n", "params.lr", "both fixed and searched"),
])
def test_bad_spaces_name_file_key_and_reason(tmp_path, body, field, reason):
    path = write(tmp_path, body)
    with pytest.raises(InputError) as err:
        load_space(path)
    assert err.value.field == field and reason in err.value.reason and err.value.file == str(path)


def test_missing_space_names_the_shipped_ones():
    with pytest.raises(InputError, match="shipped: age, fracture"):
        load_space("nonesuch")


def test_yaml_syntax_error_names_the_row(tmp_path):
    with pytest.raises(InputError) as err:
        load_space(write(tmp_path, "params:\n  lr: {type: uniform, low: 0.1\n"))
    assert err.value.row is not None


def test_base_point_is_the_config_in_the_space_and_optuna_runs_it_first(tmp_path):
    space = load_space(write(tmp_path, "params:\n  lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
                             "  loss: {type: categorical, choices: [focal, bce]}\n"
                             "  focal_gamma: {type: uniform, low: 0.5, high: 4.0, when: {loss: focal}}\n"))
    cfg = TrainConfig(lr=2e-3, loss="bce", focal_gamma=2.0)
    assert space.base_point(cfg) == {"lr": 2e-3, "loss": "bce"}  # focal_gamma is inactive for bce
    focal = TrainConfig(lr=2e-3, loss="focal", focal_gamma=2.0)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(space.base_point(focal))
    trial = study.ask()
    space.define(trial)
    assert trial.params == {"lr": 2e-3, "loss": "focal", "focal_gamma": 2.0}
    # a config value the space cannot express has no base point (not silently replaced by another)
    only_bce = load_space(write(tmp_path, "params:\n  loss: {type: categorical, choices: [bce]}\n"))
    assert only_bce.base_point(focal) is None
