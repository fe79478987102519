"""Synthetic pediatric wrist radiographs in the exact GRAZPEDWRI-DX on-disk layout.

Why: the real data set cannot be fetched at run time, yet every adapter, cache, target and training
path must run end to end on data with the real quirks (BOM, blank flags, 16-bit PNGs spread over
``images_part1..4``, YOLO labels under ``folder_structure``) and with signal a small CNN can learn:
age from bone size, cortical thickness, carpal ossification and physis closure; fracture from a
cortical break. Drawing is procedural (numpy + cv2), seeded per patient, so a seed gives byte-identical
output however many processes render it.

``shortcut="marker"`` makes a set whose label only a text marker's place tells: no fracture is drawn,
``fracture_visible`` is a fair coin per image, and every image has a marker, top-left for "fracture",
bottom-right for "normal" (casts, metal and follow-ups stay as planned, so independent of the label).
A model that learns anything on it learned the marker: the test of masking (tests/e2e).
``shortcut="presence"`` is the same with the marker on "fracture" images only (any corner), as in the
GRAZPEDWRI-DX group where every negative image had a text box the other way round: a model with global
pooling learns *that* a marker is there within a few epochs, where learning *where* it is takes many. The
e2e tests train on it, unmasked, when they need a model above chance in a CI budget.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from raypipe import fsio
from raypipe.data.synth_render import CARPALS, render
from raypipe.errors import InputError

COLUMNS = [
    "filestem", "patient_id", "study_number", "timehash", "gender", "age", "laterality", "projection",
    "initial_exam", "ao_classification", "cast", "diagnosis_uncertain", "osteopenia", "fracture_visible",
    "metal", "pixel_spacing", "device_manufacturer",
]
FLAGS = ("initial_exam", "cast", "diagnosis_uncertain", "osteopenia", "fracture_visible", "metal")
LABELS_DIR = Path("folder_structure") / "yolov5" / "labels"
# Fracture kinds and the AO pediatric code each one is published under.
AO_RADIUS = {"buckle": "23r-M/2.1", "complete": "23r-M/3.1", "sh2": "23r-E/2.1", "sh1": "23r-E/1.1"}
AO_ULNA = {"styloid": "23u-E/7", "meta": "23u-M/2.1"}
SHORTCUTS = (None, "marker", "presence")


def synthesize(out: Path, patients: int = 300, seed: int = 0, height: int = 256, width: int = 160,
               progress: Callable[[int, int], None] | None = None, *, workers: int | None = None,
               shortcut: str | None = None) -> dict:
    """Write a GRAZPEDWRI-DX-layout data set of ``patients`` synthetic patients into ``out``.

    Everything goes to a temporary sibling renamed onto ``out`` at the end, so a crash leaves no
    half-written data set. ``progress(done, total)`` counts images. ``workers`` (default: 1 for small
    sets, else up to 4 threads) never changes the bytes written, since every patient has its own
    random stream. Returns counts (``fractures`` and ``metal`` count images) and the seconds taken.
    ``shortcut``: ``"marker"`` for a set whose label only the marker's corner carries (module docstring).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "already exists and is not empty")
    if patients < 1 or height < 32 or width < 32:
        raise InputError(out, "synthesize needs patients >= 1 and images of at least 32x32 pixels")
    if shortcut not in SHORTCUTS:
        raise InputError(out, f"unknown shortcut {shortcut!r} (expected 'marker', 'presence' or none)")
    start = time.perf_counter()
    plans = _plan(seed, patients, height, width)
    if shortcut is not None:
        _marker_only(plans, seed, shortcut)
    rows = [img["row"] for p in plans for img in p["images"]]
    total = len(rows)
    if workers is None:
        workers = 1 if patients < 40 else max(1, min(4, os.cpu_count() or 1))
    with fsio.atomic_dir(out) as tmp:
        for part in range(1, 5):
            (tmp / f"images_part{part}").mkdir()
        (tmp / LABELS_DIR).mkdir(parents=True)
        done = 0
        if workers == 1:
            for plan in plans:
                for _ in _render_patient(tmp, plan):
                    done += 1
                    if progress:
                        progress(done, total)
        else:
            size = max(1, math.ceil(patients / (workers * 6)))
            chunks = [plans[i:i + size] for i in range(0, patients, size)]
            # threads, not processes: cv2 drawing/blur/PNG encoding and numpy release the GIL (as fast as
            # a process pool here), with no fork of a parent running Ray/torch threads and no re-import
            # of the caller's __main__ that spawn/forkserver would need
            with ThreadPoolExecutor(workers) as pool:
                try:
                    for fut in as_completed([pool.submit(_render_chunk, tmp, c) for c in chunks]):
                        done += fut.result()
                        if progress:
                            progress(done, total)
                except BaseException:  # a failure or Ctrl-C: do not render the rest first
                    pool.shutdown(cancel_futures=True)
                    raise
        with open(tmp / "dataset.csv", "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows([[r[c] for c in COLUMNS] for r in rows])
    return {
        "images": total,
        "patients": patients,
        "studies": sum(len({i["row"]["study_number"] for i in p["images"]}) for p in plans),
        "fractures": sum(r["fracture_visible"] == "1" for r in rows),
        "metal": sum(r["metal"] == "1" for r in rows),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _flag(value: bool) -> str:
    return "1" if value else ""


def _plan(seed: int, patients: int, height: int, width: int) -> list[dict[str, Any]]:
    """All metadata, drawn up front so the image count is known and rows never depend on rendering."""
    plans = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(patients)):
        meta_seed, pixel_seed = child.spawn(2)
        rng = np.random.default_rng(meta_seed)
        pid = f"{i + 1:04d}"
        sex = str(rng.choice(["M", "F", "O"], p=[0.52, 0.475, 0.005]))
        body = {  # anatomy shared by all of a patient's images
            "scale": rng.uniform(0.96, 1.04), "density": rng.uniform(0.9, 1.1),
            "closure": (15.2 if sex == "F" else 16.8) + rng.normal(0, 0.6),
            "onset": CARPALS[:, 0] * np.exp(rng.normal(0, 0.12, len(CARPALS))),
            "ulna_onset": rng.normal(6.0, 0.7), "ulnar_variance": rng.normal(0.0, 0.012),
            "carpal_angle": rng.uniform(-40, 40, len(CARPALS)),
        }
        side, osteopenia = str(rng.choice(["L", "R"])), bool(rng.random() < 0.01)
        age = round(0.2 + 18.8 * rng.beta(2.6, 2.0), 1)
        fracture: dict[str, Any] | None = None
        metal = False
        images = []
        for study in range(1, int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])) + 1):
            if study > 1:
                age = min(19.0, round(age + rng.exponential(0.4), 1))
            # Follow-ups and casts come with normal findings as often as with fractures (a suspected,
            # radiographically occult fracture is casted and re-imaged too): neither the study number, the
            # initial-exam flag nor a cast may tell the label (tests/data/test_synth.py checks each).
            follow_up = study > 1 and rng.random() < 0.8
            if not follow_up:
                p_frac = 0.64 if age < 10 else 0.56 if age < 15 else 0.38
                fracture = _fracture(rng, age, body) if rng.random() < p_frac else None
            metal = bool(rng.random() < (0.06 if fracture else 0.01)) or (follow_up and metal)  # plates stay
            common = {
                "patient_id": pid, "study_number": str(study), "timehash": str(rng.integers(10**9, 10**10)),
                "gender": sex, "age": f"{age:.1f}", "laterality": side, "initial_exam": _flag(not follow_up),
                "ao_classification": "; ".join(fracture["codes"]) if fracture else "",
                "cast": _flag(rng.random() < (0.45 if follow_up else 0.12)),
                "diagnosis_uncertain": _flag(fracture is not None and rng.random() < 0.03),
                "osteopenia": _flag(osteopenia), "fracture_visible": _flag(fracture is not None),
                "metal": _flag(metal), "pixel_spacing": str(rng.choice(["0.1", "0.1", "0.1", "0.125", "0.144"])),
                "device_manufacturer": str(rng.choice(["Agfa", "Agfa", "Agfa", "Siemens", "Philips"])),
            }
            for proj in [1, 2] + ([3] if rng.random() < 0.01 else []):
                stem = (f"{pid}_{common['timehash']}_{study:02d}_WRI-{side}{proj}_"
                        f"{sex}{round(age * 10):03d}")
                images.append({"row": {"filestem": stem, "projection": str(proj), **common},
                               "age": age, "projection": proj, "fracture": fracture, "metal": metal,
                               "cast": common["cast"] == "1", "osteopenia": osteopenia})
        plans.append({"part": 1 + i * 4 // patients, "seed": pixel_seed, "body": body, "flip": side == "R",
                      "height": height, "width": width, "images": images})
    return plans


def _marker_only(plans: list[dict[str, Any]], seed: int, mode: str = "marker") -> None:
    """Relabel a plan so that only the marker's corner carries the label (see the module docstring).

    Its own random stream, so the default plan's draws (and bytes) are untouched. The coin is per
    image and independent of everything planned, casts and follow-ups included.
    """
    rng = np.random.default_rng([seed, 0x5C])
    for plan in plans:
        for img in plan["images"]:
            label = bool(rng.random() < 0.5)
            img["fracture"] = None  # nothing drawn
            if mode == "marker":
                img["marker_corner"] = 0 if label else 3  # top-left | bottom-right
            else:  # presence: a marker in any corner on fractures, none on normals
                img["marker_corner"] = int(rng.integers(4)) if label else -1
            img["row"] = {**img["row"], "fracture_visible": _flag(label), "diagnosis_uncertain": "",
                          "ao_classification": AO_RADIUS["buckle"] if label else ""}


def _fracture(rng: np.random.Generator, age: float, body: dict) -> dict[str, Any]:
    """One injury: kind, level and displacement in both views, kept through follow-up studies."""
    open_physis = age < body["closure"] - 0.5
    kinds = ["buckle", "complete", "sh2", "sh1"] if open_physis else ["buckle", "complete"]
    probs = [0.35, 0.35, 0.25, 0.05] if open_physis else [0.5, 0.5]
    kind = str(rng.choice(kinds, p=probs))
    ulna = None
    if rng.random() < 0.3:
        ulna = "styloid" if age > body["ulna_onset"] + 2 and rng.random() < 0.5 else "meta"
    sign = rng.choice([-1.0, 1.0])
    big = kind in ("complete", "sh2", "sh1")
    return {
        "kind": kind, "ulna": ulna, "level": rng.uniform(0.05, 0.12), "tilt": rng.uniform(-14, 14),
        "angle_ap": sign * rng.uniform(3, 10) if big else sign * rng.uniform(1, 4),
        "angle_lat": rng.uniform(8, 22) if big else rng.uniform(3, 7),
        "shift_ap": sign * rng.uniform(0.1, 0.35) if big else 0.0,
        "shift_lat": rng.uniform(0.15, 0.45) if big else 0.0,
        "codes": [AO_RADIUS[kind]] + ([AO_ULNA[ulna]] if ulna else []),
        "severity": rng.uniform(0.5, 1.0),  # subtle to obvious, so the task does not saturate
    }


def _render_chunk(root: Path, plans: list[dict[str, Any]]) -> int:
    return sum(sum(1 for _ in _render_patient(root, plan)) for plan in plans)


def _render_patient(root: Path, plan: dict[str, Any]):  # noqa: ANN202 (generator of None)
    """Render and write one patient's images, yielding after each so progress can be reported."""
    rng = np.random.default_rng(plan["seed"])
    for img in plan["images"]:
        pixels, boxes = render(rng, plan, img)
        stem = img["row"]["filestem"]
        cv2.imwrite(str(root / f"images_part{plan['part']}" / f"{stem}.png"), pixels)
        (root / LABELS_DIR / f"{stem}.txt").write_text("".join(
            f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in boxes))
        yield
