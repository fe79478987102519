"""The data commands as a user meets them: summaries, splits, cache reuse, and one-line errors."""

from __future__ import annotations

import shutil

from tests.e2e.conftest import raypipe


def test_check_prints_summary(synth_data):
    proc = raypipe("data", "check", str(synth_data))
    assert proc.returncode == 0, proc.stderr
    assert "AP" in proc.stdout and "Lat" in proc.stdout and "patients" in proc.stdout


def test_split_then_cache_decodes_once(synth_data, tmp_path):
    proc = raypipe("data", "split", str(synth_data), "--run-dir", str(tmp_path), "--test-per-class", "2")
    assert proc.returncode == 0 and "split hash" in proc.stdout
    first = raypipe("data", "cache", str(synth_data), "--run-dir", str(tmp_path), "--size", "32")
    second = raypipe("data", "cache", str(synth_data), "--run-dir", str(tmp_path), "--size", "32")
    assert "built" in first.stdout and "already cached" in second.stdout


def test_malformed_csv_exits_2_with_one_line_and_writes_nothing(synth_data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(synth_data, bad)
    lines = (bad / "dataset.csv").read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("age")] = "abc"
    lines[3] = ",".join(row)
    (bad / "dataset.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    run_dir = tmp_path / "run"
    proc = raypipe("train", "--data", str(bad), "--target", "fracture", "--run-dir", str(run_dir))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "dataset.csv" in err and "row 4" in err and "age" in err
    assert not run_dir.exists() or not any(run_dir.rglob("*.csv"))


def test_unknown_config_key_exits_2(synth_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    proc = raypipe("train", "--data", str(synth_data), "--target", "age", "--config", str(cfg),
                   "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "learning_rate" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_choice_exits_2_before_any_work(synth_data, tmp_path):
    proc = raypipe("train", "--data", str(synth_data), "--target", "age", "--set", "loss=hinge",
                   "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "field 'loss'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
