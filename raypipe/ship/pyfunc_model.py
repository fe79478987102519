"""The MLflow pyfunc of a raypipe classifier, defined in code (MLflow "models from code").

``mlflow.pyfunc.log_model(python_model=<this file>, code_paths=[raypipe], artifacts={"weights": ...,
"spec": ...})`` (ship/packaging.py) stores this source file and raypipe's own code, not a pickled
object: loading a registered model in a fresh process (``mlflow models serve`` too) runs this code
with the raypipe that was logged beside it and reads safetensors weights plus a JSON spec.

Input, one row per image:
  ``image_bytes``  the image file's bytes (PNG, JPEG, TIFF, DICOM); over HTTP, base64 in the JSON
                   (the signature types it ``binary``, so MLflow's scoring server decodes it);
  ``image``        a path to an image file, read only when the model was loaded with
                   ``model_config={"read_paths": true}``: a served model must not open files the
                   client names on the server (a file-read oracle), so by default it refuses paths
                   (a trusted server may set ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"read_paths": true}'``);
  ``text_boxes``   optional YOLO class-8 (text) boxes ``cx cy w h;...``, masked as in training.
Output: ``probability`` (binary: P(fracture)) or ``probabilities`` (age: one per group), ``label``,
``threshold`` (binary: the out-of-fold Youden threshold saved in the spec), and how the input was
masked: ``masking`` (the mode the model was trained with), ``masked`` (boxes were masked) and
``boxes_masked`` (how many). A model trained with masking that gets no boxes sees the markers raw:
``masked`` is then false, and the caller should say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from safetensors.torch import load_model


class XrayClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from raypipe.models.backbones import build_model_from_spec

        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.model = build_model_from_spec(self.spec)
        load_model(self.model, context.artifacts["weights"], device="cpu")
        self.model.eval()
        self.read_paths = bool((context.model_config or {}).get("read_paths", False))

    @property
    def masking(self) -> str:
        return self.spec.get("masking", "off")

    def inputs(self, frame: pd.DataFrame) -> list[tuple[str | bytes, str, str]]:
        """(path or bytes, name for errors, text boxes) per row; InputError for a row that has neither."""
        from raypipe.errors import InputError

        out = []
        for i, row in enumerate(frame.to_dict("records"), start=1):
            data, path, boxes = row.get("image_bytes"), row.get("image"), row.get("text_boxes")
            boxes = boxes if isinstance(boxes, str) else ""
            if isinstance(data, bytes | bytearray) and data:
                out.append((bytes(data), f"image_bytes of row {i}", boxes))
            elif isinstance(path, str) and path:
                if not self.read_paths:  # the path is not echoed: the caller may be probing the server
                    raise InputError(f"row {i}", "this model reads no file paths (load it with model_config="
                                     "{'read_paths': True} to allow them); send the file in image_bytes",
                                     field="image")
                out.append((path, path, boxes))
            else:
                raise InputError(f"row {i}", "no image: give image_bytes (base64 over HTTP) or image",
                                 field="image_bytes")
        return out

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The prediction, raising raypipe's InputError (``predict`` turns it into MLflow's 400)."""
        from raypipe.data.dataset import normalise
        from raypipe.data.images import prepare
        from raypipe.data.manifest import parse_boxes

        rows = self.inputs(frame)
        counts = [len(parse_boxes(boxes)) if self.masking != "off" else 0 for _, _, boxes in rows]
        # same decode -> mask -> letterbox as the training cache (data/images.prepare)
        images = [normalise(prepare(source, boxes, self.spec["image_size"], self.masking if n else "off", name))
                  for (source, name, boxes), n in zip(rows, counts, strict=True)]
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.stack(images))).float()
        masked = {"masking": self.masking, "masked": [n > 0 for n in counts], "boxes_masked": counts}
        names = self.spec["class_names"]
        if len(names) == 2:
            probability = torch.sigmoid(logits.reshape(-1)).numpy()
            threshold = float(self.spec.get("threshold", 0.5))
            return pd.DataFrame({"probability": probability, "threshold": threshold,
                                 "label": [names[int(p >= threshold)] for p in probability], **masked})
        probs = torch.softmax(logits, dim=1).numpy()
        return pd.DataFrame({"probabilities": [row.tolist() for row in probs],
                             "label": [names[int(i)] for i in probs.argmax(axis=1)], **masked})

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from raypipe.errors import InputError

        try:
            return self.score(model_input)
        except InputError as exc:  # the scoring server answers 400 with this one line, no traceback
            raise MlflowException.invalid_parameter_value(str(exc)) from None


mlflow.models.set_model(XrayClassifier())
