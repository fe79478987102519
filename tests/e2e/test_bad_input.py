"""The bad-input corpus (tests/data/bad/) through the real CLI, one subprocess per case.

Every case must end the way README promises: exit code 2, exactly one line on stderr naming the file
(and the row and field where there is one), no traceback, nothing written (the run directory and the
data folder are compared before and after), and Ray never started (its temp folder stays empty).

Cases run three at a time in a module fixture (most are CLI start-up time); each is its own test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import write_grazpedwri
from tests.e2e.conftest import REPO

BAD = REPO / "tests" / "data" / "bad"
FILES = BAD / "files"


@dataclass
class Case:
    id: str
    make: Callable[[Path], tuple[list[str], Path]]  # case folder -> (CLI args, data folder to watch)
    expect: list[str]  # substrings of the one stderr line


# ------------------------------------------------------------------------------------ builders
def in_place(name: str, command: str = "split") -> Callable:
    """A corpus CSV used where it lies (values are checked before any image is looked for)."""
    def make(case_dir: Path) -> tuple[list[str], Path]:
        run_dir = ["--run-dir", str(case_dir / "run")] if command != "check" else []
        return ["data", command, str(BAD / name), *run_dir], BAD
    return make


def graz_row3_stem(root: Path) -> str:
    """The filestem on row 3 of a tiny GRAZPEDWRI-DX folder's dataset.csv (header = row 1)."""
    return (root / "dataset.csv").read_text(encoding="utf-8-sig").splitlines()[2].split(",")[0]


def graz(mutate: Callable[[Path, str], None], command: str = "split") -> Callable:
    """A tiny GRAZPEDWRI-DX folder whose row-3 image or label file is then broken by ``mutate``."""
    def make(case_dir: Path) -> tuple[list[str], Path]:
        root = write_grazpedwri(case_dir / "graz", n_patients=3, size=(48, 32))
        mutate(root, graz_row3_stem(root))
        args = {"split": ["data", "split", str(root)],
                "cache": ["data", "cache", str(root), "--size", "32"],
                "tune": ["tune", "--data", str(root), "--target", "fracture", "--trials", "1"]}[command]
        return [*args, "--run-dir", str(case_dir / "run")], root
    return make


def image_of(root: Path, stem: str) -> Path:
    return next(root.glob(f"images_part*/{stem}.png"))


def replace_image(corpus_file: str) -> Callable[[Path, str], None]:
    return lambda root, stem: shutil.copyfile(FILES / corpus_file, image_of(root, stem))


def delete_image(root: Path, stem: str) -> None:
    image_of(root, stem).unlink()


def replace_label(corpus_file: str) -> Callable[[Path, str], None]:
    return lambda root, stem: shutil.copyfile(
        BAD / corpus_file, root / "folder_structure" / "yolov5" / "labels" / f"{stem}.txt")


def plain(bad_file: str | None = None, csv_name: str | None = None, command: str = "split") -> Callable:
    """A plain-CSV data set: a corpus CSV with its images made, or three good images + ``bad_file`` (row 5)."""
    def make(case_dir: Path) -> tuple[list[str], Path]:
        root = case_dir / "plain"
        (root / "img").mkdir(parents=True)
        if csv_name:
            text = (BAD / csv_name).read_text()
        else:
            shutil.copyfile(FILES / bad_file, root / bad_file)
            text = ("image_path,label,age,projection\nimg/a.png,1,7.5,AP\nimg/b.png,0,8,Lat\nimg/c.png,0,9,AP\n"
                    f"{bad_file},1,10,AP\n")
        (root / "list.csv").write_text(text)
        rng = np.random.default_rng(0)
        for line in text.splitlines()[1:]:
            path = root / line.split(",")[0]
            if path.parent.name == "img" and not path.exists():
                cv2.imwrite(str(path), (rng.random((48, 32)) * 60000).astype(np.uint16))
        args = ["data", command, str(root / "list.csv")] + (["--size", "32"] if command == "cache" else [])
        return [*args, "--run-dir", str(case_dir / "run")], root
    return make


def space(name: str) -> Callable:
    def make(case_dir: Path) -> tuple[list[str], Path]:
        root = write_grazpedwri(case_dir / "graz", n_patients=3, size=(48, 32))
        return ["tune", "--data", str(root), "--target", "fracture", "--space", str(BAD / "spaces" / name),
                "--run-dir", str(case_dir / "run")], root
    return make


def pipeline_config(name: str) -> Callable:
    def make(case_dir: Path) -> tuple[list[str], Path]:
        return ["pipeline", "run", "--config", str(BAD / "configs" / name), "--run-dir", str(case_dir / "run")], BAD
    return make


def train_config(name: str, *extra: str) -> Callable:
    def make(case_dir: Path) -> tuple[list[str], Path]:
        root = write_grazpedwri(case_dir / "graz", n_patients=3, size=(48, 32))
        config = ["--config", str(BAD / "configs" / name)] if name else []
        return ["train", "--data", str(root), "--target", "fracture", *config, *extra,
                "--run-dir", str(case_dir / "run")], root
    return make


# ------------------------------------------------------------------------------------ the corpus
CASES = [
    # CSVs: columns, types, ranges, duplicates, vocabularies, encodings, shapes
    Case("csv-missing-column", in_place("graz_missing_column.csv"),
         ["graz_missing_column.csv", "row 1", "field 'fracture_visible'", "missing required column"]),
    Case("csv-age-not-a-number", in_place("graz_bad_age.csv"),
         ["graz_bad_age.csv", "row 3", "field 'age'", "not a number", "'twelve'"]),
    Case("csv-age-out-of-range", in_place("graz_age_out_of_range.csv"),
         ["graz_age_out_of_range.csv", "row 2", "field 'age'", "out of range", "'31.0'"]),
    Case("csv-duplicate-filestem", in_place("graz_duplicate_filestem.csv"),
         ["graz_duplicate_filestem.csv", "row 4", "field 'filestem'", "duplicate filestem", "first on row 2"]),
    Case("csv-unknown-projection", in_place("graz_unknown_projection.csv"),
         ["graz_unknown_projection.csv", "row 3", "field 'projection'", "unknown projection '4'"]),
    Case("csv-unknown-gender", in_place("graz_unknown_gender.csv"),
         ["graz_unknown_gender.csv", "row 2", "field 'gender'", "unknown gender 'X'"]),
    Case("csv-flag-zero", in_place("graz_bad_flag.csv"), ["graz_bad_flag.csv", "row 4", "field 'metal'", "'0'"]),
    Case("csv-empty-file", in_place("graz_empty.csv", "check"), ["graz_empty.csv", "empty file (0 bytes)"]),
    Case("csv-header-only", in_place("graz_header_only.csv"), ["graz_header_only.csv", "no data rows"]),
    Case("csv-extra-field", in_place("graz_ragged.csv"), ["graz_ragged.csv", "row 3", "18 fields", "header has 17"]),
    Case("csv-short-row", in_place("graz_short_row.csv"), ["graz_short_row.csv", "row 3", "15 fields", "header has 17"]),
    Case("csv-utf16", in_place("graz_utf16.csv", "check"), ["graz_utf16.csv", "UTF-16 text", "save the CSV as UTF-8"]),
    Case("csv-label-not-0-1", plain(csv_name="plain_bad_label.csv"),
         ["list.csv", "row 3", "field 'label'", "'yes'"]),
    Case("csv-negative-age", plain(csv_name="plain_age_negative.csv"),
         ["list.csv", "row 3", "field 'age'", "out of range", "'-2'"]),
    Case("csv-plain-missing-label", plain(csv_name="plain_missing_label.csv"),
         ["list.csv", "row 1", "field 'label'", "missing required column"]),
    Case("csv-plain-unknown-projection", plain(csv_name="plain_bad_projection.csv"),
         ["list.csv", "row 4", "field 'projection'", "'sideways'"]),
    # images: missing, empty, truncated, not an image, too few bits, undecodable, no DICOM pixels, float
    Case("image-missing", graz(delete_image),
         ["dataset.csv", "row 3", "field 'filestem'", "no image file for filestem"]),
    Case("image-zero-bytes", graz(replace_image("empty.png")),
         ["dataset.csv", "row 3", "field 'filestem'", "empty (0 bytes)", ".png"]),
    Case("image-truncated-png", graz(replace_image("truncated.png")),
         ["dataset.csv", "row 3", "field 'filestem'", "truncated PNG"]),
    Case("image-not-an-image", graz(replace_image("not_an_image.png")),
         ["dataset.csv", "row 3", "field 'filestem'", "not an image"]),
    Case("image-one-bit", graz(replace_image("one_bit.png")), ["dataset.csv", "row 3", "field 'filestem'", "1-bit PNG"]),
    Case("image-corrupt-pixels", graz(replace_image("corrupt_pixels.png"), "cache"), [".png", "cannot decode image"]),
    Case("image-dicom-without-pixels", plain("no_pixels.dcm"),
         ["list.csv", "row 5", "field 'image_path'", "no pixel data", "no_pixels.dcm"]),
    Case("image-float32-tiff", plain("float32.tiff", command="cache"), ["float32.tiff", "bit depth: float32"]),
    Case("image-empty-stops-tune-before-ray", graz(replace_image("empty.png"), "tune"),
         ["dataset.csv", "row 3", "field 'filestem'", "empty (0 bytes)"]),
    # YOLO label files (folder_structure/yolov5/labels/<filestem>.txt)
    Case("yolo-not-a-number", graz(replace_label("yolo_bad_line.txt")),
         [".txt", "row 2", "field 'cy'", "not a number: 'abc'"]),
    Case("yolo-four-values", graz(replace_label("yolo_four_values.txt")),
         [".txt", "row 2", "field 'h'", "expected 5 values"]),
    Case("yolo-out-of-range", graz(replace_label("yolo_out_of_range.txt")), [".txt", "row 2", "field 'w'", "0-1"]),
    Case("yolo-bad-class", graz(replace_label("yolo_bad_class.txt")), [".txt", "row 1", "field 'class'", "'text'"]),
    # search spaces (`raypipe tune --space`)
    Case("space-unknown-type", space("unknown_type.yaml"),
         ["unknown_type.yaml", "field 'params.lr.type'", "unknown distribution 'normal'"]),
    Case("space-low-above-high", space("low_above_high.yaml"), ["low_above_high.yaml", "field 'params.lr'", "below high"]),
    Case("space-loguniform-zero", space("loguniform_zero.yaml"),
         ["loguniform_zero.yaml", "field 'params.weight_decay.low'", "low > 0"]),
    Case("space-empty-choices", space("empty_choices.yaml"), ["empty_choices.yaml", "field 'params.loss.choices'"]),
    Case("space-unknown-choice", space("unknown_choice.yaml"),
         ["unknown_choice.yaml", "field 'params.loss.choices'", "unknown loss 'hinge'"]),
    Case("space-unknown-parameter", space("unknown_param.yaml"),
         ["unknown_param.yaml", "field 'params.learning_rate'", "not a TrainConfig key"]),
    Case("space-unknown-spec-key", space("spec_unknown_key.yaml"),
         ["spec_unknown_key.yaml", "field 'params.drop_path.log'", "unknown key"]),
    Case("space-when-on-later-param", space("when_later.yaml"),
         ["when_later.yaml", "field 'params.focal_gamma.when'", "listed above it"]),
    Case("space-not-searchable", space("not_searchable.yaml"),
         ["not_searchable.yaml", "field 'params.epochs'", "ASHA budget"]),
    Case("space-fixed-unknown-key", space("fixed_unknown_key.yaml"),
         ["fixed_unknown_key.yaml", "field 'fixed.epochz'", "unknown key"]),
    Case("space-top-unknown-key", space("top_unknown_key.yaml"), ["top_unknown_key.yaml", "field 'param'", "unknown key"]),
    Case("space-out-of-range", space("out_of_range.yaml"),
         ["out_of_range.yaml", "field 'params.drop_path.high'", "must be in [0, 1)"]),
    Case("space-duplicate-key", space("duplicate_key.yaml"), ["duplicate_key.yaml", "row 4", "duplicate key 'lr'"]),
    Case("space-int-fractional-step", space("int_fractional_step.yaml"),
         ["int_fractional_step.yaml", "field 'params.head_hidden.step'"]),
    # pipeline configs (`raypipe pipeline run --config`): unknown keys at every level, types, ranges
    Case("config-top-unknown-key", pipeline_config("top_unknown.yaml"), ["top_unknown.yaml", "field 'trian'", "unknown key"]),
    Case("config-train-unknown-key", pipeline_config("train_unknown.yaml"),
         ["train_unknown.yaml", "field 'train.learning_rate'", "unknown key"]),
    Case("config-tune-unknown-key", pipeline_config("tune_unknown.yaml"), ["tune_unknown.yaml", "field 'tune.trails'"]),
    Case("config-promote-unknown-key", pipeline_config("promote_unknown.yaml"),
         ["promote_unknown.yaml", "field 'promote.margins'"]),
    Case("config-synth-unknown-key", pipeline_config("synth_unknown.yaml"),
         ["synth_unknown.yaml", "field 'synth.patient'", "known: height, patients, seed, width"]),
    Case("config-wrong-type", pipeline_config("wrong_type.yaml"),
         ["wrong_type.yaml", "field 'train.epochs'", "expected int, got 'ten'"]),
    Case("config-out-of-range", pipeline_config("out_of_range.yaml"),
         ["out_of_range.yaml", "field 'train.val_fraction'", "1.5"]),
    Case("config-target-not-a-string", pipeline_config("targets_type.yaml"),
         ["targets_type.yaml", "field 'tune.targets[1]'", "expected str"]),
    Case("config-duplicate-key", pipeline_config("duplicate_key.yaml"),
         ["duplicate_key.yaml", "row 4", "duplicate key 'epochs'"]),
    Case("config-invalid-yaml", pipeline_config("invalid_yaml.yaml"), ["invalid_yaml.yaml", "row 3", "invalid YAML"]),
    Case("config-not-a-mapping", pipeline_config("not_a_mapping.yaml"), ["not_a_mapping.yaml", "expected a mapping"]),
    Case("train-config-unknown-key", train_config("train_config_unknown.yaml"),
         ["train_config_unknown.yaml", "field 'learnig_rate'", "unknown key"]),
    Case("train-set-out-of-range", train_config("", "--set", "batch_size=0"), ["field 'batch_size'", "at least 1"]),
]


# ------------------------------------------------------------------------------------ running
def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: any write shows up as a difference."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    data_before: dict
    data_after: dict
    run_after: dict
    ray_tmp: list[str]
    seconds: float


def run_case(case: Case, case_dir: Path) -> Outcome:
    args, watched = case.make(case_dir)
    before = snapshot(watched)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rpbad-", dir="/tmp"))  # short: Ray's socket paths must fit
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")}
    env |= {"PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp), "COLUMNS": "200"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "raypipe", *args], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=300)
        return Outcome(proc, before, snapshot(watched), snapshot(case_dir / "run"),
                       [p.name for p in ray_tmp.iterdir()], time.perf_counter() - started)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad-input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.id: pool.submit(run_case, c, root / c.id) for c in CASES}
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case: Case, outcomes: dict[str, Outcome]) -> None:
    out = outcomes[case.id]
    err = out.proc.stderr
    assert out.proc.returncode == 2, f"exit {out.proc.returncode}\n{err[-3000:]}\n{out.proc.stdout[-2000:]}"
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: "), err
    for words in case.expect:
        assert words in err, f"{words!r} not in {err!r}"
    assert out.data_after == out.data_before, "the data folder changed"
    assert out.run_after == {}, f"left behind in the run directory: {sorted(out.run_after)}"
    assert out.ray_tmp == [], "Ray was started"


def test_corpus_is_all_used() -> None:
    """Every file of the corpus appears in a case (a new file without a case would test nothing)."""
    import inspect

    source = inspect.getsource(sys.modules[__name__])
    corpus = [p for p in BAD.rglob("*") if p.is_file() and p.suffix != ".py" and p.parent != BAD / "__pycache__"]
    unused = [str(p.relative_to(BAD)) for p in corpus if f'"{p.name}"' not in source]
    assert unused == []


@pytest.mark.parametrize("bom", [True, False], ids=["with-bom", "without-bom"])
def test_grazpedwri_csv_with_or_without_bom_is_accepted(bom: bool, tmp_path: Path) -> None:
    """GRAZPEDWRI-DX ships its CSV with a UTF-8 BOM; a re-saved copy often loses it. Both must load."""
    root = write_grazpedwri(tmp_path / "graz", n_patients=3, size=(48, 32))
    text = (root / "dataset.csv").read_text(encoding="utf-8-sig")
    (root / "dataset.csv").write_text(text, encoding="utf-8-sig" if bom else "utf-8")
    assert (root / "dataset.csv").read_bytes().startswith(b"\xef\xbb\xbf") == bom
    proc = subprocess.run([sys.executable, "-m", "raypipe", "data", "check", str(root)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "images: 6" in proc.stdout and "patients: 3" in proc.stdout
