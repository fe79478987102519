"""Error text that reaches MLflow (the FAILED trial run's ``raypipe.error`` tag) carries no file name or path:
GRAZPEDWRI-DX file names start with the patient id, MURA folders are named after the patient."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raypipe.tracking.runs import scrub
from raypipe.tracking.study_runs import _error_line

STEM = "0042_1297860395_01_WRI-L1_M014"


@pytest.mark.parametrize("text", [
    f"raypipe.errors.InputError: /data/graz/images_part1/{STEM}.png: cannot decode image",
    f"InputError: {STEM}.png: truncated PNG",
    f"ValueError: no image file for filestem '{STEM}'",
    f"FileNotFoundError: [Errno 2] No such file or directory: 'runs/cache/{STEM}/images.u8'",
    r"OSError: C:\data\graz\0042_1297860395_01_WRI-R2_F101.png unreadable",
    "InputError: MURA-v1.1/train/XR_WRIST/patient00042/study1_positive/image1.png: empty",
    "KeyError: 'patient00042'",
])
def test_no_path_file_name_or_identifier_survives(text):
    out = scrub(text)
    for secret in ("0042", "1297860395", "WRI-L1_M014", "/", "\\", ".png", "patient00042"):
        assert secret not in out, (secret, out)
    assert out.split(":")[0] == text.split(":")[0]  # the exception type stays: the error is still legible


@pytest.mark.parametrize("text", ["RuntimeError: injected fault: head_hidden=96", "lr 0.0001 must be below 0.1",
                                  "ValueError: shapes (2, 3) and (4,) mismatch in torch.nn.Linear"])
def test_messages_without_paths_stay_whole(text):
    assert scrub(text) == text


def test_the_failed_trials_error_line_is_scrubbed_before_it_is_tagged(tmp_path):
    from mlflow.tracking import MlflowClient

    from raypipe.tracking import study_runs

    error_file = tmp_path / "error.txt"
    error_file.write_text(f"Traceback ...\n  File \"x.py\"\nraypipe.errors.InputError: /d/{STEM}.png: cannot decode\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("scrub")
    run_id = client.create_run(exp_id).info.run_id
    state = SimpleNamespace(ended_trial=lambda *a, **k: None, was_pruned=lambda t: False)
    logger = study_runs.StudyLogger(uri, exp_id, state)
    logger._runs["t1"] = run_id
    trial = SimpleNamespace(trial_id="t1", error_file=str(error_file))
    logger.on_trial_error(0, [], trial)
    assert STEM in _error_line(trial)  # what Tune wrote holds the file name ...
    run = client.get_run(run_id)  # ... what MLflow keeps does not
    assert run.info.status == "FAILED"
    assert run.data.tags["raypipe.error"] == "raypipe.errors.InputError: <path>: cannot decode"
