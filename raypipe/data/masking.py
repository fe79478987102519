"""Hide burned-in text markers (YOLO class 8) so that a model can use neither what they say nor where they are.

Why a mask must leave no trace: text markers are a known shortcut in GRAZPEDWRI-DX, and a patch that
shows *where* a marker was also shows *that* one was there. The first ``fill`` painted every box with
the whole-image median, soft-tissue grey on a radiograph, while markers sit on the black background:
each masked marker became a grey rectangle exactly at its place, and a model trained on a set where
only the marker's corner told the label still reached test AUROC 1.0.

``fill`` now rebuilds each (dilated) box from its own surroundings, with their texture:

1. a mirror copy of an adjacent strip of the same size that holds no box (above, below, left or
   right; the one whose far edges agree best with the pixels around the box). Mirroring continues
   edges that cross the box (skin line, cast edge) and brings the real noise and texture along;
2. a seam correction: the difference between the smoothed pixels just outside the box and the
   copy's smoothed border, spread over the box by transfinite (Coons) interpolation, so no edge
   marks the rectangle;
3. where no clean strip exists (boxes crowding each other or the image border), the ring of pixels
   around the box instead: its smooth trend, inpainted across the box, plus Gaussian noise of the
   ring's robust noise level.

What it cannot do: restore anatomy a box covered. Bone or skin under a marker is guessed from its
surroundings, and a classifier can tell such a guess from the real thing more often than chance when
the box crosses an edge (README: masking). The noise is seeded from the image content: the same input
gives the same bytes, so the image cache stays reproducible.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from raypipe.data.manifest import parse_boxes

MASKING_MODES = ("off", "fill", "blur")
DILATE = 0.1  # boxes grow by this share of their size per side (plus 2 px): YOLO boxes are drawn tight
SEAM_SIGMA = 1.5  # px: smoothing under which the seam is matched (noise must not set the correction)

Box = tuple[float, float, float, float]
Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end-exclusive


def _box_pixels(box: Box, h: int, w: int, dilate: float) -> Rect | None:
    """YOLO normalised ``cx cy bw bh`` -> clipped pixel rectangle, grown by ``dilate`` per side."""
    cx, cy, bw, bh = box
    pad_x, pad_y = max(2.0, dilate * bw * w), max(2.0, dilate * bh * h)
    x0 = int(np.floor((cx - bw / 2) * w - pad_x))
    x1 = int(np.ceil((cx + bw / 2) * w + pad_x))
    y0 = int(np.floor((cy - bh / 2) * h - pad_y))
    y1 = int(np.ceil((cy + bh / 2) * h + pad_y))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def rects(shape: tuple[int, ...], boxes: Sequence[Box], dilate: float = DILATE) -> list[Rect]:
    h, w = shape[:2]
    return [r for r in (_box_pixels(b, h, w, dilate) for b in boxes) if r is not None]


def box_mask(shape: tuple[int, ...], boxes: Sequence[Box] | str, dilate: float = DILATE) -> np.ndarray:
    """Boolean image, True inside the (dilated) boxes: exactly the pixels ``mask_text`` replaces."""
    if isinstance(boxes, str):
        boxes = parse_boxes(boxes)
    mask = np.zeros(shape[:2], bool)
    for x0, y0, x1, y1 in rects(shape, boxes, dilate):
        mask[y0:y1, x0:x1] = True
    return mask


def mask_text(img: np.ndarray, boxes: Sequence[Box] | str, mode: str, dilate: float = DILATE) -> np.ndarray:
    """Mask text boxes of a float image in [0, 1]; returns a new array (``off``: ``img`` itself).

    ``fill``: rebuild each box from its surroundings (module docstring). ``blur``: a strong Gaussian
    blur inside the box; glyphs become unreadable, but a soft blob of the marker's brightness stays
    where the marker was. It hides what a marker says, not that it is there or where: do not use it
    where marker places could tell the label. ``off``: unchanged.
    """
    if mode not in MASKING_MODES:
        raise ValueError(f"unknown masking mode {mode!r} (expected one of {', '.join(MASKING_MODES)})")
    if isinstance(boxes, str):
        boxes = parse_boxes(boxes)
    if mode == "off" or not boxes:
        return img
    found = rects(img.shape, boxes, dilate)
    if mode == "fill":
        return _fill(img, found)
    out = img.copy()
    h, w = img.shape[:2]
    for x0, y0, x1, y1 in found:
        bw, bh = x1 - x0, y1 - y0
        sigma = max(bw, bh) / 2
        # blur a context region around the box so edges blend with the surroundings
        cx0, cy0 = max(0, x0 - bw), max(0, y0 - bh)
        cx1, cy1 = min(w, x1 + bw), min(h, y1 + bh)
        region = cv2.GaussianBlur(img[cy0:cy1, cx0:cx1], (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        out[y0:y1, x0:x1] = region[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
    return out


def _fill(img: np.ndarray, found: list[Rect]) -> np.ndarray:
    src = img.astype(np.float32, copy=False)
    out = src.copy()
    unknown = np.zeros(src.shape, bool)  # no pixel of any box may be copied or measured
    for x0, y0, x1, y1 in found:
        unknown[y0:y1, x0:x1] = True
    # smoothed without the box pixels (normalised by the known pixels' weight): a bright marker two
    # pixels inside the box must not brighten the border the seam is matched to
    weight = (~unknown).astype(np.float32)
    smooth = cv2.GaussianBlur(src * weight, (0, 0), SEAM_SIGMA) / np.maximum(
        cv2.GaussianBlur(weight, (0, 0), SEAM_SIGMA), 1e-6)
    known = src[~unknown]
    lo, hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    for rect in found:
        x0, y0, x1, y1 = rect
        patch = _mirror(src, smooth, unknown, rect)
        if patch is None:
            patch = _from_ring(src, unknown, rect)
        patch += _seam(smooth, patch, rect)
        out[y0:y1, x0:x1] = np.clip(patch, lo, hi)  # no new extremes
    return out.astype(img.dtype, copy=False)


def _mirror(src: np.ndarray, smooth: np.ndarray, unknown: np.ndarray, rect: Rect) -> np.ndarray | None:
    """The mirror image of the adjacent box-free strip whose far edges best meet the box's other sides."""
    h, w = src.shape
    x0, y0, x1, y1 = rect
    bh, bw = y1 - y0, x1 - x0
    # (side, strip, flip axis): the strip just beyond that side, flipped onto the box
    candidates = [("top", (slice(y0 - bh, y0), slice(x0, x1)), 0) if y0 - bh >= 0 else None,
                  ("bottom", (slice(y1, y1 + bh), slice(x0, x1)), 0) if y1 + bh <= h else None,
                  ("left", (slice(y0, y1), slice(x0 - bw, x0)), 1) if x0 - bw >= 0 else None,
                  ("right", (slice(y0, y1), slice(x1, x1 + bw)), 1) if x1 + bw <= w else None]
    best, best_err = None, np.inf
    for side, strip, axis in filter(None, candidates):
        if unknown[strip].any():
            continue
        copy = np.flip(smooth[strip], axis)
        # its borders against the pixels beyond the box on the sides the copy did not come from
        errs = [np.abs(a - b) for name, a, b in _sides(smooth, copy, rect) if name != side]
        err = float(np.mean(np.concatenate(errs))) if errs else 0.0
        if err < best_err:
            best, best_err = np.flip(src[strip], axis).copy(), err
    return best


def _sides(smooth: np.ndarray, patch: np.ndarray, rect: Rect) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(side, patch border, the image's pixels just outside the box on that side), for the sides inside the image."""
    h, w = smooth.shape
    x0, y0, x1, y1 = rect
    out = []
    if y0 > 0:
        out.append(("top", patch[0], smooth[y0 - 1, x0:x1]))
    if y1 < h:
        out.append(("bottom", patch[-1], smooth[y1, x0:x1]))
    if x0 > 0:
        out.append(("left", patch[:, 0], smooth[y0:y1, x0 - 1]))
    if x1 < w:
        out.append(("right", patch[:, -1], smooth[y0:y1, x1]))
    return out


def _seam(smooth: np.ndarray, patch: np.ndarray, rect: Rect) -> np.ndarray:
    """A smooth correction that makes the patch meet its surroundings on every side (Coons patch of the
    border differences; a side on the image border has none)."""
    x0, y0, x1, y1 = rect
    bh, bw = y1 - y0, x1 - x0
    soft = cv2.GaussianBlur(patch, (0, 0), SEAM_SIGMA, borderType=cv2.BORDER_REPLICATE)
    diff = {"top": np.zeros(bw, np.float32), "bottom": np.zeros(bw, np.float32),
            "left": np.zeros(bh, np.float32), "right": np.zeros(bh, np.float32)}
    for side, border, outside in _sides(smooth, soft, rect):
        diff[side] = outside - border
    v = ((np.arange(bh, dtype=np.float32) + 0.5) / bh)[:, None]
    u = ((np.arange(bw, dtype=np.float32) + 0.5) / bw)[None, :]
    top, bottom, left, right = diff["top"][None], diff["bottom"][None], diff["left"][:, None], diff["right"][:, None]
    c00, c01 = (diff["top"][0] + diff["left"][0]) / 2, (diff["top"][-1] + diff["right"][0]) / 2
    c10, c11 = (diff["bottom"][0] + diff["left"][-1]) / 2, (diff["bottom"][-1] + diff["right"][-1]) / 2
    return ((1 - v) * top + v * bottom + (1 - u) * left + u * right
            - ((1 - u) * (1 - v) * c00 + u * (1 - v) * c01 + (1 - u) * v * c10 + u * v * c11))


def _from_ring(src: np.ndarray, unknown: np.ndarray, rect: Rect) -> np.ndarray:
    """Fallback: the ring's smooth trend inpainted across the box, plus noise of the ring's level.

    The ring: pixels within max(3 px, half the box's long side) of the box and outside every box,
    widened until it has some. The trend is a Gaussian blur that ignores box pixels (normalised by
    the known pixels' weight); the noise level is the robust std (1.4826 x MAD) of the ring's
    residual from that trend, so texture, not a gradient, sets it.
    """
    h, w = src.shape
    x0, y0, x1, y1 = rect
    band = max(3, round(0.5 * max(x1 - x0, y1 - y0)))
    while True:
        wx0, wy0, wx1, wy1 = max(0, x0 - band), max(0, y0 - band), min(w, x1 + band), min(h, y1 + band)
        known = ~unknown[wy0:wy1, wx0:wx1]
        if known.sum() >= 16 or (wx0, wy0, wx1, wy1) == (0, 0, w, h):
            break
        band *= 2
    if not known.any():  # boxes cover the whole image: nothing to learn from
        return np.full((y1 - y0, x1 - x0), float(np.median(src)), np.float32)
    window = src[wy0:wy1, wx0:wx1]
    weight = known.astype(np.float32)
    sigma = max(1.0, band / 3)
    blurred = cv2.GaussianBlur(window * weight, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    norm = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    trend = np.clip(np.where(norm > 1e-3, blurred / np.maximum(norm, 1e-3), 0), 0.0, 1.0)
    # Telea in 16 bit: OpenCV 5.0's float32 Telea fills holes with a +-1 checkerboard
    trend = cv2.inpaint(np.rint(trend * 65535).astype(np.uint16), (~known).astype(np.uint8), 3,
                        cv2.INPAINT_TELEA) * np.float32(1 / 65535)
    residual = (window - trend)[known]
    noise_sd = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    # seeded from the window's content and place: same image -> same bytes, other image -> other noise
    rng = np.random.default_rng([zlib.crc32(np.ascontiguousarray(window).tobytes()), x0, y0, x1, y1])
    noise = rng.standard_normal((y1 - y0, x1 - x0)).astype(np.float32) * np.float32(noise_sd)
    return trend[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] + noise
