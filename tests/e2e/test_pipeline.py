"""`raypipe pipeline run` end to end on tiny data: every target tuned, a champion registered per target,
a self-contained report, and a second run with an unchanged config that skips every stage."""

from __future__ import annotations

import re

import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import raypipe


def test_pipeline_runs_then_skips_unchanged_stages(synth_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(synth_data), "train": {"image_size": 48, "epochs": 2, "test_per_class": 3},
        "tune": {"targets": ["fracture", "age"], "trials": 2}, "promote": {"bootstrap": 100}}))
    run_dir = tmp_path / "runs"
    first = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "tune: finished 2 studies" in first.stdout

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    for name in ("tiny.fracture", "tiny.age"):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.tags["split_hash"] and champion.tags["metric"] in ("auroc", "macro_f1")

    page = (run_dir / "reports" / "tiny.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # ROC, PR, reliability, confusion: inlined
    assert "Test set by age (1-year bins)" in page and "Test set by sex" in page
    assert "fracture" in page and "age" in page and "Tuning" in page
    assert not re.search(r"src=\"(?!data:)", page)  # self-contained: no external images

    second = raypipe("pipeline", "run", "--config", str(config), "--run-dir", str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("tune", "promote", "report"):
        assert f"{stage}: unchanged, skipped" in second.stdout
    assert len(client.search_model_versions("name = 'tiny.fracture'")) == 1
