"""Typed run configuration: one place for defaults, loaded strictly from YAML.

A config is data: every experiment is a YAML file (or a packaged preset), never a code edit.
Unknown keys and wrong types are errors naming the file and key, not silently ignored.
The resolved config of every run is written beside its outputs and into MLflow.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from raypipe.errors import InputError


@dataclass
class TrainConfig:
    """Everything one training job needs besides the data location and the target."""

    # model
    backbone: str = "test_convnext"
    pretrained: str | None = None  # local weights file; None = random init
    image_size: int = 64
    drop_path: float = 0.0
    head_hidden: int = 256
    head_dropout: float = 0.3
    # loss and sampling
    loss: str = "focal"  # binary: focal | bce ; age: focal | ce
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    sampler: str = "none"  # none | weighted
    sampler_power: float = 1.0  # 0 = natural frequencies, 1 = fully balanced classes
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 32  # global: split across DDP workers
    epochs: int = 5
    patience: int = 3  # early stopping on the monitored metric
    schedule: str = "cosine"  # cosine | plateau
    grad_clip: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    augment: float = 0.5  # augmentation strength 0..1
    # data
    age_scheme: str = "4group"
    masking: str = "fill"  # off | fill | blur (YOLO class-8 text boxes)
    test_per_class: int = 10  # fixed test set: up to K per class per 1-year age bin
    val_fraction: float = 0.2
    include_metal: bool = False
    loader_workers: int = 0
    # run
    workers: int = 1  # 1 = in-process; >1 = Ray Train DDP
    use_gpu: bool = False
    seed: int = 0
    monitor: str = "auto"  # auto = val_auroc for fracture, val_macro_f1 for age


@dataclass
class TunePlan:
    """What ``raypipe tune`` searches when the command line does not say."""

    targets: list = field(default_factory=lambda: ["all"])  # target specs, or ["all"]
    trials: int = 8  # per target
    space: str | None = None  # a file for every target; None = search_spaces/<age|fracture>.yaml
    max_concurrent: int | None = None  # trials per study at once; None = what the cluster's CPUs allow


@dataclass
class PromotePlan:
    """How ``raypipe pipeline run`` promotes each tuned target."""

    margin: float = 0.0  # test-metric gain a new version needs to replace the champion
    bootstrap: int = 1000  # patient-level bootstrap resamples for the test CIs


@dataclass
class Preset:
    """A packaged pipeline preset: where the data comes from and how to train and tune on it."""

    data: str = "runs/demo-data"
    synth: dict[str, Any] = field(default_factory=dict)  # args of `data synth` when data is absent
    target: str = "fracture/AP"
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TunePlan = field(default_factory=TunePlan)
    promote: PromotePlan = field(default_factory=PromotePlan)


def from_dict(cls: type, raw: Any, origin: str | Path, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(origin, f"expected a mapping, got {type(raw).__name__}", field=prefix or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise InputError(origin, f"unknown key (known: {', '.join(sorted(fields))})", field=name)
        kwargs[key] = _coerce(hints[key], value, origin, name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, origin: str | Path, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, origin, prefix=f"{name}.")
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for opt in options:
        origin_type = typing.get_origin(opt) or opt
        if origin_type is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin_type is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin_type in (str, bool, dict, list) and isinstance(value, origin_type):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise InputError(origin, f"expected {expected}, got {value!r}", field=name)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                         row=mark.line + 1 if mark else None) from None


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    raw = load_yaml(path) if path else {}
    raw = {**(raw or {}), **(overrides or {})}
    return from_dict(TrainConfig, raw, path or "<command line>")


def load_preset(name_or_path: str) -> Preset:
    """A packaged preset by name (``demo``) or a preset YAML file."""
    packaged = resources.files("raypipe.presets") / f"{name_or_path}.yaml"
    if packaged.is_file():
        return from_dict(Preset, yaml.safe_load(packaged.read_text()), f"preset {name_or_path}")
    return from_dict(Preset, load_yaml(name_or_path), name_or_path)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
