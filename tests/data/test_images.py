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


def _ring_stats(img: np.ndarray, rect: tuple[int, int, int, int], band: int) -> tuple[float, float]:
    x0, y0, x1, y1 = rect
    win = img[max(0, y0 - band) : y1 + band, max(0, x0 - band) : x1 + band].astype(float)
    inner = np.ones(win.shape, bool)
    inner[y0 - max(0, y0 - band) : y1 - max(0, y0 - band), x0 - max(0, x0 - band) : x1 - max(0, x0 - band)] = False
    return float(win[inner].mean()), float(win[inner].std())


def test_fill_masking_removes_marker(tmp_path: Path) -> None:
    png, box = _graz_image(tmp_path)
    raw = images.read_image(png)
    assert raw[2:14, 2:14].min() == 1.0  # the marker is the brightest thing in the image
    off = images.prepare(png, box, 96, "off")
    left = (96 - 64) // 2  # letterbox of 96x64 at 96 px pads 16 px each side
    assert off[3:13, left + 3 : left + 13].min() == 255
    masked = images.read_masked(png, box, "fill")
    assert images.box_mask(masked.shape, box)[:15, :15].all()  # the dilated box reaches the corner
    region, below = masked[:15, :15], masked[20:40, :15]
    assert abs(region.mean() - below.mean()) < 0.05  # like its neighbours, not a bright square
    assert region.std() > 0.5 * below.std()  # with their noise: no flat patch
    np.testing.assert_array_equal(masked[40:], images.read_image(png, exclude=box)[40:])  # rest untouched


def test_fill_leaves_no_trace_on_a_dark_background() -> None:
    """A marker on the black background outside the anatomy: its box must look like that background,
    level and noise, not like a grey patch (the old whole-image median) that shows where it was."""
    rng = np.random.default_rng(0)
    img = np.clip(0.05 + 0.02 * rng.standard_normal((200, 120)), 0, 1).astype(np.float32)
    img[:, 36:106] += 0.5  # the forearm: the image median is tissue grey
    img[10:26, 6:24] = 1.0  # the burned-in marker
    img[14:22, 10:14] = 0.0  # its glyph
    box = "0.125000 0.090000 0.150000 0.080000"
    out = images.mask_text(img, box, "fill")
    x0, y0 = np.argwhere(images.box_mask(img.shape, box)).min(0)[::-1]
    y1, x1 = np.argwhere(images.box_mask(img.shape, box)).max(0) + 1
    mean, sd = _ring_stats(out, (x0, y0, x1, y1), 4)
    region = out[y0:y1, x0:x1]
    assert abs(region.mean() - mean) < 0.01 and 0.7 * sd < region.std() < 1.3 * sd
    old = np.median(img)  # what the whole-image median painted: far from the background's level
    assert abs(old - mean) > 0.2
    np.testing.assert_array_equal(out[:, 40:], img[:, 40:])  # the rest untouched


def test_fill_continues_an_edge_through_the_box() -> None:
    """A skin line crossing the box continues through it: no step, no blob at the box's place."""
    rng = np.random.default_rng(1)
    img = np.clip(0.05 + 0.01 * rng.standard_normal((120, 120)), 0, 1).astype(np.float32)
    img[:, :60] += 0.4  # tissue left of x = 60
    img[40:60, 50:70] = 1.0  # a marker on the skin line
    out = images.mask_text(img, "0.5 0.416667 0.166667 0.166667", "fill")
    region = out[36:64, 46:74]
    # per column, the box's level matches the same columns above and below it
    outside = np.vstack([out[20:34, 46:74], out[66:80, 46:74]]).mean(0)
    assert np.abs(region.mean(0) - outside).max() < 0.05


def test_fill_is_reproducible_and_handles_crowded_boxes() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((64, 64)).astype(np.float32)
    # boxes tiling most of the image: no clean strip beside any of them, the ring fallback fills them
    boxes = ";".join(f"{cx:.4f} {cy:.4f} 0.2 0.2" for cx in (0.15, 0.45, 0.75) for cy in (0.15, 0.45, 0.75))
    a = images.mask_text(img, boxes, "fill")
    b = images.mask_text(img.copy(), boxes, "fill")
    np.testing.assert_array_equal(a, b)  # same input, same bytes: the image cache stays reproducible
    assert np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1
    whole = images.mask_text(img, "0.5 0.5 1.0 1.0", "fill")  # a box over everything: nothing to copy
    assert np.isfinite(whole).all()


def test_window_ignores_the_box_pixels(tmp_path: Path) -> None:
    """A burned-in marker larger than 0.5% of the film sets the 99.5th percentile; masked, it must not."""
    rng = np.random.default_rng(3)
    img = (rng.random((100, 100)) * 20000 + 10000).astype(np.uint16)
    img[2:14, 2:14] = 65535  # 1.4% of the image
    png = _write_png(tmp_path / "w.png", img)
    box = "0.08 0.08 0.12 0.12"
    with_marker = images.read_image(png)
    without = images.read_image(png, exclude=box)
    body = (slice(30, 100), slice(30, 100))
    assert with_marker[body].max() < 0.5  # the marker took the top of the window
    assert without[body].max() == 1.0 and without[body].min() == 0.0
    np.testing.assert_array_equal(images.read_masked(png, box, "off"), with_marker)  # off: as before


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
