"""The registered pyfunc as MLflow's tools meet it: it carries raypipe's code (never a requirement on the
unrelated `raypipe` of the public index), takes image bytes, reads no path unless its loader allows it,
and masks text boxes exactly as the training cache does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from raypipe.data.dataset import normalise
from raypipe.data.images import prepare
from raypipe.ship import packaging
from raypipe.tracking.runs import process_uris
from tests.conftest import write_grazpedwri
from tests.ship.champions import SIZE, register_champion

BOX = "0.125000 0.083333 0.187500 0.125000"


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pyfunc")
    uri = register_champion(run_dir, "pf", "fracture", masking="fill", threshold=0.25)
    data = write_grazpedwri(run_dir / "graz", n_patients=2)
    with process_uris(uri):  # models:/ loads below; restored after this module
        yield run_dir, uri, sorted(data.glob("images_part*/*.png"))[0]


def model_dir(run_dir: Path) -> Path:
    return next((run_dir / "mlartifacts").rglob("MLmodel")).parent


def test_the_model_carries_raypipes_code_and_never_requires_raypipe(champion):
    run_dir, _, _ = champion
    root = model_dir(run_dir)
    assert (root / "code" / "raypipe" / "ship" / "pyfunc_model.py").is_file()
    assert (root / "code" / "raypipe" / "data" / "images.py").is_file()
    assert not list((root / "code").rglob("__pycache__"))
    requirements = (root / "requirements.txt").read_text().split()
    assert requirements and not [r for r in requirements if r.lower().startswith("raypipe")]
    for env_file in ("conda.yaml", "python_env.yaml"):  # what --env-manager conda/virtualenv would install
        assert "raypipe" not in (root / env_file).read_text().lower()
    assert any(r.startswith("torch==") for r in requirements)


def test_requirements_cover_every_distribution_the_pyfunc_imports(champion):
    """What a fresh process imports to load and run the model, mapped to distributions: each one pinned."""
    run_dir, _, image = champion
    script = ("import sys, json, importlib.metadata as md, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "m.predict(pd.DataFrame({'image_bytes': [open(sys.argv[2], 'rb').read()]}))\n"
              "dists = md.packages_distributions()\n"
              "tops = {n.split('.')[0] for n in list(sys.modules)}\n"
              "print(json.dumps({t: dists[t] for t in tops if t in dists}))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir(run_dir)), str(image)], capture_output=True,
                          text=True, timeout=300, cwd=run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torch" in imported and "cv2" in imported  # the scan saw the model run
    allowed = _closure({r.split("==")[0] for r in packaging.requirements()}) | {"raypipe"}
    missing = {top: d for top, d in imported.items() if not {_norm(x) for x in d} & allowed}
    assert not missing, f"imported at inference, neither pinned nor required by a pinned package: {missing}"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require (their extras aside), transitively, normalised."""
    import re
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = {_norm(n) for n in names}, list(names)
    while todo:
        try:
            reqs = requires(todo.pop()) or []
        except PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" in req:
                continue
            dep = _norm(re.match(r"[A-Za-z0-9._-]+", req).group(0))
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_bytes_are_scored_like_the_path_and_masked_like_training(champion):
    run_dir, _, image = champion
    model = mlflow.pyfunc.load_model(str(model_dir(run_dir)), model_config={"read_paths": True})
    data = image.read_bytes()
    by_bytes = model.predict(pd.DataFrame({"image_bytes": [data, data], "text_boxes": [BOX, None]}))
    by_path = model.predict(pd.DataFrame({"image": [str(image)], "text_boxes": [BOX]}))
    assert by_bytes["probability"][0] == pytest.approx(by_path["probability"][0], abs=1e-7)
    assert list(by_bytes["masked"]) == [True, False] and list(by_bytes["boxes_masked"]) == [1, 0]
    assert set(by_bytes["masking"]) == {"fill"} and set(by_bytes["threshold"]) == {0.25}
    assert list(by_bytes["label"]) == [["normal", "fracture"][p >= 0.25] for p in by_bytes["probability"]]

    # the masked input is the training cache's (data/images.prepare with the box), not the raw film
    net = model.unwrap_python_model().model
    with torch.no_grad():
        expected = [torch.sigmoid(net(torch.from_numpy(normalise(prepare(image, boxes, SIZE, mode)))[None])).item()
                    for boxes, mode in ((BOX, "fill"), ("", "off"))]
    assert list(by_bytes["probability"]) == pytest.approx(expected, abs=1e-6)
    assert expected[0] != pytest.approx(expected[1], abs=1e-9)  # masking changed what the model saw


def test_paths_are_refused_unless_the_loader_allows_them(champion, tmp_path):
    run_dir, _, image = champion
    model = mlflow.pyfunc.load_model(str(model_dir(run_dir)))  # as `mlflow models serve` loads it
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.full((8, 8), 7, np.uint8))
    with pytest.raises(MlflowException) as refused:
        model.predict(pd.DataFrame({"image": [str(secret)]}))
    assert "reads no file paths" in str(refused.value) and str(secret) not in str(refused.value)
    with pytest.raises(MlflowException, match="no image"):
        model.predict(pd.DataFrame({"text_boxes": [BOX]}))
    with pytest.raises(MlflowException, match="image_bytes of row 1: cannot decode|image_bytes of row 1.*not"):
        model.predict(pd.DataFrame({"image_bytes": [b"\x89PNG\r\n\x1a\nnot an image"]}))
    assert len(model.predict(pd.DataFrame({"image_bytes": [image.read_bytes()]}))) == 1


def test_an_operator_can_allow_paths_on_a_trusted_server(champion, monkeypatch):
    run_dir, _, image = champion
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", '{"read_paths": true}')  # README: serving
    model = mlflow.pyfunc.load_model(str(model_dir(run_dir)))
    assert len(model.predict(pd.DataFrame({"image": [str(image)]}))) == 1
