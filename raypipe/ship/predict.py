"""Routed inference: projection -> age group -> that group's fracture champion -> decision + Grad-CAM.

Projection: the ``--projection`` argument, else the DICOM header (ViewPosition), else the file name
(GRAZPEDWRI-DX ``..._WRI-L1_...``: 1 = AP, 2 = lateral; or an ``AP`` / ``LAT`` token). Age group:
``--age`` in years with the champions' age cut points, else the age champion's prediction.
Model: the most specific champion that exists, ``<exp>.fracture-<proj>-<group>``, then
``<exp>.fracture-<proj>``, then ``<exp>.fracture``. Every model is loaded through
``models:/<name>@champion`` (the models-from-code pyfunc: no unpickling), allowed to read the local paths
this command names. The champions that route an image (the age champion and every fracture champion of
its projection) must share one age scheme, or the groups would mean different ages: predict refuses.

Text boxes come from where users keep them (ship/boxes.py) and go into the same decode -> mask ->
letterbox as training (``data.images.prepare``, in the pyfunc) and into the Grad-CAM. A champion
trained with masking that gets no boxes for an image sees its markers raw: the row says
``masked: false`` and a warning names the image.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raypipe.errors import InputError
from raypipe.ship import boxes as text_boxes
from raypipe.ship.aliases import CHAMPION
from raypipe.ship.promote import model_name

DICOM_VIEWS = {"AP": "AP", "PA": "AP", "LL": "Lat", "LAT": "Lat", "LATERAL": "Lat", "RL": "Lat"}


@dataclass
class Champion:
    name: str
    version: str
    model: Any  # the XrayClassifier python model (spec + torch module)

    @property
    def masking(self) -> str:
        return self.model.spec.get("masking", "off")

    @property
    def age_cuts(self) -> tuple[float, ...]:
        return tuple(self.model.spec.get("age_cuts", ()))

    def score(self, path: Path, boxes: str) -> dict[str, Any]:
        return self.model.score(pd.DataFrame({"image": [str(path)], "text_boxes": [boxes]})).iloc[0].to_dict()


@dataclass
class Job:
    """One image to predict, with what the command line or the ``--csv`` row says about it."""
    path: Path
    age: float | None = None
    projection: str | None = None
    text_boxes: str | None = None  # the --csv row's cell, if any


class Router:
    def __init__(self, client: MlflowClient, experiment: str) -> None:
        self.client, self.experiment = client, experiment
        self._loaded: dict[str, Champion | None] = {}
        self._cuts: dict[str, tuple[float, ...]] = {}

    def champion(self, target: str) -> Champion | None:
        name = model_name(self.experiment, target)
        if name not in self._loaded:
            try:
                version = self.client.get_model_version_by_alias(name, CHAMPION)
            except MlflowException:
                self._loaded[name] = None
            else:
                import mlflow

                from raypipe.tracking.runs import process_uris

                # models:/ resolves through mlflow's process-wide URIs; read_paths: this command reads
                # the files its user names (a served model reads none)
                with process_uris(self.client.tracking_uri):
                    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}",
                                                      model_config={"read_paths": True})
                self._loaded[name] = Champion(name, str(version.version), pyfunc.unwrap_python_model())
        return self._loaded[name]

    def age_cuts(self, projection: str) -> tuple[float, ...]:
        """The age scheme shared by the champions that route a ``projection`` image; a mix is refused."""
        if projection not in self._cuts:
            prefix = f"{self.experiment}."
            targets = [m.name.removeprefix(prefix).replace("-", "/")
                       for m in self.client.search_registered_models(f"name LIKE '{prefix}%'")]
            routing = [t for t in targets if t in ("age", "fracture", f"fracture/{projection}")
                       or t.startswith(f"fracture/{projection}/")]
            found = [c for c in map(self.champion, sorted(routing)) if c is not None]
            if not found and not any(map(self.champion, targets)):
                raise InputError(f"experiment {self.experiment}",
                                 "has no champion models: run `raypipe promote` first")
            schemes = {c.age_cuts for c in found}
            if len(schemes) > 1:
                shown = ", ".join(f"{c.name} v{c.version} {list(c.age_cuts)}" for c in found)
                raise InputError(f"experiment {self.experiment}", "its champions use different age schemes "
                                 f"(cut points: {shown}); promote them on one --age-scheme")
            self._cuts[projection] = schemes.pop() if schemes else ()  # none: fracture_model says what is missing
        return self._cuts[projection]

    def fracture_model(self, projection: str, group: int | None) -> Champion:
        candidates = ([f"fracture/{projection}/{group}"] if group is not None else []) + [
            f"fracture/{projection}", "fracture"]
        for target in candidates:
            if (found := self.champion(target)) is not None:
                return found
        raise InputError(f"experiment {self.experiment}", "no fracture champion for "
                         f"{' or '.join(candidates)}: run `raypipe promote` first")


def csv_jobs(csv: Path, age: float | None = None, projection: str | None = None) -> list[Job]:
    """``predict --csv`` rows (``image[, age, projection, text_boxes]``) as jobs; the command line's
    ``--age``/``--projection`` fill blank cells. A bad cell is one line naming its row and column."""
    if not csv.is_file():
        raise InputError(csv, "file not found")
    frame = pd.read_csv(csv, dtype={"text_boxes": str, "projection": str})
    if "image" not in frame:
        raise InputError(csv, "missing column", field="image")
    jobs = []
    for row_no, row in enumerate(frame.to_dict("records"), start=2):
        value = row.get("age")
        try:
            row_age = None if value is None or pd.isna(value) else float(value)
        except (TypeError, ValueError):
            raise InputError(csv, f"age {value!r} is not a number", row=row_no, field="age") from None
        row_proj = row.get("projection") if isinstance(row.get("projection"), str) else None
        cell = row.get("text_boxes")  # a blank cell: no boxes for this image; no column: None (not asked)
        cell = text_boxes.check_cell(cell, csv, row_no) if isinstance(cell, str) else (
            "" if "text_boxes" in frame else None)
        jobs.append(Job(csv.parent / str(row["image"]), age if row_age is None else row_age,
                        row_proj or projection, cell))
    return jobs


def projection_of(path: Path, given: str | None) -> str:
    if given:
        if given not in ("AP", "Lat"):
            raise InputError("--projection", f"use AP or Lat, got {given!r}")
        return given
    if path.suffix.lower() in (".dcm", ".dicom"):
        try:
            import pydicom

            view = str(pydicom.dcmread(path, stop_before_pixels=True).get("ViewPosition", "")).upper()
        except Exception:  # noqa: BLE001 - an unreadable header is reported below like a missing one
            view = ""
        if view in DICOM_VIEWS:
            return DICOM_VIEWS[view]
    name = path.stem.upper()
    if match := re.search(r"WRI-[LR]([12])", name):
        return "AP" if match.group(1) == "1" else "Lat"
    tokens = set(re.split(r"[^A-Z]+", name))
    if tokens & {"AP", "PA"}:
        return "AP"
    if tokens & {"LAT", "LATERAL"}:
        return "Lat"
    raise InputError(path, "projection unknown: pass --projection AP|Lat (no DICOM ViewPosition or "
                     "name hint)", field="projection")


def age_group(router: Router, path: Path, age: float | None, projection: str,
              boxes: str) -> tuple[int | None, str, Champion | None]:
    """(group, where it came from, the age champion if it decided)."""
    cuts = router.age_cuts(projection)
    if age is not None:
        if not 0 <= age <= 25:
            raise InputError("--age", f"expected years in 0..25, got {age}")
        group = int(np.searchsorted(np.asarray(cuts), age, side="right")) if cuts else None
        return group, "given", None
    age_model = router.champion("age")
    if age_model is None:
        return None, "unknown (no --age, no age champion)", None
    out = age_model.score(path, boxes)
    names = age_model.model.spec["class_names"]
    return names.index(out["label"]), f"age champion v{age_model.version}", age_model


def gradcam_png(champion: Champion, path: Path, boxes: str, out: Path) -> Path:
    """Grad-CAM of the champion's decision on the input it scored (masked alike), at the original resolution."""
    from raypipe.explain import gradcam

    spec = champion.model.spec
    return gradcam.save_png(gradcam.overlay(champion.model.model, path, spec["image_size"], champion.masking,
                                            boxes), out)


def predict_images(client: MlflowClient, experiment: str, jobs: list[Job], out_dir: Path,
                   labels_dir: Path | None = None, warn: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One JSON-ready row per job; overlays ``<n>_<stem>_gradcam.png`` (n: the job's place, so two
    images with one file name in different folders never share an overlay)."""
    router = Router(client, experiment)
    rows = []
    for n, job in enumerate(jobs, start=1):
        path = job.path
        if not path.is_file():
            raise InputError(path, "no such image file")
        found = text_boxes.find(path, job.text_boxes, labels_dir)
        proj = projection_of(path, job.projection)
        group, age_source, age_model = age_group(router, path, job.age, proj, found.text)
        champion = router.fracture_model(proj, group)
        result = champion.score(path, found.text)
        masking_models = [c for c in (champion, age_model) if c is not None and c.masking != "off"]
        if masking_models and not found.count:
            warn(f"warning: {path}: no text boxes for this image (looked in "
                 f"{'the --csv row, ' if job.text_boxes is not None else ''}"
                 f"{'--labels, ' if labels_dir else ''}the GRAZPEDWRI-DX layout); "
                 f"{', '.join(c.name for c in masking_models)} learnt on masked films and sees its markers raw")
        overlay = gradcam_png(champion, path, found.text, out_dir / f"{n:04d}_{path.stem}_gradcam.png")
        rows.append({"image": str(path), "projection": proj, "age_group": group, "age_source": age_source,
                     "model": champion.name, "version": champion.version,
                     "probability": float(result["probability"]), "threshold": float(result["threshold"]),
                     "decision": result["label"], "masking": champion.masking, "masked": bool(result["masked"]),
                     "boxes_masked": int(result["boxes_masked"]), "boxes_from": found.source,
                     "gradcam": str(overlay)})
    return rows
