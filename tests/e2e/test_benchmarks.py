"""The benchmark scripts still run from a checkout and print one JSON object (their figures are taken by
`make bench`, never asserted here: speed targets live in benchmarks, not in timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.e2e.conftest import REPO


def bench(script: str, *args: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout[-2000:]  # exactly one JSON object: progress goes to stderr
    return json.loads(lines[0]), proc.stderr


def test_input_pipeline_reports_both_paths_and_the_augmentation_breakdown() -> None:
    out, _ = bench("input_pipeline.py", "--quick", "--sources", "200x120", "--patients", "4", "--sizes", "64",
                   "--workers", "0", "--repeats", "1", "--seconds", "0.2")
    (row,) = out["results"]
    assert (row["source"], row["size"], row["workers"]) == ("200x120", 64, 0)
    for path in ("seed", "decode", "cache"):
        assert row[path]["images_per_s"] > 0
    assert row["ratio_cache_over_seed"] == pytest.approx(row["cache"]["images_per_s"] / row["seed"]["images_per_s"],
                                                         rel=0.01)
    breakdown = out["augment_ms_per_image_in_process"]["64"]
    assert {"all", "Affine", "GaussNoise", "CLAHE", "normalise", "compose_overhead"} <= set(breakdown)
    assert out["target"]["met_by_case"] == {} and out["target"]["met"] is False  # no 384 px case measured
    # the stable keys a script reads are always there, None when their case was not measured
    assert out["ratio_384_1000x600_w1"] is None and out["ratio_384_1000x600_w2"] is None
    assert out["cores"] >= 1 and len(out["load_before"]) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_gpu_throughput_skips_with_a_message_without_cuda() -> None:
    out, _ = bench("gpu_throughput.py")
    assert "no CUDA" in out["skipped"]
