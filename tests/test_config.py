import pytest

from raypipe.config import TrainConfig, from_dict, load_preset, load_train_config
from raypipe.data.groups import get_scheme
from raypipe.data.targets import all_targets, parse_target
from raypipe.errors import InputError


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.1\nlearning_rate: 3\n")
    with pytest.raises(InputError) as err:
        load_train_config(path)
    assert str(path) in str(err.value) and "learning_rate" in str(err.value) and "\n" not in str(err.value)


def test_wrong_type_rejected_and_ints_widen_to_float():
    with pytest.raises(InputError, match="field 'epochs': expected int"):
        from_dict(TrainConfig, {"epochs": "ten"}, "x.yaml")
    assert from_dict(TrainConfig, {"lr": 1}, "x.yaml").lr == 1.0


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\nepochs: [1\n")
    with pytest.raises(InputError, match="row"):
        load_train_config(path)


def test_demo_preset_loads():
    preset = load_preset("demo")
    assert preset.train.backbone == "resnet10t" and preset.synth["patients"] > 0


def test_age_schemes():
    assert get_scheme("4group").labels() == ["0-5", "5-10", "10-15", "15+"]
    assert list(get_scheme("3group").group_of([7.9, 8.0, 14.9, 15.0])) == [0, 1, 1, 2]
    assert get_scheme("5group").n_groups == 5
    assert get_scheme("6,12").n_groups == 3
    with pytest.raises(ValueError):
        get_scheme("12,6")


def test_targets_parse_and_list():
    scheme = get_scheme("4group")
    t = parse_target("fracture/Lat/2", scheme)
    assert (t.kind, t.projection, t.group, t.name) == ("fracture", "Lat", 2, "fracture/Lat/2")
    for bad in ("fracture/PA", "fracture/AP/4", "age/AP", "height"):
        with pytest.raises(ValueError):
            parse_target(bad, scheme)
    assert len(all_targets(scheme)) == 1 + 2 * 4


@pytest.mark.parametrize("value", ["off", "fill", "blur"])
def test_every_masking_choice_reads_as_text_from_a_file_and_from_set(tmp_path, value):
    """YAML 1.1 reads `off` (and on/yes/no/y/n) as a boolean: the documented `masking: off` must stay text."""
    from raypipe.cli import _overrides

    path = tmp_path / "cfg.yaml"
    path.write_text(f"masking: {value}\nsampler: none\nloss: focal\namp: true\n")
    cfg = load_train_config(path)
    assert (cfg.masking, cfg.sampler, cfg.amp) == (value, "none", True)
    assert load_train_config(None, _overrides([f"masking={value}", "amp=false"])).masking == value


def test_yes_and_no_are_text_too(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("amp: yes\n")
    with pytest.raises(InputError, match="expected bool, got 'yes'"):
        load_train_config(path)


def test_every_named_choice_comes_from_one_registry_and_is_checked_from_it():
    import pytest

    from raypipe.config import CHOICES, known_choices
    from raypipe.errors import InputError
    from raypipe.train.job import check_choices

    assert set(CHOICES) == {"masking", "schedule", "searcher", "scheduler", "source", "loss", "sampler"}
    assert {"off", "fill", "blur"} <= set(known_choices("masking")) and "auto" in known_choices("source")
    assert {"focal", "bce"} <= set(known_choices("loss")) and "weighted" in known_choices("sampler")
    check_choices(TrainConfig())  # the defaults are known names
    for key in ("masking", "schedule", "loss", "sampler"):
        with pytest.raises(InputError, match=f"unknown {key} 'nonesuch'"):
            check_choices(TrainConfig(**{key: "nonesuch"}))
