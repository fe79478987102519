"""Checkpoints that load without unpickling code.

A checkpoint is a directory:
  model.safetensors        weights (safetensors: no code can hide in it)
  optimizer.pt             optimizer + scheduler state, loaded with ``weights_only=True``
  state.json               epoch, best metric, early-stopping counter, last metrics
  spec.json                what is needed to rebuild the model (backbone, head, classes, size)
  val_predictions.npz      labels and scores on validation (plots, thresholds; no identifiers)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from raypipe import fsio

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
STATE_FILE = "state.json"
SPEC_FILE = "spec.json"
PREDS_FILE = "val_predictions.npz"
STAGING_PREFIX = "raypipe-ckpt-"


# ---------------------------------------------------------------------------------- staging
# A checkpoint is written to a staging folder, then handed to the session, which copies it into its
# storage and removes it. A trial that ASHA stops (Tune kills its process), or that fails, during or
# right after ``report`` never gets to remove it; so every staging folder lives under one folder per
# *owner* (a Tune trial id, a Train run name) that whoever sees the owner end removes: the Tune driver
# when a trial ends (``tune/trial.py``), the launcher after a Train run.
def staging_root(owner: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{STAGING_PREFIX}{owner}"


def new_staging_dir(owner: str) -> Path:
    root = staging_root(owner)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="epoch-", dir=root))


def remove_staging(owner: str) -> int:
    """Remove the staging folders of every owner whose name contains ``owner``; how many there were."""
    found = list(Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*{owner}*"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return len(found)



def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper."""
    return getattr(model, "module", model)


def save(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         state: dict[str, Any], spec: dict[str, Any], preds: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_model(unwrap(model), str(directory / MODEL_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIM_FILE)
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    np.savez(directory / PREDS_FILE, **preds)
    # Last, and atomically: a directory with a state file is a complete checkpoint (see session.py).
    fsio.write_text(directory / STATE_FILE, json.dumps(state, indent=2, default=float))
    return directory


def restore(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Load weights and optimizer state into live objects; return the saved loop state."""
    load_weights(directory, model)
    opt = torch.load(directory / OPTIM_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return read_state(directory)


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    load_model(unwrap(model), str(Path(directory) / MODEL_FILE), device=str(next(model.parameters()).device))


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / STATE_FILE).read_text())


def read_predictions(directory: Path) -> dict[str, np.ndarray]:
    with np.load(Path(directory) / PREDS_FILE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
