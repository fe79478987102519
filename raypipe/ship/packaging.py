"""What a registered model carries so that MLflow's own tools can serve it.

The name ``raypipe`` on the public package index belongs to an unrelated project: a model whose
requirements say ``raypipe==...`` would make ``mlflow models serve`` / ``build-docker`` install that.
So the model carries raypipe's code itself (``code_paths``: the package folder, copied under
``code/``, which MLflow puts first on ``sys.path`` when it loads the model) and its requirements name
only the third-party packages that code imports at inference, pinned to the versions it was logged with.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import raypipe

PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(raypipe.__file__).resolve().parent
# The distributions whose modules the pyfunc imports (models/backbones, data/images, data/masking...).
RUNTIME = ("mlflow", "torch", "torchvision", "timm", "safetensors", "numpy", "pandas", "opencv-python-headless",
           "albumentations", "pyyaml")
OPTIONAL = ("pydicom",)  # DICOM input, when installed where the model was logged

# One row per image: its bytes (base64 over HTTP) or, where the loader allows it, a path; optional text boxes.
SIGNATURE = ModelSignature(inputs=Schema([
    ColSpec("binary", "image_bytes", required=False), ColSpec("string", "image", required=False),
    ColSpec("string", "text_boxes", required=False)]))


def requirements() -> list[str]:
    """``name==version`` of each runtime distribution as installed here; never raypipe itself."""
    pins = []
    for name in (*RUNTIME, *OPTIONAL):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name not in OPTIONAL:
                raise
    return pins


def pyfunc_arguments(weights: Path, spec: Path) -> dict[str, Any]:
    """Keyword arguments of ``mlflow.pyfunc.log_model`` for a raypipe classifier."""
    return {"python_model": str(PYFUNC_SOURCE), "code_paths": [str(PACKAGE_DIR)],
            "artifacts": {"weights": str(weights), "spec": str(spec)},
            "pip_requirements": requirements(), "signature": SIGNATURE,
            # logged so that a loader may override it (MLflow only overrides keys the model has): paths
            # are read only where the loader says so (`raypipe predict`), never by default
            "model_config": {"read_paths": False}}
