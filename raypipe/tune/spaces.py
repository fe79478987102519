"""Search spaces as data: a YAML file becomes an Optuna define-by-run space.

Format (``search_spaces/*.yaml``; the shipped files are commented examples)::

    fixed:                      # TrainConfig keys held constant in every trial (optional)
      epochs: 8
    params:                     # searched TrainConfig keys, sampled in this order
      lr:          {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      batch_size:  {type: categorical, choices: [16, 32, 64]}
      loss:        {type: categorical, choices: [focal, bce]}
      focal_gamma: {type: uniform, low: 0.5, high: 4.0, step: 0.5, when: {loss: focal}}
      head_hidden: {type: int, low: 64, high: 512, step: 64}

``type`` is ``loguniform``, ``uniform``, ``int`` or ``categorical``; ``step`` is optional for
``uniform`` and ``int``; ``when`` makes a parameter conditional on earlier categorical ones
(a value or a list of values each). Every problem is an ``InputError`` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raypipe import fsio
from raypipe.config import TrainConfig, _coerce, check_value, from_dict, load_yaml
from raypipe.errors import InputError

DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
SPEC_KEYS = {"type", "low", "high", "step", "choices", "when"}
# Keys that decide the split, the image cache, the ASHA budget or the trial's resources: one value per study.
NOT_SEARCHABLE = {
    "image_size": "sets the image cache", "masking": "sets the image cache", "age_scheme": "sets the targets",
    "test_per_class": "sets the test split", "val_fraction": "sets the split", "include_metal": "sets the split",
    "seed": "is the run's seed", "split_seed": "sets the split", "test_max_fraction": "sets the test split", "epochs": "is the ASHA budget", "workers": "is set by --workers-per-trial",
    "use_gpu": "is set by --gpus-per-trial", "loader_workers": "is a resource setting",
    "monitor": "is the study's objective", "pretrained": "names one set of weights",
    "stop_epoch": "is set by a promotion's replay", "lr_by_epoch": "is set by a promotion's replay",
}
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, chosen: dict[str, Any]) -> bool:
        return all(key in chosen and chosen[key] in values for key, values in self.when.items())

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.type == "loguniform", step=self.step)


@dataclass
class SearchSpace:
    path: Path
    sha256: str
    fixed: dict[str, Any]
    params: list[Param]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def define(self, trial) -> None:
        """Optuna define-by-run: sample in file order, skipping parameters whose ``when`` is not met."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(chosen):
                chosen[param.name] = param.suggest(trial)

    def base_point(self, cfg: TrainConfig) -> dict[str, Any] | None:
        """The study's own config as a point of this space (its trial 0), or None when a categorical
        value of ``cfg`` is not among the space's choices (Optuna cannot enqueue it then). Numeric values
        outside a range are kept: Optuna runs a fixed point as given, with a warning."""
        point: dict[str, Any] = {}
        for param in self.params:
            if not param.active(point):
                continue
            value = getattr(cfg, param.name)
            if param.type == "categorical" and value not in param.choices:
                return None
            point[param.name] = value
        return point

    def trial_config(self, base: TrainConfig, sampled: dict[str, Any]) -> TrainConfig:
        return dataclasses.replace(base, **sampled)


def resolve(spec: str | Path) -> Path:
    """A file path, or the name of a shipped space (``fracture``, ``age``)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    for folder in (SPACES_DIR, Path.cwd() / "search_spaces"):
        if (folder / f"{spec}.yaml").is_file():
            return folder / f"{spec}.yaml"
    raise InputError(spec, f"no such search space file or shipped space (shipped: {', '.join(shipped())})")


def shipped() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(spec: str | Path, base: TrainConfig | None = None) -> SearchSpace:
    """Read and validate a space; ``base`` with the space's ``fixed`` on top checks the categorical choices."""
    from raypipe.spec import compose

    space = read_space(spec)
    check_choices(space, compose("-", "-", base or TrainConfig(), fixed=space.fixed, origin=space.path).train)
    return space


def read_space(spec: str | Path) -> SearchSpace:
    """Read a space and check its structure: keys, distributions, bounds, ``when``. Fast (no torch,
    timm or Ray import), so the CLI runs it before anything heavy; ``load_space`` adds the choices."""
    path = resolve(spec)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping with 'params' (and optional 'fixed')")
    unknown = set(raw) - {"fixed", "params"}
    if unknown:
        raise InputError(path, "unknown key (known: fixed, params)", field=sorted(unknown)[0])
    fixed = raw.get("fixed") or {}
    from_dict(TrainConfig, fixed, path, prefix="fixed.")  # types and names of the fixed block
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise InputError(path, "'params' must map at least one TrainConfig key to a distribution", field="params")
    params: list[Param] = []
    for name, spec_raw in params_raw.items():
        params.append(_param(path, str(name), spec_raw, {p.name: p for p in params}))
        if name in fixed:
            raise InputError(path, "is both fixed and searched", field=f"params.{name}")
    return SearchSpace(path, fsio.sha256_file(path), fixed, params)


def _param(path: Path, name: str, raw: Any, earlier: dict[str, Param]) -> Param:
    key = f"params.{name}"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise InputError(path, "unknown parameter: not a TrainConfig key (see raypipe/config.py)", field=key)
    if name in NOT_SEARCHABLE:
        raise InputError(path, f"cannot be searched: it {NOT_SEARCHABLE[name]}; set it under 'fixed'", field=key)
    if not isinstance(raw, dict):
        raise InputError(path, "expected a mapping like {type: uniform, low: 0, high: 1}", field=key)
    if extra := set(raw) - SPEC_KEYS:
        raise InputError(path, f"unknown key (known: {', '.join(sorted(SPEC_KEYS))})", field=f"{key}.{sorted(extra)[0]}")
    kind = raw.get("type")
    if kind not in DISTRIBUTIONS:
        raise InputError(path, f"unknown distribution {kind!r} (known: {', '.join(DISTRIBUTIONS)})", field=f"{key}.type")
    hint = typing.get_type_hints(TrainConfig)[name]
    when = _when(path, key, raw.get("when"), earlier)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(path, "categorical needs a non-empty list 'choices'", field=f"{key}.choices")
        if extra := {"low", "high", "step"} & set(raw):
            raise InputError(path, "categorical takes 'choices' only", field=f"{key}.{sorted(extra)[0]}")
        resolved = tuple(_coerce(hint, c, path, f"{key}.choices") for c in choices)
        for choice in resolved:
            if (why := check_value(name, choice)) is not None:
                raise InputError(path, f"choice {why}", field=f"{key}.choices")
        if len(set(map(repr, resolved))) != len(resolved):
            raise InputError(path, "duplicate choices", field=f"{key}.choices")
        return Param(name, kind, choices=resolved, when=when)
    if "choices" in raw:
        raise InputError(path, f"{kind} takes low/high (and step), not choices", field=f"{key}.choices")
    bounds = {}
    for bound in ("low", "high"):
        value = raw.get(bound)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(path, f"'{bound}' must be a number", field=f"{key}.{bound}")
        bounds[bound] = value
    low, high, step = bounds["low"], bounds["high"], raw.get("step")
    if low >= high:
        raise InputError(path, f"low ({low}) must be below high ({high})", field=key)
    numeric = _base_type(hint)
    if numeric not in (int, float):
        raise InputError(path, f"{kind} needs a numeric key; {name} is {numeric.__name__}: use categorical", field=key)
    if kind == "int" and (numeric is not int or not all(float(v).is_integer() for v in (low, high))):
        raise InputError(path, "int needs integer bounds and an integer key", field=key)
    if kind != "int" and numeric is int:
        raise InputError(path, f"{name} is an integer: use type int or categorical", field=f"{key}.type")
    if kind == "loguniform":
        if low <= 0:
            raise InputError(path, f"loguniform needs low > 0, got {low}", field=f"{key}.low")
        if step is not None:
            raise InputError(path, "loguniform takes no step (Optuna cannot combine log and step)", field=f"{key}.step")
    if step is not None and (not isinstance(step, int | float) or isinstance(step, bool) or step <= 0
                             or step > high - low):
        raise InputError(path, f"step must be a number in (0, high - low], got {step!r}", field=f"{key}.step")
    if kind == "int" and step is not None and not float(step).is_integer():
        raise InputError(path, "int needs an integer step", field=f"{key}.step")
    for bound in ("low", "high"):  # every value in [low, high] must be a valid setting
        if (why := check_value(name, bounds[bound])) is not None:
            raise InputError(path, f"{name} {why}", field=f"{key}.{bound}")
    return Param(name, kind, float(low), float(high), None if step is None else float(step), when=when)


def _when(path: Path, key: str, raw: Any, earlier: dict[str, Param]) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "'when' maps earlier categorical parameters to a value or list", field=f"{key}.when")
    out = {}
    for other, values in raw.items():
        parent = earlier.get(other)
        if parent is None or parent.type != "categorical":
            raise InputError(path, f"'when' refers to {other!r}, which is not a categorical parameter listed "
                             "above it", field=f"{key}.when")
        values = tuple(values) if isinstance(values, list) else (values,)
        for value in values:
            if value not in parent.choices:
                raise InputError(path, f"{value!r} is not a choice of {other} ({list(parent.choices)})",
                                 field=f"{key}.when.{other}")
        out[other] = values
    return out


def _base_type(hint: Any) -> type:
    """``float`` for ``float``, ``str`` for ``str | None``."""
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return options[0]


def check_choices(space: SearchSpace, cfg: TrainConfig) -> None:
    """Every categorical choice of a named setting (loss, sampler, backbone...) must be known, on top of
    ``cfg`` (the study's composed config, raypipe/spec.py)."""
    from raypipe.train.job import check_choices as check_config

    check_config(cfg, str(space.path))
    for param in space.params:
        for choice in param.choices:
            try:
                check_config(dataclasses.replace(cfg, **{param.name: choice}), str(space.path))
            except InputError as exc:
                raise InputError(space.path, exc.reason, field=f"params.{param.name}.choices") from None
