"""Decode an X-ray once, correctly: file -> float [0,1] -> text masked -> letterboxed uint8.

Why this module is careful:

* GRAZPEDWRI-DX PNGs are 16-bit. ``cv2.imread`` without ``IMREAD_UNCHANGED`` silently drops them
  to 8 bit, and a plain ``/65535`` leaves the used range (often 12 bits) squeezed into a few
  dozen grey levels. We read unchanged and window robustly (0.5-99.5 percentile) instead.
* DICOM stores raw detector values: the Modality LUT (rescale) and the VOI LUT / window chosen
  by the modality must be applied, and MONOCHROME1 means "bright = low value" and is inverted.
* Text markers (YOLO class 8) are a shortcut a classifier will learn (in one group every negative
  image had one). They are masked (``masking.mask_text``) after decoding, and the intensity window
  of 16-bit images is chosen without the box pixels: a burned-in marker larger than 0.5% of the
  film would otherwise set the window, and the contrast of the whole image would show it.
* Every failure a user can fix (missing, empty, truncated, undecodable file) is an
  ``InputError(path, reason)`` so the CLI prints one line instead of a traceback.

``prepare`` is the only entry point the image cache calls.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from raypipe.data.manifest import parse_boxes
from raypipe.data.masking import DILATE, MASKING_MODES, Box, box_mask, mask_text
from raypipe.errors import InputError

__all__ = ["DILATE", "MASKING_MODES", "box_mask", "check_file", "letterbox", "mask_text", "prepare", "read_image",
           "read_masked", "to_uint8", "window"]

WINDOW_PERCENTILES = (0.5, 99.5)
# A corrupt file is reported once, as our one-line InputError; OpenCV's own C++ log lines would be noise.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
_DICOM_HINT = "DICOM support is not installed: pip install raypipe[dicom]"


# An image is a file path, or the file's bytes (a served model gets bytes, never a path to read).
ImageSource = str | Path | bytes


def read_image(source: ImageSource, exclude: Sequence[Box] | str = (), name: str = "image bytes") -> np.ndarray:
    """Read any supported image as a 2-D float32 array in [0, 1] (grayscale, bright = dense).

    ``source``: a path, or the bytes of an image file (``name`` then stands for it in errors; the
    format comes from the content). ``exclude``: boxes (normalised YOLO ``cx cy w h``, dilated as in
    ``mask_text``) whose pixels do not count when the intensity window is chosen, so a masked marker
    leaves no trace in the contrast of the rest of the image either.
    """
    if isinstance(exclude, str):
        exclude = parse_boxes(exclude)
    if isinstance(source, bytes | bytearray):
        data, path = bytes(source), Path(name)
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(path, "image file not found") from None
        except OSError as exc:
            raise InputError(path, f"cannot read image: {exc.strerror or exc}") from None
    if not data:
        raise InputError(path, "image file is empty (0 bytes)")
    if path.suffix.lower() in (".dcm", ".dicom") or data[128:132] == b"DICM":
        return _read_dicom(path, data, exclude)
    return _read_raster(path, data, exclude)


# --------------------------------------------------------------------- cheap checks, no decoding

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAGICS = (  # what cv2 or pydicom can read; anything else (an HTML error page saved as .png...) is refused
    (PNG_MAGIC, "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
)


def check_file(path: str | Path) -> str | None:
    """Why the image at ``path`` cannot be used, from its size and first and last bytes; else None.

    Cheap enough to run on every image of a data set when it is loaded (one ``open``, a few hundred
    bytes read: 20k images in about a second), so ``raypipe data check`` catches missing, empty,
    truncated, non-image and low-bit-depth files before anything is written or any worker starts.
    Pixel data is only decoded by the image cache (``prepare``), which reports what this cannot see.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "image file is empty (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(132)
            fh.seek(max(0, size - 1024))
            tail = fh.read(1024)
    except FileNotFoundError:
        return "image file not found"
    except OSError as exc:
        return f"cannot read image: {exc.strerror or exc}"
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        return _check_dicom(path)
    kind = next((name for magic, name in _MAGICS if head.startswith(magic)), None)
    if kind is None and head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2:
        kind = "PNM"
    if kind is None:
        return "not an image: unrecognised content (expected PNG, JPEG, TIFF or DICOM)"
    if kind == "PNG":
        if len(head) < 33 or head[12:16] != b"IHDR":
            return "truncated or corrupt PNG (no IHDR header)"
        if (problem := _png_depth_problem(head)) is not None:
            return problem
        if tail[-12:][4:8] != b"IEND":
            return "truncated PNG (the file ends before its IEND chunk)"
    if kind == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    return None


def _png_depth_problem(head: bytes) -> str | None:
    """1-, 2- and 4-bit PNGs decode to 8 bits in OpenCV, hiding that they hold 2-16 grey levels."""
    depth = head[24]
    if depth < 8:
        return f"{depth}-bit PNG: too few grey levels for a radiograph (expected 8- or 16-bit)"
    return None


def _check_dicom(path: Path) -> str | None:
    try:
        import pydicom
    except ImportError:
        return _DICOM_HINT
    try:  # large values (the pixels) are not read, only located
        ds = pydicom.dcmread(path, force=True, defer_size=1024)
    except Exception as exc:  # pydicom raises many types on corrupt files
        return f"cannot parse DICOM: {_one_line(exc)}"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "DICOM file has no pixel data"
    return None


# ------------------------------------------------------------------------------------ decoding

def _read_raster(path: Path, data: bytes, exclude: Sequence[Box] = ()) -> np.ndarray:
    if data.startswith(PNG_MAGIC) and len(data) >= 33 and (problem := _png_depth_problem(data[:33])):
        raise InputError(path, problem)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(path, "cannot decode image (truncated, corrupt or unsupported format)")
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1 or channels == 2:  # gray (+ alpha)
            img = img[:, :, 0]
        elif channels in (3, 4):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY)
        else:
            raise InputError(path, f"unexpected number of channels: {channels}")
    if img.ndim != 2 or img.size == 0:
        raise InputError(path, f"unexpected image shape {img.shape}")
    return _to_unit(path, img, exclude)


def window(img: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES,
           exclude: np.ndarray | None = None) -> np.ndarray:
    """Map the robust intensity range (percentiles) linearly to [0, 1], clipping the tails.

    Percentiles come from a strided subsample: same answer to a grey level, several times faster.
    ``exclude``: a boolean mask of pixels that do not count (burned-in markers), unless it covers
    (nearly) everything.
    """
    sample = _sample(img)
    if exclude is not None and exclude.any():
        kept = sample[~_sample(exclude)]
        sample = kept if kept.size >= 16 else sample
    lo, hi = np.percentile(sample, percentiles)
    out = img.astype(np.float32)
    if hi <= lo:  # flat image: nothing to window
        return np.zeros_like(out)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _read_dicom(path: Path, data: bytes, exclude: Sequence[Box] = ()) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise InputError(path, _DICOM_HINT) from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise InputError(path, f"cannot parse DICOM: {_one_line(exc)}") from None
    if "PixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise InputError(path, f"cannot decode DICOM pixel data: {_one_line(exc)}") from None
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour secondary capture: pydicom gives RGB
        arr = arr[0] if arr.ndim == 4 else arr
        return _to_unit(path, cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY), exclude)
    if arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    try:
        values = apply_modality_lut(arr, ds)
        has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
        if has_voi:
            lo, hi = _voi_output_range(ds)
            values = apply_voi_lut(values, ds)
    except Exception as exc:
        raise InputError(path, f"invalid DICOM LUT/window: {_one_line(exc)}") from None
    if has_voi and hi > lo:
        out = np.clip((np.asarray(values, np.float32) - lo) / (hi - lo), 0.0, 1.0)
    else:
        values = np.asarray(values)
        out = window(values, exclude=box_mask(values.shape, exclude) if exclude else None)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32, copy=False)


def _to_unit(path: Path, arr: np.ndarray, exclude: Sequence[Box] = ()) -> np.ndarray:
    """8-bit: plain /255 (already display-ready). 16-bit: robust window (raw detector range)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255)
    if arr.dtype == np.uint16:
        return window(arr, exclude=box_mask(arr.shape, exclude) if exclude else None)
    raise InputError(path, f"unexpected bit depth: {arr.dtype} (expected 8- or 16-bit)")


def _voi_output_range(ds: Any) -> tuple[float, float]:
    """The value range ``apply_voi_lut`` maps into (PS3.3 C.11.2), as pydicom computes it."""
    get = ds.get
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits_stored = int(get("BitsStored", 16))
    if get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    elif int(get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits_stored - 1)
    else:
        lo, hi = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    slope, intercept = get("RescaleSlope"), get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _sample(img: np.ndarray, target: int = 65_536) -> np.ndarray:
    """A strided ~``target``-pixel view: enough for percentiles/median to a grey level, and cheap."""
    step = max(1, int(np.ceil(np.sqrt(img.size / target))))
    return img[::step, ::step]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 (rounded, clipped); uint8 passes through unchanged."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the long side to ``size`` keeping the aspect ratio, centre, pad with 0 -> uint8.

    Squashing a 600x1000 wrist into a square would distort bone shapes differently per image;
    padding keeps geometry comparable. INTER_AREA when shrinking (no aliasing), linear when
    growing. Resizing happens in float before quantising, so no precision is lost twice.
    """
    if img.ndim != 2:
        raise ValueError(f"letterbox expects a 2-D grayscale image, got shape {img.shape}")
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    src = img if img.dtype == np.uint8 else img.astype(np.float32, copy=False)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(src, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else src
    out = np.zeros((size, size), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = to_uint8(resized)
    return out


def read_masked(path: ImageSource, boxes_text: str | Sequence[Box], masking: str, name: str = "image bytes") -> np.ndarray:
    """Decode with the window chosen outside the boxes, then mask them (float [0, 1], full size).

    ``off`` is the untouched image: markers stay and take part in the window, as before masking existed.
    """
    if masking not in MASKING_MODES:
        raise ValueError(f"unknown masking mode {masking!r} (expected one of {', '.join(MASKING_MODES)})")
    boxes = parse_boxes(boxes_text) if isinstance(boxes_text, str) else list(boxes_text)
    img = read_image(path, exclude=boxes if masking != "off" else (), name=name)
    return mask_text(img, boxes, masking)


def prepare(path: ImageSource, boxes_text: str | Sequence[Box], size: int, masking: str,
            name: str = "image bytes") -> np.ndarray:
    """The whole chain the cache runs once per image: decode -> mask text -> letterbox (uint8)."""
    return letterbox(read_masked(path, boxes_text, masking, name), size)
