"""The decoded image cache: built once, reopened without decoding, crash-safe, picklable."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raypipe.data import images
from raypipe.data.cache import ImageCache
from raypipe.errors import InputError
from tests.conftest import write_grazpedwri

HASH = "0123456789abcdef" + "f" * 48


def graz_manifest(root: Path, n_patients: int = 3) -> pd.DataFrame:
    """A canonical-column manifest built straight from the tiny GRAZPEDWRI layout (no sources.py)."""
    write_grazpedwri(root, n_patients=n_patients)
    labels = root / "folder_structure" / "yolov5" / "labels"
    rows = []
    for png in sorted(root.glob("images_part*/*.png")):
        box = (labels / f"{png.stem}.txt").read_text().split(maxsplit=1)[1].strip()
        rows.append({"image_id": png.stem, "path": str(png), "patient_id": png.stem[:4],
                     "study_id": png.stem[:4], "age": 10.0, "sex": "M", "projection": "AP", "label": 0,
                     "metal": False, "text_boxes": box, "source": "test"})
    return pd.DataFrame(rows)


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    return graz_manifest(tmp_path / "graz")


def test_build_then_open_decodes_nothing(manifest: pd.DataFrame, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    first = ImageCache.build_or_open(manifest, HASH, 32, "fill", tmp_path / "cache", workers=1,
                                     progress=lambda d, t: calls.append((d, t)))
    assert first.built is True and len(first) == len(manifest) == 6
    assert first.directory.name == "0123456789abcdef-32px-fill"
    assert calls[-1] == (6, 6) and all(t == 6 for _, t in calls)
    index = json.loads((first.directory / "index.json").read_text())
    assert index["image_ids"] == list(manifest["image_id"]) and index["shape"] == [6, 32, 32]
    pairs = zip(manifest["path"], manifest["text_boxes"], strict=True)
    expected = np.stack([images.prepare(p, b, 32, "fill") for p, b in pairs])
    np.testing.assert_array_equal(np.asarray(first.array), expected)

    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the second open must not decode")

    monkeypatch.setattr(images, "prepare", boom)
    second = ImageCache.build_or_open(manifest, HASH, 32, "fill", tmp_path / "cache", workers=2)
    assert second.built is False and second.directory == first.directory
    np.testing.assert_array_equal(np.asarray(second.array), np.asarray(first.array))
    assert second.get(3).shape == (32, 32) and second.get(3).dtype == np.uint8
    with pytest.raises(ValueError):
        second.get(3)[0, 0] = 1  # read-only: nobody scribbles on the shared cache


def test_rows_lookup(manifest: pd.DataFrame, tmp_path: Path) -> None:
    cache = ImageCache.build_or_open(manifest, HASH, 16, "off", tmp_path / "c", workers=1)
    ids = list(manifest["image_id"])
    np.testing.assert_array_equal(cache.rows([ids[4], ids[0]]), [4, 0])
    np.testing.assert_array_equal(cache.rows(manifest["image_id"].iloc[2:4]), [2, 3])
    with pytest.raises(KeyError, match="not in the image cache"):
        cache.rows(["missing"])


def test_key_fields_give_new_dirs(manifest: pd.DataFrame, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    a = ImageCache.build_or_open(manifest, HASH, 32, "fill", root, workers=1)
    b = ImageCache.build_or_open(manifest, HASH, 24, "fill", root, workers=1)
    c = ImageCache.build_or_open(manifest, HASH, 32, "off", root, workers=1)
    d = ImageCache.build_or_open(manifest, "f" * 64, 32, "fill", root, workers=1)
    assert len({a.directory, b.directory, c.directory, d.directory}) == 4
    assert b.built and c.built and d.built
    assert b.array.shape == (6, 24, 24)
    assert not np.array_equal(np.asarray(a.array), np.asarray(c.array))  # masking changed pixels


def test_changed_manifest_under_same_key_rebuilds(manifest: pd.DataFrame, tmp_path: Path) -> None:
    ImageCache.build_or_open(manifest, HASH, 16, "off", tmp_path / "c", workers=1)
    again = ImageCache.build_or_open(manifest.iloc[:4], HASH, 16, "off", tmp_path / "c", workers=1)
    assert again.built and len(again) == 4


def test_crash_mid_build_leaves_no_index(manifest: pd.DataFrame, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = images.prepare
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "prepare", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        ImageCache.build_or_open(manifest, HASH, 16, "fill", tmp_path / "c", workers=1)
    directory = ImageCache.key_dir(tmp_path / "c", HASH, 16, "fill")
    assert not (directory / "index.json").exists()
    assert not (tmp_path / "c").exists()  # the temporary array and the folders it made were removed too
    monkeypatch.setattr(images, "prepare", real)
    cache = ImageCache.build_or_open(manifest, HASH, 16, "fill", tmp_path / "c", workers=1)
    assert cache.built and (directory / "index.json").exists()


def test_truncated_array_is_rebuilt(manifest: pd.DataFrame, tmp_path: Path) -> None:
    cache = ImageCache.build_or_open(manifest, HASH, 16, "off", tmp_path / "c", workers=1)
    (cache.directory / "images.u8").write_bytes(b"\0" * 10)
    assert ImageCache.build_or_open(manifest, HASH, 16, "off", tmp_path / "c", workers=1).built


def test_pool_build_matches_serial_and_reports_bad_image(manifest: pd.DataFrame, tmp_path: Path) -> None:
    serial = ImageCache.build_or_open(manifest, HASH, 16, "blur", tmp_path / "a", workers=1)
    pooled = ImageCache.build_or_open(manifest, HASH, 16, "blur", tmp_path / "b", workers=2)
    np.testing.assert_array_equal(np.asarray(serial.array), np.asarray(pooled.array))
    bad = Path(manifest["path"].iloc[4])
    bad.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as err:
        ImageCache.build_or_open(manifest, "e" * 64, 16, "blur", tmp_path / "b", workers=2)
    assert err.value.file == str(bad)
    assert not (ImageCache.key_dir(tmp_path / "b", "e" * 64, 16, "blur") / "index.json").exists()


def test_pickles_without_the_memmap(manifest: pd.DataFrame, tmp_path: Path) -> None:
    cache = ImageCache.build_or_open(manifest, HASH, 16, "fill", tmp_path / "c", workers=1)
    _ = cache.array  # opened here; must not travel
    blob = pickle.dumps(cache)
    assert len(blob) < 4096
    copy = pickle.loads(blob)
    assert copy._array is None
    for i in range(len(cache)):
        np.testing.assert_array_equal(copy.get(i), cache.get(i))


def test_rejects_bad_arguments(manifest: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="masking"):
        ImageCache.build_or_open(manifest, HASH, 16, "paint", tmp_path)
    with pytest.raises(InputError, match="no images"):
        ImageCache.build_or_open(manifest.iloc[:0], HASH, 16, "off", tmp_path)
