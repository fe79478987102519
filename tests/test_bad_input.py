"""Bad input at the function level (fast): strict YAML and configs at every nesting level, value ranges,
search-space bounds, and the image header checks behind `raypipe data check`.

The same corpus through the real CLI (exit 2, one line, nothing written): tests/e2e/test_bad_input.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.config import Preset, TrainConfig, check_value, from_dict, load_preset, parse_yaml
from raypipe.data import images
from raypipe.errors import InputError
from raypipe.tune.spaces import read_space

BAD = Path(__file__).parent / "data" / "bad"


def error(call) -> InputError:
    with pytest.raises(InputError) as info:
        call()
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize(("raw", "field"), [
    ({"trian": {}}, "trian"),
    ({"train": {"learning_rate": 1}}, "train.learning_rate"),
    ({"tune": {"trails": 3}}, "tune.trails"),
    ({"promote": {"margins": 0.1}}, "promote.margins"),
    ({"synth": {"patient": 40}}, "synth.patient"),
])
def test_unknown_keys_are_errors_at_every_level(raw: dict, field: str) -> None:
    err = error(lambda: from_dict(Preset, raw, "p.yaml"))
    assert (err.file, err.field) == ("p.yaml", field) and "unknown key" in err.reason


@pytest.mark.parametrize(("raw", "field", "words"), [
    ({"train": {"epochs": "ten"}}, "train.epochs", "expected int"),
    ({"train": {"amp": "yes"}}, "train.amp", "expected bool"),
    ({"synth": {"patients": 1.5}}, "synth.patients", "expected int"),
    ({"tune": {"targets": "age"}}, "tune.targets", "expected list"),
    ({"tune": {"targets": ["age", 3]}}, "tune.targets[1]", "expected str"),
    ({"train": {"lr": 0}}, "train.lr", "above 0"),
    ({"train": {"val_fraction": 1.0}}, "train.val_fraction", "[0, 1)"),
    ({"train": {"image_size": 8}}, "train.image_size", "[16, 4096]"),
    ({"train": {"masking": "paint"}}, "train.masking", "unknown masking"),
    ({"train": {"age_scheme": "12,6"}}, "train.age_scheme", "increasing"),
    ({"tune": {"trials": 0}}, "tune.trials", "at least 1"),
    ({"synth": {"height": 16}}, "synth.height", "at least 32"),
    ({"train": []}, "train", "expected a mapping"),
])
def test_wrong_types_and_values_name_the_field(raw: dict, field: str, words: str) -> None:
    err = error(lambda: from_dict(Preset, raw, "p.yaml"))
    assert err.field == field and words in err.reason, str(err)


def test_good_values_pass_and_defaults_are_valid() -> None:
    preset = from_dict(Preset, {"synth": {"patients": 40}, "tune": {"targets": ["age", "fracture/AP"]},
                                "train": {"lr": 1, "val_fraction": 0.0}}, "p.yaml")
    assert preset.synth == {"patients": 40} and preset.train.lr == 1.0
    assert load_preset("demo").synth["patients"] > 0
    for name, value in vars(TrainConfig()).items():
        assert check_value(name, value) is None, name


def test_duplicate_keys_and_syntax_errors_name_the_line() -> None:
    err = error(lambda: parse_yaml("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "c.yaml"))
    assert err.row == 4 and "duplicate key 'lr'" in err.reason
    assert error(lambda: parse_yaml("a: [1\nb: 2\n", "c.yaml")).row is not None
    assert parse_yaml("a: {x: 1}\nb: {x: 2}\n", "c.yaml") == {"a": {"x": 1}, "b": {"x": 2}}  # same key, two maps
    with pytest.raises(InputError):
        parse_yaml("!!python/object/apply:os.system ['true']\n", "c.yaml")  # safe: no Python objects


@pytest.mark.parametrize(("name", "field"), [
    ("unknown_type.yaml", "params.lr.type"), ("low_above_high.yaml", "params.lr"),
    ("loguniform_zero.yaml", "params.weight_decay.low"), ("empty_choices.yaml", "params.loss.choices"),
    ("unknown_param.yaml", "params.learning_rate"), ("spec_unknown_key.yaml", "params.drop_path.log"),
    ("when_later.yaml", "params.focal_gamma.when"), ("not_searchable.yaml", "params.epochs"),
    ("fixed_unknown_key.yaml", "fixed.epochz"), ("top_unknown_key.yaml", "param"),
    ("out_of_range.yaml", "params.drop_path.high"), ("int_fractional_step.yaml", "params.head_hidden.step"),
])
def test_space_structure_is_checked_without_heavy_imports(name: str, field: str) -> None:
    err = error(lambda: read_space(BAD / "spaces" / name))
    assert Path(err.file).name == name and err.field == field, str(err)


@pytest.mark.parametrize(("name", "words"), [
    ("empty.png", "empty (0 bytes)"), ("truncated.png", "truncated PNG"), ("not_an_image.png", "not an image"),
    ("one_bit.png", "1-bit PNG"), ("no_pixels.dcm", "no pixel data"), ("missing.png", "not found"),
])
def test_header_check_catches_what_it_can_see(name: str, words: str) -> None:
    assert words in (images.check_file(BAD / "files" / name) or "")


@pytest.mark.parametrize(("name", "words"), [
    ("corrupt_pixels.png", "cannot decode"), ("float32.tiff", "bit depth: float32"), ("one_bit.png", "1-bit"),
])
def test_decoding_catches_the_rest(name: str, words: str) -> None:
    err = error(lambda: images.read_image(BAD / "files" / name))
    assert words in err.reason and err.file.endswith(name)


def test_header_check_passes_real_images(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    for suffix, dtype in ((".png", np.uint16), (".png", np.uint8), (".jpg", np.uint8), (".tiff", np.uint16)):
        path = tmp_path / f"x{dtype.__name__}{suffix}"
        cv2.imwrite(str(path), (np.random.default_rng(0).random((40, 30)) * 200).astype(dtype))
        assert images.check_file(path) is None, path
