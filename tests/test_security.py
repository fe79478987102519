"""Security defaults that need no cluster: loaders refuse pickled code, servers bind to 127.0.0.1.

A malicious pickle's ``__reduce__`` here would create a marker file when unpickled; every raypipe
loader must refuse it (an exception) and the marker must never appear. The end-to-end half (a real
train run, the live Ray ports, MLflow scanned for patient identifiers, DICOM headers) is in
tests/e2e/test_security.py.
"""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from raypipe.errors import InputError
from raypipe.models.backbones import read_state_dict
from raypipe.train import checkpoint

REPO = Path(__file__).resolve().parents[1]


class Evil:
    """Unpickling this calls ``open(marker, "w")``: the marker file is the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Evil(path)))  # the payload works when unpickled naively...
    assert path.exists()
    path.unlink()  # ...so its absence after a raypipe load means the loader refused to run it
    return path


def tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 3)


def good_checkpoint(directory: Path) -> Path:
    model, optimizer, scheduler = tiny()
    return checkpoint.save(directory, model, optimizer, scheduler, {"epoch": 1}, {"backbone": "x"},
                           {"y": np.zeros(2), "scores": np.zeros(2)})


def test_optimizer_state_with_pickled_code_is_refused(tmp_path: Path, marker: Path) -> None:
    ckpt = good_checkpoint(tmp_path / "ckpt")
    checkpoint.restore(ckpt, *tiny())  # the genuine one loads
    torch.save({"optimizer": Evil(marker), "scheduler": {}}, ckpt / checkpoint.OPTIM_FILE)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        checkpoint.restore(ckpt, *tiny())
    assert not marker.exists()


def test_plain_pickle_as_optimizer_file_is_refused(tmp_path: Path, marker: Path) -> None:
    ckpt = good_checkpoint(tmp_path / "ckpt")
    (ckpt / checkpoint.OPTIM_FILE).write_bytes(pickle.dumps({"optimizer": Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.restore(ckpt, *tiny())
    assert not marker.exists()


def test_pickle_posing_as_safetensors_weights_is_refused(tmp_path: Path, marker: Path) -> None:
    ckpt = good_checkpoint(tmp_path / "ckpt")
    (ckpt / checkpoint.MODEL_FILE).write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(Exception) as info:  # safetensors parses a JSON header, never a pickle
        checkpoint.load_weights(ckpt, tiny()[0])
    assert "safetensor" in type(info.value).__module__.lower() or "header" in str(info.value).lower()
    assert not marker.exists()


def test_validation_predictions_with_pickled_objects_are_refused(tmp_path: Path, marker: Path) -> None:
    ckpt = good_checkpoint(tmp_path / "ckpt")
    np.savez(ckpt / checkpoint.PREDS_FILE, y=np.array([Evil(marker)], dtype=object), scores=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle"):
        checkpoint.read_predictions(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_pretrained_weights_with_pickled_code_are_refused(suffix: str, tmp_path: Path, marker: Path) -> None:
    evil = tmp_path / f"weights{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Evil(marker)}, evil)
    with pytest.raises(InputError) as info:
        read_state_dict(evil)
    assert str(evil) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    plain = tmp_path / f"plain{suffix}"
    plain.write_bytes(pickle.dumps({"w": Evil(marker)}))
    with pytest.raises(InputError):
        read_state_dict(plain)
    assert not marker.exists()


def test_genuine_weights_still_load(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 1)
    save_model(model, str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        assert set(read_state_dict(tmp_path / name)) == {"weight", "bias"}


# ----------------------------------------------------------------------- static audit of the code
def unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that may unpickle or evaluate data: the loaders a checkpoint must not reach."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.endswith("torch.load") and kw.get("weights_only") != "True":
            found.append(f"{name} without weights_only=True (line {node.lineno})")
        elif re.fullmatch(r"(c?pickle|cloudpickle|dill|joblib|shelve)\.(load|loads|open)", name):
            found.append(f"{name} (line {node.lineno})")
        elif name.endswith("np.load") and kw.get("allow_pickle") == "True":
            found.append(f"np.load(allow_pickle=True) (line {node.lineno})")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load") and "Safe" not in kw.get("Loader", "") \
                and kw.get("Loader") != "_StrictLoader":
            found.append(f"{name} with an unsafe loader (line {node.lineno})")
        elif name in ("eval", "exec") or name.endswith(("mlflow.pytorch.load_model", "torch.jit.load")):
            found.append(f"{name} (line {node.lineno})")
    return found


def test_no_raypipe_code_unpickles_or_evaluates_data() -> None:
    problems = {str(p.relative_to(REPO)): unsafe_loads(p.read_text())
                for p in sorted((REPO / "raypipe").rglob("*.py"))}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_audit_finds_what_it_looks_for() -> None:
    bad = ("import torch, pickle, yaml, numpy as np\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "pickle.loads(b)\nnp.load(p, allow_pickle=True)\nyaml.load(t, Loader=yaml.Loader)\neval(s)\n")
    assert len(unsafe_loads(bad)) == 6
    good = "torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\nyaml.load(t, Loader=_StrictLoader)\n"
    assert unsafe_loads(good) == []


# ------------------------------------------------------------------- what the Makefile starts
def recipe(target: str) -> str:
    """The recipe lines of a Makefile target, continuation lines joined."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", text, re.MULTILINE)
    assert match, f"no target {target} in the Makefile"
    return match.group(1)


def test_make_mlflow_ui_binds_loopback_only() -> None:
    cmd = recipe("mlflow-ui")
    assert re.search(r"mlflow ui .*--host 127\.0\.0\.1\b", cmd), cmd
    assert "0.0.0.0" not in cmd and "--host ::" not in cmd


def test_make_ray_up_binds_loopback_with_token_auth() -> None:
    cmd = recipe("ray-up")
    assert "ray start --head" in cmd
    for flag in ("--node-ip-address 127.0.0.1", "--dashboard-host 127.0.0.1", "RAY_AUTH_MODE=token"):
        assert flag in cmd, flag
    # `ray start` turns --node-ip-address 127.0.0.1 into the machine's own address (and binds GCS,
    # raylet and workers to all interfaces) unless it is told this is a single-machine cluster.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in cmd, cmd
    assert "0.0.0.0" not in cmd


def test_printed_mlflow_ui_commands_bind_loopback() -> None:
    """The `mlflow ui ...` lines raypipe prints for users to paste."""
    code = "".join(p.read_text() for p in (REPO / "raypipe").rglob("*.py"))
    commands = re.findall(r"mlflow ui [^\"'\n]*", code)
    assert commands and all("--host 127.0.0.1" in c and "0.0.0.0" not in c for c in commands), commands
