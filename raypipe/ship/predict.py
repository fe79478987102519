"""Routed inference: projection -> age group -> that group's fracture champion -> decision + Grad-CAM.

Projection: the ``--projection`` argument, else the DICOM header (ViewPosition), else the file name
(GRAZPEDWRI-DX ``..._WRI-L1_...``: 1 = AP, 2 = lateral; or an ``AP`` / ``LAT`` token). Age group:
``--age`` in years with the fracture model's own age cut points, else the age champion's prediction.
Model: the most specific champion that exists, ``<exp>.fracture-<proj>-<group>``, then
``<exp>.fracture-<proj>``, then ``<exp>.fracture``. Every model is loaded through
``models:/<name>@champion`` (the models-from-code pyfunc: no unpickling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raypipe.errors import InputError
from raypipe.ship.promote import CHAMPION, model_name

DICOM_VIEWS = {"AP": "AP", "PA": "AP", "LL": "Lat", "LAT": "Lat", "LATERAL": "Lat", "RL": "Lat"}


@dataclass
class Champion:
    name: str
    version: str
    model: Any  # the XrayClassifier python model (spec + torch module)


class Router:
    def __init__(self, client: MlflowClient, experiment: str) -> None:
        self.client, self.experiment = client, experiment
        self._loaded: dict[str, Champion | None] = {}

    def champion(self, target: str) -> Champion | None:
        name = model_name(self.experiment, target)
        if name not in self._loaded:
            try:
                version = self.client.get_model_version_by_alias(name, CHAMPION)
            except MlflowException:
                self._loaded[name] = None
            else:
                import mlflow

                mlflow.set_tracking_uri(self.client.tracking_uri)  # models:/ resolves through these
                mlflow.set_registry_uri(self.client.tracking_uri)
                pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
                self._loaded[name] = Champion(name, str(version.version), pyfunc.unwrap_python_model())
        return self._loaded[name]

    def age_cuts(self) -> list[float]:
        """The age scheme's cut points, from any champion of this experiment (all carry them)."""
        prefix = f"{self.experiment}."
        for model in self.client.search_registered_models(f"name LIKE '{prefix}%'"):
            target = model.name.removeprefix(prefix).replace("-", "/")
            if (found := self.champion(target)) is not None:
                return list(found.model.spec.get("age_cuts", []))
        raise InputError(f"experiment {self.experiment}", "has no champion models: run `raypipe promote` first")

    def fracture_model(self, projection: str, group: int | None) -> Champion:
        candidates = ([f"fracture/{projection}/{group}"] if group is not None else []) + [
            f"fracture/{projection}", "fracture"]
        for target in candidates:
            if (found := self.champion(target)) is not None:
                return found
        raise InputError(f"experiment {self.experiment}", "no fracture champion for "
                         f"{' or '.join(candidates)}: run `raypipe promote` first")


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


def age_group(router: Router, path: Path, age: float | None) -> tuple[int | None, str]:
    if age is not None:
        if not 0 <= age <= 25:
            raise InputError("--age", f"expected years in 0..25, got {age}")
        return int(np.searchsorted(np.asarray(router.age_cuts()), age, side="right")), "given"
    age_model = router.champion("age")
    if age_model is None:
        return None, "unknown (no --age, no age champion)"
    out = age_model.model.predict(None, pd.DataFrame({"image": [str(path)]}))
    names = age_model.model.spec["class_names"]
    return names.index(out["label"][0]), f"age champion v{age_model.version}"


def gradcam_png(champion: Champion, path: Path, out: Path) -> Path:
    """Grad-CAM of the champion's decision, overlaid on the image at its original resolution."""
    from raypipe.explain import gradcam

    spec = champion.model.spec
    return gradcam.save_png(gradcam.overlay(champion.model.model, path, spec["image_size"]), out)


def predict_images(client: MlflowClient, experiment: str, images: list[Path], out_dir: Path,
                   age: float | None = None, projection: str | None = None) -> list[dict[str, Any]]:
    router = Router(client, experiment)
    rows = []
    for path in images:
        if not path.is_file():
            raise InputError(path, "no such image file")
        proj = projection_of(path, projection)
        group, age_source = age_group(router, path, age)
        champion = router.fracture_model(proj, group)
        result = champion.model.predict(None, pd.DataFrame({"image": [str(path)]}))
        overlay = gradcam_png(champion, path, out_dir / f"{path.stem}_gradcam.png")
        rows.append({"image": str(path), "projection": proj, "age_group": group, "age_source": age_source,
                     "model": champion.name, "version": champion.version,
                     "probability": float(result["probability"][0]), "threshold": float(result["threshold"][0]),
                     "decision": result["label"][0], "gradcam": str(overlay)})
    return rows
