"""Crash mid-write: the previous version stays readable and no temporary file is left behind.

Every file raypipe keeps for later runs goes through ``raypipe.fsio.atomic_path`` (temporary sibling,
fsync, ``os.replace``). Here writers fail part-way (an exception after half the bytes, a failing
fsync, a failing rename) and are SIGKILLed mid-write in a subprocess; afterwards the old content must
be intact, and the temporaries gone (at once for exceptions; for a killed writer, at the next write).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raypipe import fsio
from raypipe.config import TrainConfig
from raypipe.data import manifest as manifest_mod
from raypipe.data import splits as splits_mod
from raypipe.data.cache import ARRAY_NAME, INDEX_NAME, ImageCache
from raypipe.data.prepare import prepare
from tests.conftest import write_grazpedwri

REPO = Path(__file__).resolve().parents[1]


def litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"*{fsio.TMP_SUFFIX}"))


def test_exception_mid_write_keeps_the_old_version(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    fsio.write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="crash"), fsio.atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b'{"version": 2, "half')  # half a file, then the writer dies
        raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"version": 1}
    assert litter(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failing_fsync_or_rename_keeps_the_old_version(failing: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "splits.csv"
    fsio.write_text(target, "old\n")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsio.os, failing, broken)
    with pytest.raises(OSError, match="No space"):
        fsio.write_text(target, "new\n" * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old\n" and litter(tmp_path) == []


def test_manifest_split_and_cache_index_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data writers (manifest, split CSV + record, cache array + index) all go through fsio:
    with the rename failing, each leaves the previous file untouched and nothing else."""
    data = write_grazpedwri(tmp_path / "graz", n_patients=4, size=(48, 32))
    cfg = TrainConfig(image_size=16, test_per_class=0, val_fraction=0.5)
    first = prepare(data, cfg, tmp_path / "run")
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {p.name for p in before} >= {"manifest.csv", ARRAY_NAME, INDEX_NAME} and len(before) == 5

    real_replace = os.replace

    def no_rename(src, dst):
        if str(src).endswith(fsio.TMP_SUFFIX):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(fsio.os, "replace", no_rename)
    changed = first.manifest.assign(age=first.manifest["age"] + 1)
    with pytest.raises(OSError):
        manifest_mod.save(changed, next(p for p in before if p.name == "manifest.csv"))
    split_csv = next(p for p in before if p.suffix == ".csv" and p.name.startswith("splits-"))
    with pytest.raises(OSError):
        splits_mod.save(first.splits.assign(split="train"), split_csv, splits_mod.SplitParams(), first.data_hash)
    with pytest.raises(OSError):
        ImageCache.build_or_open(first.manifest, first.data_hash, 16, "blur", run / "cache", workers=1)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before and litter(run) == []


def test_split_torn_between_its_two_files_is_made_again(tmp_path: Path) -> None:
    """``splits.save`` writes the CSV, then its record: a crash in between leaves a pair that does not
    belong together. It is detected by hash and replaced, never trusted."""
    data = write_grazpedwri(tmp_path / "graz", n_patients=6, size=(48, 32))
    cfg = TrainConfig(image_size=16, test_per_class=0, val_fraction=0.5)
    good = prepare(data, cfg, tmp_path / "run", with_cache=False)
    split_csv = next((tmp_path / "run").rglob("splits-*.csv"))
    fsio.write_text(split_csv, good.splits.assign(split="train").to_csv(index=False))  # the CSV got through
    with pytest.raises(ValueError, match="split hash"):
        splits_mod.load(split_csv)
    again = prepare(data, cfg, tmp_path / "run", with_cache=False)
    assert again.split_hash == good.split_hash and (again.splits["split"] == good.splits["split"]).all()
    assert splits_mod.load(split_csv)[1] == good.split_hash  # repaired on disk too


# ------------------------------------------------------------------------- SIGKILL mid-write
WRITER = textwrap.dedent("""
    import sys, time
    from raypipe import fsio
    with fsio.atomic_path(sys.argv[1]) as tmp, open(tmp, "wb") as fh:
        for i in range(100_000):          # ~100 GB if never killed
            fh.write(b"x" * (1 << 20))
            fh.flush()
            if i == 8:
                print("writing", flush=True)
            time.sleep(0.01)
""")


def kill_when_ready(args: list[str], ready: str, timeout: float = 120) -> None:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or ready in line:
                break
        assert proc.poll() is None, "the writer ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkill_mid_write_keeps_the_old_version_and_the_next_write_sweeps(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    fsio.write_bytes(target, b"old")
    kill_when_ready(["-c", WRITER, str(target)], "writing")
    assert target.read_bytes() == b"old"
    left = litter(tmp_path)
    assert len(left) == 1 and (tmp_path / left[0]).stat().st_size >= 9 << 20  # the dead writer's, half done
    unrelated = tmp_path / ".big.bin.otherhost.1.abc.tmp"  # another host's writer: not ours to judge
    unrelated.write_bytes(b"")
    fsio.write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and litter(tmp_path) == [unrelated.name]


CACHE_BUILDER = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from raypipe.data import images
    from raypipe.data.cache import ImageCache
    real = images.prepare
    def slow(*args, **kwargs):
        out = real(*args, **kwargs)
        print("decoded", flush=True)
        time.sleep(0.5)
        return out
    images.prepare = slow
    manifest = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
    ImageCache.build_or_open(manifest, sys.argv[2], 16, "fill", sys.argv[3], workers=1)
""")


def test_sigkill_mid_cache_build_leaves_the_old_cache_usable(tmp_path: Path) -> None:
    """The memmap is decoded into a temporary and renamed: a killed rebuild neither tears the array
    in use nor leaves a half-written one that a later run could take for complete."""
    data = write_grazpedwri(tmp_path / "graz", n_patients=3, size=(48, 32))
    m = prepare(data, TrainConfig(image_size=16, test_per_class=0, val_fraction=0.5), tmp_path / "run",
                with_cache=False).manifest
    m_csv = tmp_path / "manifest.csv"
    m.to_csv(m_csv, index=False)
    root = tmp_path / "cache"
    key = "a" * 64
    cache = ImageCache.build_or_open(m, key, 16, "fill", root, workers=1)
    reference = np.array(cache.array)
    index = (cache.directory / INDEX_NAME).read_text()
    # A second build of the same key (e.g. after the index was lost) is killed half-way.
    (cache.directory / INDEX_NAME).unlink()
    kill_when_ready(["-c", CACHE_BUILDER, str(m_csv), key, str(root)], "decoded")
    assert not (cache.directory / INDEX_NAME).exists()  # the killed build never claimed completeness
    np.testing.assert_array_equal(np.memmap(cache.directory / ARRAY_NAME, np.uint8, "r", shape=reference.shape),
                                  reference)  # the array under the final name is still the old, whole one
    assert len(litter(root)) == 1
    again = ImageCache.build_or_open(pd.read_csv(m_csv, dtype=str, keep_default_na=False), key, 16, "fill", root,
                                     workers=1)
    assert again.built and litter(root) == []
    np.testing.assert_array_equal(np.asarray(again.array), reference)
    assert json.loads((cache.directory / INDEX_NAME).read_text())["image_ids"] == json.loads(index)["image_ids"]
