"""`tune.per_target` in a pipeline config: the most specific prefix wins, bad entries are one-line errors."""

from __future__ import annotations

import pytest

from raypipe.config import TrainConfig
from raypipe.errors import InputError
from raypipe.tune.study import _check_per_target, _settings_for

PER_TARGET = {
    "fracture": {"train": {"backbone": "resnet18", "image_size": 96}},
    "fracture/Lat": {"train": {"image_size": 128}, "space": "lat.yaml"},
    "fracture/Lat/2": {"train": {"backbone": "test_convnext"}},
    "age": {"space": "age-small.yaml"},
}


def test_more_specific_prefixes_override_key_by_key():
    assert _settings_for(PER_TARGET, "fracture/Lat/2") == {
        "train": {"backbone": "test_convnext", "image_size": 128}, "space": "lat.yaml"}
    assert _settings_for(PER_TARGET, "fracture/AP/1") == {"train": {"backbone": "resnet18", "image_size": 96},
                                                          "space": None}
    assert _settings_for(PER_TARGET, "age") == {"train": {}, "space": "age-small.yaml"}
    assert _settings_for({"fracture/L": {"train": {"lr": 1.0}}}, "fracture/Lat/1")["train"] == {}  # whole parts only


@pytest.mark.parametrize("per_target, says", [
    ({"fracture/Oblique": {}}, "unknown projection"),
    ({"age": {"trian": {}}}, "expected a mapping with `train` and/or `space`"),
    ({"age": {"train": {"imag_size": 64}}}, "imag_size"),
    ({"age": {"train": {"image_size": "big"}}}, "image_size"),
])
def test_bad_entries_are_refused(per_target, says):
    with pytest.raises(InputError, match=says):
        _check_per_target(per_target, TrainConfig())
    _check_per_target(PER_TARGET, TrainConfig())  # the good one passes
