"""Targets as views of the manifest: what each trains on, and the ones a data set cannot feed refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raypipe.config import TrainConfig
from raypipe.data.groups import get_scheme
from raypipe.data.prepare import prepare
from raypipe.data.targets import parse_target
from raypipe.errors import InputError
from tests.data.test_sources import write_mura
from tests.data.test_splits import fake_manifest, mura_like

SCHEME = get_scheme("4group")


def test_fracture_trains_on_images_without_a_projection():
    m = mura_like()
    rows, y = parse_target("fracture", SCHEME).select(m, SCHEME)
    assert len(rows) == len(m) and y.tolist() == m["label"].tolist()
    parse_target("fracture", SCHEME).check(m)  # nothing to refuse


def test_fracture_still_leaves_oblique_views_out_and_projections_apart():
    m = fake_manifest(30)
    rows, _ = parse_target("fracture", SCHEME).select(m, SCHEME)
    assert set(rows["projection"]) == {"AP", "Lat"} and len(rows) == (m["projection"] != "Oblique").sum()
    ap, _ = parse_target("fracture/AP", SCHEME).select(m, SCHEME)
    assert set(ap["projection"]) == {"AP"}
    mixed = pd.concat([m, mura_like(5, 0)], ignore_index=True)  # a CSV with some projections unknown
    assert len(parse_target("fracture/Lat", SCHEME).select(mixed, SCHEME)[0]) == (m["projection"] == "Lat").sum()
    parse_target("fracture/Lat/1", SCHEME).check(mixed)


@pytest.mark.parametrize("spec, words", [
    ("fracture/AP", "records no projection for any image; train 'fracture'"),
    ("fracture/Lat/2", "records no projection"),
    ("age", "records no age for any image; the age model needs ages"),
])
def test_targets_a_source_cannot_feed_are_refused_in_one_line(spec, words):
    with pytest.raises(InputError) as info:
        parse_target(spec, SCHEME).check(mura_like())
    msg = str(info.value)
    assert msg.startswith(f"target {spec}: the source (mura) ") and words in msg and "\n" not in msg


def test_per_age_group_targets_need_ages():
    m = fake_manifest(20).assign(age=np.nan)
    with pytest.raises(InputError, match="per-age-group targets need ages"):
        parse_target("fracture/AP/1", SCHEME).check(m)
    parse_target("fracture/AP", SCHEME).check(m)


def test_prepared_data_refuses_before_selecting(tmp_path: Path):
    """Every command (train, tune, promote) selects through PreparedData: the refusal comes from there."""
    prepared = prepare(write_mura(tmp_path / "m"), TrainConfig(image_size=32), tmp_path / "runs")
    in_test = (prepared.splits["split"] == "test").tolist()
    assert in_test == prepared.manifest["image_id"].str.startswith("valid/").tolist()  # MURA's valid split
    rows, y = prepared.select(parse_target("fracture", SCHEME), "test")
    assert len(rows) == 2 and y.tolist() == [1, 1]
    for spec in ("fracture/AP", "age"):
        with pytest.raises(InputError, match=f"^target {spec}: the source"):
            prepared.select(parse_target(spec, SCHEME), "train")
        with pytest.raises(InputError):
            prepared.frame(parse_target(spec, SCHEME), "test")
