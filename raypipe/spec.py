"""The run spec: what one target's run is, composed once from everything a person can set.

Layers, each over the one before (one set of defaults: the dataclasses of config.py):

  1. the pipeline config (a packaged preset or a YAML file): its ``train:`` block
  2. the search space's ``fixed:`` block                       (tuning only)
  3. ``tune.per_target`` entries whose spec prefixes the target (the more specific last)
  4. ``--set key=value`` and the command's own options (``--epochs``, ``--workers``...)
  5. resources: ``resources:``, its ``per_target`` entries, ``--workers-per-trial``... (they set the train
     config's ``workers`` and ``use_gpu``)

``compose`` is the only place these meet; ``train``, ``tune``, ``pipeline run`` and ``promote`` call it and
read the frozen result. ``log`` writes it to an MLflow run (params + ``run_spec.yaml``), so any result can
be re-run from MLflow alone.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raypipe.config import PromotePlan, Resources, TrainConfig, from_dict, settings_for, to_dict
from raypipe.errors import InputError

SPEC_FILE = "run_spec.yaml"


@dataclass(frozen=True)
class RunSpec:
    """One target's run, composed and validated: nothing downstream merges settings again."""

    experiment: str
    target: str
    train: TrainConfig
    resources: Resources = field(default_factory=Resources)
    space: str | None = None  # the search space file (tuning); None: not a tuning run
    searched: tuple[str, ...] = ()  # keys the space samples: the train config's value is trial 0's
    tune: dict[str, Any] = field(default_factory=dict)  # the study's options (trials, searcher, budget...)
    promote: PromotePlan | None = None  # a promotion's plan; None: not a promotion
    storage: str | None = None  # Ray storage (--storage); None = the run dir

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "target": self.target, "train": to_dict(self.train),
                "resources": to_dict(self.resources), "space": self.space, "searched": list(self.searched),
                "tune": dict(self.tune), "promote": None if self.promote is None else to_dict(self.promote),
                "storage": self.storage}

    def with_train(self, **changes: Any) -> RunSpec:
        """The same spec with train settings replaced (a promotion's replay of a trial), checked again."""
        train = from_dict(TrainConfig, to_dict(self.train) | changes, f"run spec of {self.target}")
        return dataclasses.replace(self, train=train)


def compose(experiment: str, target: str, base: TrainConfig, *, per_target: dict[str, Any] | None = None,
            fixed: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            resources: Resources | None = None, space: str | Path | None = None, searched: tuple[str, ...] = (),
            tune: dict[str, Any] | None = None, promote: PromotePlan | None = None,
            storage: str | None = None, origin: str | Path = "command line") -> RunSpec:
    """Layer the settings of one target (see the module's docstring) into a checked, frozen ``RunSpec``.

    A key the space searches cannot be fixed by ``per_target`` or ``--set``: the search would overwrite it.
    """
    own = settings_for(per_target or {}, target)
    overrides = overrides or {}
    for where, given in (("--set", overrides), (f"tune.per_target ({target})", own["train"])):
        if clash := sorted(set(given) & set(searched)):
            raise InputError(where, f"{clash[0]} is searched by {space}; drop it there to fix it", field=clash[0])
    res = resources or Resources()
    layered = {**to_dict(base), **(fixed or {}), **own["train"], **overrides,
               "workers": res.workers_per_trial, "use_gpu": res.gpus_per_trial > 0}
    train = from_dict(TrainConfig, layered, origin)
    return RunSpec(experiment, target, train, res, None if space is None else str(space), tuple(searched),
                   dict(tune or {}), promote, storage)


def params(spec: RunSpec) -> dict[str, str]:
    """The spec as flat MLflow params: train keys bare (as every run has logged them), the rest prefixed.
    Searched keys are left out: each trial logs its own value."""
    from raypipe.tracking.runs import flat_params

    train = {k: v for k, v in to_dict(spec.train).items() if k not in spec.searched}
    out = flat_params("", train) | flat_params("", to_dict(spec.resources)) | {"target": spec.target}
    return out | (flat_params("promote.", to_dict(spec.promote)) if spec.promote else {})


def log(client, run_id: str, spec: RunSpec, with_params: bool = True) -> None:
    """Write ``spec`` to an MLflow run: params (a new run only: params are immutable) and ``run_spec.yaml``."""
    from mlflow.entities import Param

    if with_params:
        logged = client.get_run(run_id).data.params
        new = {k: v for k, v in params(spec).items() if k not in logged}
        client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SPEC_FILE
        path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        client.log_artifact(run_id, str(path))


def load(text: str, origin: str) -> RunSpec:
    """A ``run_spec.yaml`` read back (to re-run a result from MLflow alone)."""
    from raypipe.config import parse_yaml

    raw = parse_yaml(text, origin)
    if not isinstance(raw, dict):
        raise InputError(origin, "expected a run spec mapping")
    return RunSpec(raw["experiment"], raw["target"], from_dict(TrainConfig, raw["train"], origin, "train."),
                   from_dict(Resources, raw.get("resources"), origin, "resources."), raw.get("space"),
                   tuple(raw.get("searched") or ()), dict(raw.get("tune") or {}),
                   None if raw.get("promote") is None else from_dict(PromotePlan, raw["promote"], origin, "promote."),
                   raw.get("storage"))
