"""Decoding, masking and letterboxing of single images."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from raypipe.data import images
from raypipe.errors import InputError
from tests.conftest import write_grazpedwri


def _write_png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def test_16bit_png_keeps_precision(tmp_path: Path) -> None:
    # all values share the same high byte: an 8-bit read would see one or two levels
    img = (np.arange(64 * 48).reshape(64, 48) % 200 + 1000).astype(np.uint16)
    out = images.read_image(_write_png(tmp_path / "a.png", img))
    assert out.dtype == np.float32 and out.shape == (64, 48)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert len(np.unique(out)) > 100
    assert len(np.unique(cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_GRAYSCALE))) <= 2  # the trap


def test_16bit_window_is_robust_to_outliers(tmp_path: Path) -> None:
    img = np.full((50, 50), 1000, np.uint16)
    img[:, 25:] = 2000
    img[0, 0] = 65535  # one hot pixel must not squash the rest to black
    out = images.read_image(_write_png(tmp_path / "a.png", img))
    assert out[10, 10] == pytest.approx(0.0) and out[10, 40] == pytest.approx(1.0)


def test_8bit_png_and_jpeg(tmp_path: Path) -> None:
    img = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    png = images.read_image(_write_png(tmp_path / "a.png", img))
    assert png.dtype == np.float32 and png.shape == (32, 64)
    np.testing.assert_allclose(png, img / 255, atol=1e-6)
    jpg = images.read_image(_write_png(tmp_path / "a.jpg", img))
    assert jpg.shape == (32, 64) and np.abs(jpg - img / 255).mean() < 0.02


def test_rgb_to_gray(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    out = images.read_image(_write_png(tmp_path / "c.png", np.dstack([gray] * 3)))
    assert out.ndim == 2
    np.testing.assert_allclose(out, gray / 255, atol=1 / 255)
    rgba = np.dstack([gray] * 3 + [np.full_like(gray, 255)])
    assert images.read_image(_write_png(tmp_path / "d.png", rgba)).ndim == 2


@pytest.mark.parametrize("content", [b"", "truncated", b"not an image at all"])
def test_bad_files_raise_input_error(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "bad.png"
    if content == "truncated":
        _write_png(path, (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(InputError) as err:
        images.read_image(path)
    assert err.value.file == str(path) and "\n" not in str(err.value)


def test_missing_file_and_bad_depth(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        images.read_image(tmp_path / "nope.png")
    path = tmp_path / "f.tiff"
    assert cv2.imwrite(str(path), np.ones((8, 8), np.float32))
    with pytest.raises(InputError, match="bit depth"):
        images.read_image(path)


def _write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2",
                 window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None) -> Path:
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 4095, 64), (32, 1)).astype(np.uint16)


def test_dicom_monochrome2_windowed(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "a.dcm", _ramp(), window=(2048, 1024))
    out = images.read_image(path)
    assert out.dtype == np.float32 and out.shape == (32, 64)
    assert out[0, 0] == 0.0 and out[0, -1] == 1.0  # outside the window: clipped
    mid = out[0, (_ramp()[0] > 1700) & (_ramp()[0] < 2400)]
    assert 0.05 < mid.min() < mid.max() < 0.95  # inside: linear ramp
    assert np.all(np.diff(out[0]) >= 0)


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    m2 = images.read_image(_write_dicom(tmp_path / "m2.dcm", _ramp(), window=(2048, 1024)))
    m1 = images.read_image(_write_dicom(tmp_path / "m1.dcm", _ramp(), "MONOCHROME1", window=(2048, 1024)))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_dicom_without_window_uses_percentiles_and_rescale(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "r.dcm", _ramp(), rescale=(2.0, -1000.0))
    out = images.read_image(path)
    assert out.min() == 0.0 and out.max() == 1.0 and len(np.unique(out)) > 32


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    path = _write_dicom(tmp_path / "lut.dcm", _ramp())
    ds = dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16).tobytes()  # gamma curve
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    out = images.read_image(path)
    np.testing.assert_allclose(out[0], np.sqrt(_ramp()[0] / 4095), atol=1e-4)


def test_dicom_magic_without_suffix(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "image", _ramp(), window=(2048, 4096))
    assert images.read_image(path).shape == (32, 64)


def test_dicom_without_pixels(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "empty.dcm", None)
    with pytest.raises(InputError, match="no pixel data") as err:
        images.read_image(path)
    assert err.value.file == str(path)


def test_dicom_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_dicom(tmp_path / "a.dcm", _ramp())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import now raises ImportError
    with pytest.raises(InputError, match=r"pip install raypipe\[dicom\]"):
        images.read_image(path)


def _graz_image(tmp_path: Path) -> tuple[Path, str]:
    root = write_grazpedwri(tmp_path / "graz", n_patients=1)
    png = next(root.glob("images_part*/*.png"))
    label = root / "folder_structure" / "yolov5" / "labels" / f"{png.stem}.txt"
    box = label.read_text().split(maxsplit=1)[1].strip()
    return png, box


def test_fill_masking_removes_marker(tmp_path: Path) -> None:
    png, box = _graz_image(tmp_path)
    raw = images.read_image(png)
    assert raw[2:14, 2:14].min() == 1.0  # the marker is the brightest thing in the image
    off = images.prepare(png, box, 96, "off")
    fill = images.prepare(png, box, 96, "fill")
    left = (96 - 64) // 2  # letterbox of 96x64 at 96 px pads 16 px each side
    median = np.median(off[:, left : left + 64])
    assert off[3:13, left + 3 : left + 13].min() == 255
    region = fill[3:13, left + 3 : left + 13].astype(float)
    assert np.abs(region - median).max() <= 2
    np.testing.assert_array_equal(fill[40:, left + 20 :], off[40:, left + 20 :])  # rest untouched


def test_blur_masking_softens_marker(tmp_path: Path) -> None:
    png, box = _graz_image(tmp_path)
    raw = images.read_image(png)
    blurred = images.mask_text(raw, box, "blur")
    assert blurred[2:14, 2:14].mean() < 0.95  # the hard-edged bright square is gone
    np.testing.assert_array_equal(blurred[40:], raw[40:])
    # glyph-like texture inside the box becomes unreadable
    text = np.full((96, 64), 0.3, np.float32)
    text[2:14, 2:14] = np.indices((12, 12)).sum(axis=0) % 2
    assert images.mask_text(text, box, "blur")[2:14, 2:14].std() < 0.1 * text[2:14, 2:14].std()


def test_mask_modes_validated() -> None:
    img = np.zeros((10, 10), np.float32)
    assert images.mask_text(img, "", "fill") is img
    with pytest.raises(ValueError, match="masking"):
        images.mask_text(img, "0.5 0.5 0.1 0.1", "paint")


def test_letterbox_keeps_aspect() -> None:
    tall = np.ones((100, 50), np.float32)
    out = images.letterbox(tall, 40)
    assert out.shape == (40, 40) and out.dtype == np.uint8
    cols = np.nonzero(out.max(axis=0))[0]
    assert out[:, 10:30].min() == 255 and cols.min() == 10 and cols.max() == 29  # 20 px wide, centred
    wide = np.full((30, 120), 128, np.uint8)
    out = images.letterbox(wide, 60)
    rows = np.nonzero(out.max(axis=1))[0]
    assert len(rows) == 15 and out[rows].min() == 128
    assert images.letterbox(np.ones((10, 20), np.float32), 40).shape == (40, 40)  # upscaling too


def test_to_uint8() -> None:
    np.testing.assert_array_equal(images.to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1])), [0, 128, 255, 255, 0])
    u = np.arange(3, dtype=np.uint8)
    assert images.to_uint8(u) is u
