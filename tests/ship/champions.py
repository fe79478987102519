"""Registered champions in seconds: a tiny random-init model logged by promote's own ``_register`` (the
pyfunc with raypipe's code, safetensors and spec) into a real SQLite MLflow store, aliased ``champion``.
What predict and the pyfunc do with a champion does not depend on how well it was trained."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_model

from raypipe.config import TrainConfig
from raypipe.data.groups import get_scheme
from raypipe.models.backbones import build_model_from_spec, model_spec
from raypipe.ship.aliases import CHAMPION
from raypipe.ship.promote import _register, model_name
from raypipe.tracking.runs import store_client
from raypipe.train import checkpoint

SIZE = 32


def register_champion(run_dir: Path, experiment: str, target: str, masking: str = "fill",
                      scheme: str = "4group", threshold: float = 0.5) -> str:
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = store_client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=(run_dir / "mlartifacts").resolve().as_uri())
    cuts = get_scheme(scheme)
    names = get_scheme(scheme).labels() if target == "age" else ["normal", "fracture"]
    cfg = TrainConfig(backbone="test_convnext", image_size=SIZE, pretrained=False)
    spec = model_spec(cfg, len(names)) | {"target": target, "class_names": names, "masking": masking,
                                          "normalise": {"mean": 0.5, "std": 0.25}, "age_cuts": list(cuts.cuts)}
    ckpt = run_dir / "ckpt" / f"{experiment}-{target.replace('/', '-')}"
    ckpt.mkdir(parents=True)
    save_model(build_model_from_spec(spec), str(ckpt / checkpoint.MODEL_FILE))
    (ckpt / checkpoint.SPEC_FILE).write_text(json.dumps(spec))
    run_id = client.create_run(exp_id).info.run_id
    name = model_name(experiment, target)
    version = _register(uri, run_id, ckpt, threshold, name)
    client.set_terminated(run_id, "FINISHED")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return uri
