"""Masking must hide the text-marker shortcut, not just the glyphs (issue #18).

On a synthetic set where no fracture is drawn and only the marker's corner carries the label
(``synthesize(shortcut="marker")``: fracture top-left, normal bottom-right), a model trained with the
default masking must test at chance, while one trained with masking ``off`` must find the marker:
that second half proves the set and the training can reveal a shortcut, so the first half can fail
(it did with the old whole-image-median fill, which painted a grey rectangle at each marker's place).

Measured on this set: off AUROC 1.000; old median fill 0.993 (CI 0.980-1.000), so this test failed;
fill now 0.552 (CI 0.451-0.656). Close to the edge: a 200-patient draw gave a fill CI above 0.5.

The one training loop runs in-process (one worker: no Ray, no MLflow): 508 training images per model.
"""

from __future__ import annotations

import dataclasses

import pytest

from raypipe.config import TrainConfig
from raypipe.data.prepare import prepare
from raypipe.data.synth import synthesize
from raypipe.data.targets import parse_target
from raypipe.evaluate.clinical import bootstrap_ci
from raypipe.ship.promote import _load, _predict
from raypipe.train import launch
from raypipe.train.job import make_job
from raypipe.train.metrics import binary_metrics

CFG = TrainConfig(backbone="resnet10t", image_size=64, epochs=12, patience=13, batch_size=32, lr=3e-3, loss="bce",
                  augment=0.0, test_per_class=2, val_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def marker_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("shortcut") / "wrist"
    synthesize(out, patients=250, seed=1, height=128, width=80, shortcut="marker")
    return out


def _test_auroc(data, run_dir, masking: str) -> tuple[float, tuple[float, float]]:
    cfg = dataclasses.replace(CFG, masking=masking)
    prepared = prepare(data, cfg, run_dir)
    target = parse_target("fracture", prepared.scheme)
    job = make_job(prepared, target, cfg)
    result = launch.fit(job, run_dir / f"train-{masking}", run_dir / "ray", name=masking, keep="last")
    rows, y = prepared.select(target, "test")
    test = prepared.manifest[(prepared.splits["split"] == "test").to_numpy()]
    patients = target.select(test, prepared.scheme)[0]["patient_id"].to_numpy()
    scores = _predict(_load(result.checkpoint), job.cache, rows, 2)
    ci = bootstrap_ci(y, scores, patients, 2, n_boot=500, seed=0, names=("auroc",))["auroc"]
    return binary_metrics(y, scores)["auroc"], ci


def test_default_masking_hides_the_marker_shortcut(marker_only, tmp_path):
    assert TrainConfig().masking == "fill"  # the default is what is tested
    auroc_off, _ = _test_auroc(marker_only, tmp_path, "off")
    auroc_fill, ci_fill = _test_auroc(marker_only, tmp_path, "fill")
    print(f"marker-only set: masking off AUROC {auroc_off:.3f}; fill AUROC {auroc_fill:.3f} CI {ci_fill}")
    assert auroc_off > 0.9, "the set or the training cannot reveal a marker shortcut: the test proves nothing"
    assert ci_fill[0] <= 0.5 <= ci_fill[1], f"masked markers still tell the label: AUROC {auroc_fill:.3f} {ci_fill}"
