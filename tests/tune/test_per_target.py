"""`tune.per_target` and `resources:` in a pipeline config: the most specific prefix wins, the command line
wins over both, bad entries are one-line errors."""

from __future__ import annotations

import pytest

from raypipe.config import Preset, Resources, TrainConfig, from_dict
from raypipe.config import check_per_target as _check_per_target
from raypipe.config import settings_for as _settings_for
from raypipe.errors import InputError
from raypipe.tune.options import TuneOptions

PER_TARGET = {
    "fracture": {"train": {"backbone": "resnet18", "image_size": 96}},
    "fracture/Lat": {"train": {"image_size": 128}, "space": "lat.yaml"},
    "fracture/Lat/2": {"train": {"backbone": "test_convnext"}},
    "age": {"space": "age-small.yaml", "resources": {"workers_per_trial": 2}},
    "fracture/AP": {"resources": {"gpus_per_trial": 0.5}},
    "fracture/AP/1": {"resources": {"cpus_per_worker": 2}},
}


def test_more_specific_prefixes_override_key_by_key():
    assert _settings_for(PER_TARGET, "fracture/Lat/2") == {
        "train": {"backbone": "test_convnext", "image_size": 128}, "space": "lat.yaml", "resources": {}}
    assert _settings_for(PER_TARGET, "fracture/AP/1") == {"train": {"backbone": "resnet18", "image_size": 96},
                                                          "space": None,
                                                          "resources": {"gpus_per_trial": 0.5, "cpus_per_worker": 2}}
    assert _settings_for(PER_TARGET, "age") == {"train": {}, "space": "age-small.yaml",
                                                "resources": {"workers_per_trial": 2}}
    assert _settings_for({"fracture/L": {"train": {"lr": 1.0}}}, "fracture/Lat/1")["train"] == {}  # whole parts only


@pytest.mark.parametrize("per_target, says", [
    ({"fracture/Oblique": {}}, "unknown projection"),
    ({"age": {"trian": {}}}, "expected a mapping with `train`, `space` and/or `resources`"),
    ({"age": {"resources": {"workers": 2}}}, "resources.workers"),
    ({"age": {"resources": {"workers_per_trial": 0}}}, "must be at least 1"),
    ({"age": {"train": {"imag_size": 64}}}, "imag_size"),
    ({"age": {"train": {"image_size": "big"}}}, "image_size"),
])
def test_bad_entries_are_refused(per_target, says):
    with pytest.raises(InputError, match=says):
        _check_per_target(per_target, TrainConfig())
    _check_per_target(PER_TARGET, TrainConfig())  # the good one passes


def test_resources_block_then_per_target_then_the_command_line():
    preset = from_dict(Preset, {"resources": {"workers_per_trial": 3, "cpus_per_worker": 0.5},
                                "tune": {"per_target": PER_TARGET}}, "p.yaml")
    options = TuneOptions.from_plan(preset.tune, preset.resources)
    assert options.resources_for(PER_TARGET, "fracture/Lat") == Resources(3, 0.0, 0.5)  # the block
    assert options.resources_for(PER_TARGET, "fracture/AP/1") == Resources(3, 0.5, 2.0)  # prefixes on top
    assert options.resources_for(PER_TARGET, "age") == Resources(2, 0.0, 0.5)
    cli = TuneOptions.from_plan(preset.tune, preset.resources, workers_per_trial=1, gpus_per_trial=None)
    assert cli.resources_for(PER_TARGET, "age") == Resources(1, 0.0, 0.5)  # the command line wins
    with pytest.raises(InputError, match="resources.gpus_per_trial"):
        from_dict(Preset, {"resources": {"gpus_per_trial": -1}}, "p.yaml")
