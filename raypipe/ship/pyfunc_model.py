"""The MLflow pyfunc of a raypipe classifier, defined in code (MLflow "models from code").

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"weights": ..., "spec": ...})`` stores
this source file, not a pickled object, so loading a registered model in a fresh process runs this
code and reads safetensors weights plus a JSON spec: nothing is unpickled.

Input: a DataFrame with a column ``image`` (paths to PNG/JPEG/DICOM files) and optionally
``text_boxes`` (YOLO class-8 boxes, masked as in training). Output: one row per image with
``probability`` (binary: P(fracture)) or ``probabilities`` (age: one per group), ``label`` and
``threshold`` (binary: the validation Youden threshold saved in the spec).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_model


class XrayClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from raypipe.models.backbones import build_model_from_spec

        self.spec = json.loads(Path(context.artifacts["spec"]).read_text())
        self.model = build_model_from_spec(self.spec)
        load_model(self.model, context.artifacts["weights"], device="cpu")
        self.model.eval()

    def tensors(self, frame: pd.DataFrame) -> torch.Tensor:
        from raypipe.data.dataset import normalise
        from raypipe.data.images import prepare

        boxes = frame["text_boxes"] if "text_boxes" in frame else [""] * len(frame)
        masking = self.spec.get("masking", "off")
        images = [normalise(prepare(path, b or "", self.spec["image_size"], masking if b else "off"))
                  for path, b in zip(frame["image"], boxes, strict=True)]
        return torch.from_numpy(np.stack(images))

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        logits = self.model(self.tensors(model_input)).float()
        names = self.spec["class_names"]
        if len(names) == 2:
            probability = torch.sigmoid(logits.reshape(-1)).numpy()
            threshold = float(self.spec.get("threshold", 0.5))
            return pd.DataFrame({"probability": probability, "threshold": threshold,
                                 "label": [names[int(p >= threshold)] for p in probability]})
        probs = torch.softmax(logits, dim=1).numpy()
        return pd.DataFrame({"probabilities": [row.tolist() for row in probs],
                             "label": [names[int(i)] for i in probs.argmax(axis=1)]})


mlflow.models.set_model(XrayClassifier())
