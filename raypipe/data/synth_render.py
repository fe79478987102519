"""Drawing one synthetic radiograph (``render``): anatomy in a canonical frame, a fracture where planned,
casts and metal, the film's transform, 16-bit windowing, noise and a burned-in text marker. The plan of
what to draw (patients, ages, labels) is ``data/synth.py``'s; this module only draws it.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

FRACTURE, METAL, TEXT = 3, 4, 8  # YOLO classes of the published data set
Box = tuple[int, float, float, float, float]
# Carpals in ossification order: capitate, hamate, triquetrum, lunate, scaphoid, trapezium, trapezoid,
# pisiform. Columns: typical onset age (years), x across the carpus (0 = ulnar, 1 = radial side),
# y from the radius (0) to the metacarpals (1), relative size.
CARPALS = np.array([
    [1.0, 0.52, 0.66, 1.10], [1.5, 0.27, 0.66, 0.95], [3.0, 0.13, 0.30, 0.75], [4.0, 0.45, 0.22, 0.85],
    [5.5, 0.76, 0.28, 0.90], [6.5, 0.93, 0.70, 0.75], [7.5, 0.74, 0.74, 0.65], [11.0, 0.05, 0.45, 0.50],
])


def _tube(layer: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], hw0: float, hw1: float,
          cort: float, cval: float, mval: float) -> None:
    """A long bone from ``p0`` to ``p1`` whose half-width flares from hw0 to hw1 near p1 (metaphysis):
    cortex polygon filled, then the medulla inside it, so the cortex shows as a bright rim."""
    t = np.linspace(0.0, 1.0, 14)[:, None]
    a, b = np.array(p0), np.array(p1)
    centre = a + (b - a) * t
    normal = np.array([-(b - a)[1], (b - a)[0]]) / (np.hypot(*(b - a)) + 1e-9)
    hw = hw0 + (hw1 - hw0) * t ** 2.5
    for half, val in ((hw, cval), (np.maximum(hw - cort * (1 - 0.5 * t), 0.3), mval)):
        poly = np.concatenate([centre + normal * half, (centre - normal * half)[::-1]])
        cv2.fillPoly(layer, [np.round(poly * 16).astype(np.int32)], val, cv2.LINE_8, 4)


def _dome(layer: np.ndarray, c: tuple[float, float], ax: tuple[float, float], angle: float, cort: float,
          cval: float, mval: float, full: bool = False) -> None:
    """An ossification centre: an upper half-ellipse (epiphysis) or full ellipse (carpal) with a rim."""
    for (a, b), val in (((ax[0], ax[1]), cval), ((ax[0] - cort, ax[1] - cort), mval)):
        if a > 0.5 and b > 0.5:
            cv2.ellipse(layer, (round(c[0] * 16), round(c[1] * 16)), (round(a * 16), round(b * 16)), angle,
                        0 if full else 180, 360, val, -1, cv2.LINE_8, 4)


def _break(layer: np.ndarray, x: float, y: float, half: float, tilt: float, angle: float,
           shift: tuple[float, float], gap: float, rng: np.random.Generator, dark: float = 0.85) -> np.ndarray:
    """Cut ``layer`` along a line through (x, y); rotate/shift the distal (upper) fragment and carve a
    jagged dark fracture line. Overlap of the fragments adds up, like an impaction band."""
    h, w = layer.shape
    yy, xx = np.ogrid[:h, :w]
    distal = (yy < y + (xx - x) * math.tan(math.radians(tilt))).astype(np.float32)
    m = cv2.getRotationMatrix2D((x + half * np.sign(angle), y), angle, 1.0)
    m[:, 2] += shift
    out = layer * (1 - distal) + cv2.warpAffine(layer * distal, m, (w, h), flags=cv2.INTER_LINEAR)
    if gap > 0:
        xs = np.linspace(x - half * 1.3, x + half * 1.3, 7)
        ys = y + (xs - x) * math.tan(math.radians(tilt)) + rng.normal(0, gap * 0.6, 7)
        mask = np.zeros_like(layer)
        cv2.polylines(mask, [np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)], False, 1.0,
                      max(1, round(gap)), cv2.LINE_8, 4)
        out *= 1 - dark * mask
    return out


def _box(points: np.ndarray, m: np.ndarray, w: int, h: int, cls: int) -> Box | None:
    """YOLO box (normalised) of ``points`` after the image transform ``m``, clipped to the image."""
    p = np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]
    x0, y0 = np.clip(p.min(0), 0, [w, h])
    x1, y1 = np.clip(p.max(0), 0, [w, h])
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth random field: coarse Gaussian grid upsampled (texture at scale ``cell`` px)."""
    grid = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def render(rng: np.random.Generator, plan: dict[str, Any], img: dict[str, Any]) -> tuple[np.ndarray, list[Box]]:
    """One radiograph: attenuation drawn in a canonical left-hand frame (fingers up, radius on the
    right), then mirrored/rotated, windowed into 16 bit, noised and stamped with a text marker."""
    h = round(plan["height"] * rng.uniform(0.9, 1.1))
    w = round(plan["width"] * rng.uniform(0.9, 1.1))
    age, body, frac = img["age"], plan["body"], img["fracture"]
    spread = {1: 1.0, 2: 0.12, 3: 0.55}[img["projection"]]  # how far apart radius and ulna project
    lat = img["projection"] == 2
    grow = min(age, 18.0) / 18.0
    s = 0.82 * (0.45 + 0.55 * grow ** 0.7) * body["scale"] * rng.uniform(0.98, 1.02)
    dens = body["density"] * (0.8 + 0.2 * grow) * (0.7 if img["osteopenia"] else 1.0)
    cval, mval = 0.85 * dens, 0.32 * dens
    cort = (0.24 + 0.22 * grow) * (0.6 if img["osteopenia"] else 1.0)  # cortex share of shaft half-width
    # physis width in px: open (2+ px at 64 px) until shortly before closure, then closing fast
    gap = 0.06 * h * s * max(0.0, 1.0 - age / body["closure"]) ** 0.4
    cx, yp = w * (0.5 + rng.normal(0, 0.03)), h * (0.5 + rng.normal(0, 0.03))
    wf = 0.8 + 0.2 * spread
    r_meta, r_shaft = 0.13 * w * s * wf, 0.075 * w * s * wf
    u_meta, u_shaft = 0.075 * w * s * wf, 0.055 * w * s * wf
    d = (0.30 * spread + 0.03) * w * s
    xr, xu = cx + d / 2, cx - d / 2
    yu = yp + h * s * (0.02 + body["ulnar_variance"])
    radius, ulna, hand = (np.zeros((h, w), np.float32) for _ in range(3))
    _tube(radius, (xr - 0.05 * w * s * spread, 1.15 * h), (xr, yp), r_shaft, r_meta, cort * r_shaft, cval, mval)
    _tube(ulna, (xu + 0.02 * w * s * spread, 1.15 * h), (xu, yu), u_shaft, u_meta, cort * u_shaft, cval, mval)
    if gap > 0:  # zone of provisional calcification: bright seam under each open physis
        for x, y, hw in ((xr, yp, r_meta), (xu, yu, u_meta)):
            cv2.line(radius if x == xr else ulna, (round((x - hw * 0.9) * 16), round(y * 16)),
                     (round((x + hw * 0.9) * 16), round(y * 16)), cval * 0.5, 1, cv2.LINE_8, 4)
    # distal epiphyses: radius ossifies at ~1 y, ulna at ~6 y; both widen to the metaphysis
    eg = float(np.clip((age - 0.8) / 7, 0, 1))
    eh_r = 0.05 * h * s * (0.4 + 0.6 * eg)
    if age > 0.8:
        ew = r_meta * (1.0 if gap == 0 else 0.3 + 0.65 * eg)
        _dome(radius, (xr + 0.1 * r_meta * spread * eg, yp - gap), (ew, eh_r), 8.0 if lat else -14 * eg,
              max(1.0, cort * r_shaft * 0.7), cval * 0.9, mval)
        if not lat and eg > 0.5:  # radial styloid
            tri = np.array([[xr + r_meta * 0.45, yp - gap], [xr + r_meta * 1.02, yp - gap],
                            [xr + r_meta * 0.95, yp - gap - eh_r * 1.3 * eg]])
            cv2.fillPoly(radius, [np.round(tri * 16).astype(np.int32)], mval * 1.2, cv2.LINE_8, 4)
    ug = float(np.clip((age - body["ulna_onset"]) / 5, 0, 1))
    if ug > 0:
        _dome(ulna, (xu, yu - gap), (u_meta * (0.3 + 0.7 * ug), 0.035 * h * s * (0.5 + 0.5 * ug)), 0.0,
              max(1.0, cort * u_shaft * 0.7), cval * 0.9, mval)
    # carpals appear one by one (0 at ~1 y, 8 by ~12 y) and grow; in the lateral view they overlap
    yc, ch = yp - gap - eh_r - 0.012 * h * s, 0.17 * h * s
    mid = (xr + xu) / 2
    half = max(spread * (d / 2 + 0.8 * r_meta), 1.1 * r_meta)
    for (_, px, py, size), onset, ang in zip(CARPALS, body["onset"], body["carpal_angle"], strict=True):
        if age > onset:
            r = 0.09 * w * s * size * (0.3 + 0.7 * min(1.0, (age - onset) / 6))
            _dome(hand, (mid + (px - 0.5) * 2 * half, yc - py * ch), (r * 1.1, r * 0.85), ang,
                  max(1.0, r * 0.25), cval * 0.8, mval, full=True)
    ym = yc - ch * 1.05
    for px, ang, hw in ((0.12, -10, 0.030), (0.33, -4, 0.032), (0.55, 0, 0.034), (0.76, 5, 0.032), (0.98, 26, 0.036)):
        thumb = px > 0.9  # starts lower, at the trapezium; short metacarpal, then the phalanx
        base = (mid + (px - 0.5) * 2.2 * half, ym + (ch * 0.3 if thumb else 0))
        a = math.radians(ang * (0.35 + 0.65 * spread))
        unit = np.array([math.sin(a), -math.cos(a)])
        mc = hw * w * s * wf
        length = 0.28 * h * s if thumb else 0.6 * h
        tip = tuple(np.array(base) + unit * length)
        _tube(hand, tip, base, mc, mc * 1.3, cort * mc, cval, mval)
        if thumb:
            joint = np.array(tip) + unit * 0.02 * h * s
            _tube(hand, tuple(joint + unit * 0.5 * h), tuple(joint), mc * 0.9, mc * 1.2, cort * mc, cval, mval)
            thumb_axis = (np.array(base) + unit * 0.3 * h * s, ang * (0.35 + 0.65 * spread))
    boxes: list[np.ndarray] = []
    if frac:  # the break, drawn in the canonical frame; its box follows the same transform as pixels
        sev = frac["severity"]
        f_ang = (-frac["angle_lat"] if lat else frac["angle_ap"] * spread) * sev
        f_shift = (-frac["shift_lat"] if lat else frac["shift_ap"] * spread) * r_meta * sev
        if frac["kind"] in ("sh1", "sh2") and gap > 0:
            yf = yp - gap / 2
            radius = _break(radius, xr, yf, r_meta, 0.0, f_ang * 0.5, (f_shift, 0.0), 0, rng)
            if frac["kind"] == "sh2":  # Thurston-Holland metaphyseal corner
                side = 1 if f_shift >= 0 else -1
                cv2.line(radius, (round((xr + side * r_meta * 0.2) * 16), round(yp * 16)),
                         (round((xr + side * r_meta) * 16), round((yp + 0.05 * h * s) * 16)), 0.0,
                         max(2, round(0.03 * w)), cv2.LINE_8, 4)
        else:
            yf = yp + frac["level"] * h * s
            big = frac["kind"] != "buckle"
            # sized to stay visible at the demo's 64 px (a 256 px film shrinks 4x): a gap of 2+ pixels there
            radius = _break(radius, xr, yf, r_meta, frac["tilt"], f_ang, (f_shift, 0.0),
                            max(3.0, 0.06 * h) if big else 0.0, rng, 0.6 + 0.4 * sev)
            if not big:  # torus: cortex buckles outward on both sides, plus a sclerotic band
                hwf = r_shaft + (r_meta - r_shaft) * 0.6
                for sgn in (-1, 1):
                    _dome(radius, (xr + sgn * hwf, yf), (0.06 * w * s * sev + 3, 0.06 * h * s * sev + 3), 0, 0.0,
                          cval, cval, full=True)
                cv2.line(radius, (round((xr - hwf) * 16), round(yf * 16)), (round((xr + hwf) * 16),
                         round(yf * 16)), cval * 1.2 * sev, max(2, round(0.025 * h)), cv2.LINE_8, 4)
        dy = 0.05 * h * s + 0.02 * h
        boxes.append(np.array([[xr - r_meta * 1.3, yf - dy], [xr + r_meta * 1.3, yf + dy]]))
        if frac["ulna"] == "styloid" and ug > 0:
            ulna = _break(ulna, xu - u_meta * 0.4, yu - gap - 0.02 * h * s, u_meta * 0.6, 20.0, 6.0,
                          (-0.01 * w * sev, -0.01 * h * sev), max(1.0, 0.01 * h), rng, 0.35 + 0.5 * sev)
            boxes.append(np.array([[xu - u_meta * 1.5, yu - gap - 0.06 * h * s], [xu, yu - gap + 0.02 * h]]))
        elif frac["ulna"]:
            yfu = yu + (frac["level"] + 0.01) * h * s
            ulna = _break(ulna, xu, yfu, u_meta, -frac["tilt"], f_ang * 0.7, (f_shift * 0.4, 0.0),
                          max(1.0, 0.012 * h), rng, 0.35 + 0.5 * sev)
            boxes.append(np.array([[xu - u_meta * 1.4, yfu - dy], [xu + u_meta * 1.4, yfu + dy]]))
    bone = cv2.GaussianBlur(radius + ulna + hand, (0, 0), 0.6)
    bone *= 1 + 0.08 * cv2.GaussianBlur(_noise(rng, h, w, 3), (0, 0), 0.8)  # trabecular mottle
    # soft tissue envelope: forearm widening into the hand (and thumb in AP)
    hf = (d / 2 + 0.8 * r_meta + 0.09 * w * s) if not lat else (r_meta + 0.14 * w * s)
    ys = np.array([1.2 * h, yp, ym, -0.2 * h])
    widths = hf * np.array([1.1, 0.95, 1.05, 1.3 if not lat else 0.9])
    poly = np.concatenate([np.stack([cx - widths, ys], 1), np.stack([cx + widths, ys], 1)[::-1]])
    soft = np.zeros((h, w), np.float32)
    tissue = 0.3 * (0.9 + 0.2 * grow)
    cv2.fillPoly(soft, [np.round(poly * 16).astype(np.int32)], tissue, cv2.LINE_8, 4)
    if not lat:
        centre, tilt = thumb_axis
        _dome(soft, tuple(centre), (hf * 0.3, 0.4 * h), tilt, 0.0, tissue, tissue, full=True)
    soft = cv2.GaussianBlur(soft, (0, 0), 0.012 * w + 1) * (1 + 0.06 * _noise(rng, h, w, 24))
    atten = soft + bone
    if img["cast"]:  # a plaster cast: a wide, faintly textured band over forearm and wrist
        cast = np.zeros((h, w), np.float32)
        cv2.rectangle(cast, (round(cx - hf * 1.4), round(ym)), (round(cx + hf * 1.4), h), 0.25, -1)
        atten += cv2.GaussianBlur(cast, (0, 0), 2) * (1 + 0.15 * _noise(rng, h, w, 3))
    if img["metal"]:  # a volar plate with screws, or two K-wires, far denser than bone
        metal = np.zeros((h, w), np.float32)
        y0, y1 = yp + 0.03 * h * s, yp + 0.3 * h * s
        if rng.random() < 0.6:
            pts = np.array([[xr - r_shaft * 0.5, y0], [xr + r_shaft * 0.5, y1]])
            cv2.rectangle(metal, (round(pts[0, 0]), round(y0)), (round(pts[1, 0]), round(y1)), 4.0, -1)
            for y in np.linspace(y0 + 4, y1 - 4, 4):
                cv2.line(metal, (round(xr - r_meta), round(y)), (round(xr + r_meta), round(y)), 4.0, 2)
            pts = np.array([[xr - r_meta, y0], [xr + r_meta, y1]])
        else:
            pts = np.array([[xr + r_meta, yp - gap - eh_r], [xr - r_meta * 1.4, y1]])
            for dx in (0.0, 0.5 * r_meta):
                cv2.line(metal, (round(pts[0, 0] - dx), round(pts[0, 1])), (round(pts[1, 0] - dx), round(pts[1, 1])), 4.0, 2)
        atten += cv2.GaussianBlur(metal, (0, 0), 0.6)
        boxes.append(np.vstack([pts, [[pts[0, 0] - 3, pts[0, 1] - 3], [pts[1, 0] + 3, pts[1, 1] + 3]]]))
    # mirror right hands, then rotate slightly about the centre; the same matrix moves the boxes
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(np.clip(rng.normal(0, 5), -12, 12)), 1.0)
    if plan["flip"]:
        m = m @ np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]])
    atten = cv2.warpAffine(atten, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    classes = [FRACTURE] * (len(boxes) - bool(img["metal"])) + [METAL] * bool(img["metal"])
    labels = [b for pts, c in zip(boxes, classes, strict=True) if (b := _box(pts, m, w, h, c))]
    # exposure: a random window over the 16-bit range, heel-effect gradient, quantum noise
    lo, hi = rng.uniform(0, 0.12) * 65535, rng.uniform(0.4, 0.95) * 65535
    v = np.clip(atten / rng.uniform(1.2, 1.7), 0, 1.6) ** rng.uniform(0.75, 1.3)
    pix = (lo + (hi - lo) * v) * (1 + rng.uniform(-0.1, 0.1) * (np.arange(h, dtype=np.float32)[:, None] / h - 0.5))
    pix += rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(1.5, 4) * np.sqrt(pix + 100)
    pix = np.clip(pix, 0, 65535).astype(np.uint16)
    forced = img.get("marker_corner")  # a shortcut set: the label decides the marker (-1: none)
    drawn = rng.random() < 0.9  # drawn first in every mode: the draws after it stay the same
    if forced is not None:
        drawn = forced >= 0
    if drawn:  # burned-in side marker: bright box with a dark glyph, in a corner
        bw, bh = round(w * rng.uniform(0.08, 0.14)), round(h * rng.uniform(0.05, 0.09))
        corner = rng.integers(4)  # drawn in both modes: the draws after it stay the same
        if forced is not None:
            corner = forced
        x0 = round(w * rng.uniform(0.02, 0.08)) if corner % 2 == 0 else w - bw - round(w * rng.uniform(0.02, 0.08))
        y0 = round(h * rng.uniform(0.02, 0.06)) if corner < 2 else h - bh - round(h * rng.uniform(0.02, 0.06))
        pix[y0:y0 + bh, x0:x0 + bw] = round(rng.uniform(0.8, 1.0) * 65535)
        glyph = img["row"]["laterality"] if rng.random() < 0.7 else str(rng.choice(["PA", "AP", "LAT", "S"]))
        scale = 0.8 * bh / cv2.getTextSize(glyph, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][1]
        scale = min(scale, 0.85 * bw / cv2.getTextSize(glyph, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0])
        ink = np.zeros((bh, bw), np.uint8)  # cv2 5 draws text on 8-bit images only
        cv2.putText(ink, glyph, (1, bh - max(1, bh // 8)), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                    max(1, round(bh / 8)), cv2.LINE_8)
        pix[y0:y0 + bh, x0:x0 + bw][ink > 0] = round(lo)
        labels.append((TEXT, (x0 + bw / 2) / w, (y0 + bh / 2) / h, bw / w, bh / h))
    return pix, labels
