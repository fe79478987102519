"""Typed run configuration: one place for defaults, loaded strictly from YAML.

A config is data: every experiment is a YAML file (or a packaged preset), never a code edit.
Unknown keys and wrong types are errors naming the file and key, not silently ignored.
The resolved config of every run is written beside its outputs and into MLflow.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from raypipe.errors import InputError, bad_input


@dataclass
class TrainConfig:
    """Everything one training job needs besides the data location and the target."""

    # model
    backbone: str = "test_convnext"
    pretrained: str | None = None  # local weights file or hf-hub:<repo> (Hugging Face cache first); None = random init
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
    # A replay of a tuning trial (a promotion's retrain): stop after this epoch while the schedule still
    # spans `epochs`, and/or use these learning rates epoch by epoch instead of the schedule's
    stop_epoch: int | None = None
    lr_by_epoch: list[float] | None = None
    grad_clip: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    augment: float = 0.5  # augmentation strength 0..1
    # data
    age_scheme: str = "4group"
    masking: str = "fill"  # off | fill | blur (YOLO class-8 text boxes)
    test_per_class: int = 10  # fixed test set: up to K per class per 1-year age bin
    test_max_fraction: float = 0.3  # ... and at most this share of the patients (K is lowered to fit)
    split_seed: int = 0  # the split's seed: a `seed` replicate keeps the same test set
    val_fraction: float = 0.2
    include_metal: bool = False
    loader_workers: int = 0
    # run
    workers: int = 1  # 1 = in-process; >1 = Ray Train DDP
    use_gpu: bool = False
    seed: int = 0  # model initialisation, sampling and augmentation; the split has split_seed
    monitor: str = "auto"  # auto = val_auroc for fracture, val_macro_f1 for age


@dataclass
class TunePlan:
    """What ``raypipe tune`` searches when the command line does not say."""

    targets: list[str] = field(default_factory=lambda: ["all"])  # target specs, or ["all"]
    trials: int = 8  # per target
    space: str | None = None  # a file for every target; None = search_spaces/<age|fracture>.yaml
    max_concurrent: int | None = None  # trials per study at once; None = what the cluster's CPUs allow
    searcher: str = "tpe"  # tpe (Optuna TPE) | random (Optuna's RandomSampler: a baseline)
    scheduler: str = "asha"  # asha (stops weak trials early) | fifo (every trial runs all its epochs)
    epoch_budget: int | None = None  # trial-epochs per study; the study ends once it has reported that many
    # How a study spends its trials (None = derived from trials and epochs: tune/search.py, README "Budgets")
    grace_period: int | None = None  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA: at each rung, 1 trial in this many goes on
    startup_trials: int | None = None  # TPE: trials (the base config included) before TPE models the results
    # target spec prefix -> {train: {TrainConfig overrides}, space: file, resources: {Resources overrides}}: e.g.
    # `age: {train: {image_size: 96}}`, `fracture/Lat: {space: lat.yaml}`; the more specific prefix wins
    # (checked in tune/study.py)
    per_target: dict[str, Any] = field(default_factory=dict)


@dataclass
class Resources:
    """What each tuning trial and a promotion's retrain ask the cluster for (``resources:``, also per target
    under ``tune.per_target``; ``--workers-per-trial`` etc. win). W > 1 runs the loop as Ray Train DDP."""

    workers_per_trial: int = 1  # 1 = in-process; >1 = a TorchTrainer (DDP) per trial and per retrain
    gpus_per_trial: float = 0.0  # shared by the trial's workers; fractions share a GPU
    cpus_per_worker: float = 1.0


RESOURCE_KEYS = ("workers_per_trial", "gpus_per_trial", "cpus_per_worker")


@dataclass
class PromotePlan:
    """How ``raypipe pipeline run`` promotes each tuned target."""

    margin: float = 0.0  # out-of-fold gain (lower bound of the paired CI) a version needs to replace the champion
    bootstrap: int = 1000  # patient-level bootstrap resamples for the CIs
    folds: int = 3  # patient-grouped folds of train+val: out-of-fold scores decide and set the threshold
    shortcut_tolerance: float = 0.02  # flag a binary model whose test AUROC moves more under shuffled text masks


@dataclass
class Preset:
    """A packaged pipeline preset: where the data comes from and how to train and tune on it."""

    data: str = "runs/demo-data"
    # args of `data synth` when data is absent; keys and types checked like any other (SYNTH_KEYS)
    synth: dict[str, Any] = field(default_factory=dict, metadata={"keys": "SYNTH_KEYS"})
    target: str = "fracture/AP"
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TunePlan = field(default_factory=TunePlan)
    promote: PromotePlan = field(default_factory=PromotePlan)
    resources: Resources = field(default_factory=Resources)


SYNTH_KEYS: dict[str, type] = {"patients": int, "seed": int, "height": int, "width": int}


def _at_least(low: float) -> tuple:
    return (lambda v: v >= low, f"must be at least {low:g}")


def _between(low: float, high: float, *, high_open: bool = False) -> tuple:
    if high_open:
        return (lambda v: low <= v < high, f"must be in [{low:g}, {high:g})")
    return (lambda v: low <= v <= high, f"must be in [{low:g}, {high:g}]")


# Values outside these ranges would fail (or silently misbehave) inside a worker; they are bad input.
RANGES: dict[str, tuple] = {
    "image_size": _between(16, 4096), "drop_path": _between(0, 1, high_open=True), "head_hidden": _at_least(1),
    "head_dropout": _between(0, 1, high_open=True), "focal_alpha": _between(0, 1), "focal_gamma": _at_least(0),
    "label_smoothing": _between(0, 1, high_open=True), "sampler_power": _between(0, 1),
    "lr": (lambda v: v > 0, "must be above 0"), "weight_decay": _at_least(0), "batch_size": _at_least(1),
    "epochs": _at_least(1), "patience": _at_least(1), "grad_clip": _at_least(0), "augment": _between(0, 1),
    "test_per_class": _at_least(0), "val_fraction": _between(0, 1, high_open=True), "loader_workers": _at_least(0),
    "workers": _at_least(1), "seed": _between(0, 2**32 - 1), "patients": _at_least(1), "height": _at_least(32),
    "width": _at_least(32), "trials": _at_least(1), "max_concurrent": _at_least(1), "bootstrap": _at_least(0),
    "margin": _at_least(0), "epoch_budget": _at_least(1), "grace_period": _at_least(1),
    "reduction_factor": _at_least(2), "startup_trials": _at_least(1), "stop_epoch": _at_least(1), "folds": _at_least(2), "test_max_fraction": _between(0, 1, high_open=True),
    "split_seed": _between(0, 2**32 - 1), "workers_per_trial": _at_least(1), "gpus_per_trial": _at_least(0),
    "cpus_per_worker": (lambda v: v > 0, "must be above 0"),
}
SCHEDULES = ("cosine", "plateau")  # train/loop.py
SEARCHERS = ("tpe", "random")  # tune/search.py
SCHEDULERS = ("asha", "fifo")  # tune/search.py
# Every named choice a config or command takes -> where its names are defined (module, attribute: a tuple, the
# keys of a dict, or a Registry). Validation is derived from this one table: ``check_value`` checks the keys
# whose module loads without torch (a config check stays fast), ``train.job.check_choices`` all of them, before
# any worker starts.
CHOICES: dict[str, tuple[str, str]] = {
    "masking": ("raypipe.data.masking", "MASKING_MODES"), "schedule": ("raypipe.config", "SCHEDULES"),
    "searcher": ("raypipe.config", "SEARCHERS"), "scheduler": ("raypipe.config", "SCHEDULERS"),
    "source": ("raypipe.data.sources", "SOURCES"), "loss": ("raypipe.models.losses", "LOSSES"),
    "sampler": ("raypipe.data.sampling", "SAMPLERS"),
}
NEEDS_TORCH = ("loss", "sampler")


def known_choices(name: str) -> tuple[str, ...]:
    """The names ``name`` (a key of ``CHOICES``) accepts."""
    module, attr = CHOICES[name]
    found = getattr(importlib.import_module(module), attr)
    names = tuple(found.names()) if hasattr(found, "names") else tuple(found)
    return ("auto", *names) if name == "source" else names


def check_choice(name: str, value: Any) -> str | None:
    """Why ``value`` is not a known ``name`` (a key of ``CHOICES``), or None."""
    known = known_choices(name)
    return None if value in known else f"unknown {name} {value!r} (known: {', '.join(known)})"


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid setting ``name`` (a TrainConfig, plan or synth key), or None."""
    if name in RANGES and isinstance(value, int | float) and not isinstance(value, bool):
        ok, why = RANGES[name]
        if not math.isfinite(value) or not ok(value):
            return f"{why}, got {value!r}"
    if name in CHOICES and name not in NEEDS_TORCH and (why := check_choice(name, value)):
        return why
    if name == "age_scheme" and isinstance(value, str):
        from raypipe.data.groups import get_scheme

        try:
            get_scheme(value)
        except ValueError as exc:
            return str(exc)
    return None


def from_dict(cls: type, raw: Any, origin: str | Path, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, wrong types and bad values.

    Applies at every nesting level: a nested dataclass field recurses, and a free-form mapping
    field declares its keys (``metadata={"keys": ...}``), so no key anywhere is silently ignored.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(origin, f"expected a mapping, got {type(raw).__name__}", field=prefix.rstrip(".") or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise InputError(origin, f"unknown key (known: {', '.join(sorted(fields))})", field=name)
        kwargs[key] = _coerce(hints[key], value, origin, name)
        if keys := fields[key].metadata.get("keys"):
            kwargs[key] = _keyed(globals()[keys], kwargs[key], origin, name)
        if (why := check_value(key, kwargs[key])) is not None:
            raise InputError(origin, why, field=name)
    return cls(**kwargs)


def _keyed(schema: dict[str, type], value: dict, origin: str | Path, name: str) -> dict:
    out = {}
    for key, item in value.items():
        if key not in schema:
            raise InputError(origin, f"unknown key (known: {', '.join(sorted(schema))})", field=f"{name}.{key}")
        out[key] = _coerce(schema[key], item, origin, f"{name}.{key}")
        if (why := check_value(key, out[key])) is not None:
            raise InputError(origin, why, field=f"{name}.{key}")
    return out


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
        if origin_type is list and isinstance(value, list) and typing.get_args(opt):
            (item,) = typing.get_args(opt)
            return [_coerce(item, v, origin, f"{name}[{i}]") for i, v in enumerate(value)]
        if origin_type in (str, bool, dict, list) and isinstance(value, origin_type):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise InputError(origin, f"expected {expected}, got {value!r}", field=name)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice (PyYAML silently keeps the last one) and reads
    booleans as YAML 1.2 does: only true/false. PyYAML is YAML 1.1, where `off`, `on`, `yes`, `no`, `y`
    and `n` are booleans too, so the documented `masking: off` arrived as False and was refused."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: let PyYAML report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 core schema booleans in place of YAML 1.1's (which also match yes/no/on/off/y/n)
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "tTfF":
    _StrictLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


def parse_yaml(text: str, origin: str | Path) -> Any:
    """Safe, strict YAML: no Python objects, no duplicate keys; errors name the file and line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(origin, f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                         row=mark.line + 1 if mark else None) from None


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, path)


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    raw = load_yaml(path) if path else {}
    raw = {**(raw or {}), **(overrides or {})}
    return from_dict(TrainConfig, raw, path or "<command line>")


def load_preset(name_or_path: str) -> Preset:
    """A packaged preset by name (``demo``) or a preset YAML file."""
    packaged = resources.files("raypipe.presets") / f"{name_or_path}.yaml"
    if packaged.is_file():
        origin = f"preset {name_or_path}"
        return from_dict(Preset, parse_yaml(packaged.read_text(encoding="utf-8"), origin), origin)
    return from_dict(Preset, load_yaml(name_or_path), name_or_path)


def load_run_config(preset: str | None, config: str | Path | None) -> tuple[Preset, bool]:
    """What ``--preset`` / ``--config`` name, as a pipeline config, and whether it is a whole one.

    ``--config`` takes either format: a pipeline config (the preset format: any of its top-level keys
    ``data``, ``train``, ``tune``, ``resources``...) or a plain train config (``TrainConfig`` keys), which is
    the pipeline config with only its ``train:`` block given. Neither: every default, not whole."""
    if preset and config:
        raise InputError("command line", "give --preset or --config, not both")
    if preset:
        return load_preset(preset), True
    if config is None:
        return Preset(), False
    raw = load_yaml(config)
    if isinstance(raw, dict) and set(raw) & {f.name for f in dataclasses.fields(Preset)}:
        return from_dict(Preset, raw, config), True
    return Preset(train=from_dict(TrainConfig, raw, config)), False


def default_experiment(preset: str | None = None, config: str | Path | None = None) -> str:
    """The MLflow experiment every command uses unless ``--experiment`` names one: the preset's name, else the
    config file's name without its suffix, else ``raypipe``. One function, so ``tune --config x.yaml`` and
    ``promote/predict/report --config x.yaml`` meet in the same experiment."""
    if preset:
        return Path(preset).stem
    return Path(config).stem if config else "raypipe"


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def settings_for(per_target: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``tune.per_target`` settings of target ``name``: the entries whose spec is ``name`` or a prefix of
    it, merged with the most specific last (``train`` and ``resources`` key by key, ``space`` replaced)."""
    merged: dict[str, Any] = {"train": {}, "space": None, "resources": {}}
    for spec in sorted(per_target, key=lambda s: s.count("/")):
        if name == spec or name.startswith(spec + "/"):
            entry = per_target[spec]
            merged["train"] |= entry.get("train") or {}
            merged["resources"] |= entry.get("resources") or {}
            merged["space"] = entry.get("space") or merged["space"]
    return merged


def check_per_target(per_target: dict[str, Any], base: TrainConfig) -> None:
    """Every ``tune.per_target`` entry names a target and holds only known, well-typed settings."""
    from raypipe.data.groups import get_scheme
    from raypipe.data.targets import parse_target

    scheme = get_scheme(base.age_scheme)
    for spec, entry in per_target.items():
        where = f"tune.per_target.{spec}"
        with bad_input("tune.per_target", field=spec):
            parse_target(spec, scheme)
        if not isinstance(entry, dict) or set(entry) - {"train", "space", "resources"}:
            raise InputError(where, "expected a mapping with `train`, `space` and/or `resources`, got "
                             f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        from_dict(TrainConfig, {**to_dict(base), **(entry.get("train") or {})}, where)  # unknown keys, types
        from_dict(Resources, entry.get("resources") or {}, where, prefix="resources.")


def resources_for(base: Resources, per_target: dict[str, Any], name: str, given: dict[str, Any] | None = None
                  ) -> Resources:
    """Target ``name``'s resources: the ``resources:`` block, its ``per_target`` entries, then ``given``
    (the command line's values, None = not given)."""
    own = settings_for(per_target, name)["resources"]
    cli = {k: v for k, v in (given or {}).items() if v is not None}
    return from_dict(Resources, to_dict(base) | own | cli, "command line" if cli else "resources")
