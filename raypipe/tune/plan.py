"""Planning a tuning run: one checked ``Study`` per target, before Ray starts or MLflow is written.

``plan`` checks everything a person can get wrong (targets, spaces, config, data) and composes each
target's settings once (``raypipe/spec.py``); ``tune/study.py`` runs the studies, ``tune/parent_runs.py``
writes their MLflow parent runs. Where a study lives: see ``tune/study.py``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raypipe.config import Resources, TrainConfig, check_per_target, settings_for, to_dict
from raypipe.data.prepare import PreparedData, Progress, prepare, split_params
from raypipe.data.targets import Target, all_targets, parse_target
from raypipe.errors import InputError, bad_input
from raypipe.models.losses import build_loss
from raypipe.spec import RunSpec, compose
from raypipe.storage import Storage, join_uri, list_names, read_text
from raypipe.train.job import check_choices, make_job
from raypipe.train.loop import TrainJob
from raypipe.tune.options import TuneOptions
from raypipe.tune.spaces import SearchSpace, read_space
from raypipe.tune.spaces import check_choices as check_space_choices
from raypipe.tune.state import StudyState

OPTUNA_FILE = "optuna-journal.log"


@dataclass
class Study:
    experiment: str
    target: Target
    space: SearchSpace
    spec: RunSpec  # the composed settings (raypipe/spec.py); trials add the sampled parameters
    job: TrainJob
    data_hash: str
    split_hash: str
    storage: Storage
    journal_dir: Path  # where the Optuna journal lives (absolute, on the driver)
    round: int
    state: StudyState = field(init=False)

    def __post_init__(self) -> None:
        self.state = StudyState.open(self.key, target=self.target.name, monitor=self.job.monitor,
                                     base_point=self.space.base_point(self.cfg))

    @property
    def cfg(self) -> TrainConfig:
        return self.spec.train

    @property
    def resources(self) -> Resources:
        """What each trial asks for."""
        return self.spec.resources

    @property
    def slug(self) -> str:
        return self.target.name.replace("/", "-")

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.slug}/round-{self.round}"

    @property
    def root(self) -> str:
        """``<storage>/tune/<experiment>``: Tune's storage_path (a path or a URI)."""
        return self.storage.join("tune", self.experiment)

    @property
    def name(self) -> str:
        return f"{self.slug}-round-{self.round}"

    @property
    def path(self) -> str:
        """This round's Tune experiment directory (a path or a URI)."""
        return join_uri(self.root, self.name)

    @property
    def optuna_storage(self) -> Path:
        return self.journal_dir / OPTUNA_FILE

    @property
    def optuna_name(self) -> str:
        # One Optuna study per target, data split and space: later rounds warm-start from earlier trials of
        # the same space only (another space's trials would be points outside it, or of other parameters).
        return f"{self.target.name}@{self.split_hash[:12]}-{self.space.sha256[:8]}"

    def record(self, options: TuneOptions) -> dict[str, Any]:
        return {"target": self.target.name, "space": str(self.space.path), "space_sha256": self.space.sha256,
                "data_hash": self.data_hash, "split_hash": self.split_hash, "trials": options.trials,
                **to_dict(self.resources), "seed": options.seed, "optuna_study": self.optuna_name, "config": to_dict(self.cfg)}


def plan(data: Path, target_specs: list[str], space_spec: str | Path | None, base: TrainConfig,
         overrides: dict[str, Any], run_dir: Path, experiment: str, options: TuneOptions,
         source: str = "auto", progress: Progress | None = None,
         per_target: dict[str, Any] | None = None) -> list[Study]:
    """One checked ``Study`` per target; ``target_specs`` may be ``["all"]`` (age + every
    projection x age-group fracture model). ``per_target`` (a pipeline config's ``tune.per_target``)
    gives targets under a spec prefix their own train settings (backbone, image size...) and space."""
    if options.trials < 1:
        raise InputError("--trials", f"must be at least 1, got {options.trials}")
    storage = Storage.resolve(options.storage, run_dir)
    from raypipe.tracking.runs import tracking_uri

    tracking_uri(run_dir)  # a tracking server that does not answer stops us now, not after the data work
    prepared_by_key: dict[tuple, PreparedData] = {}
    studies: list[Study] = []
    explicit = target_specs != ["all"]
    check_per_target(per_target or {}, base)
    def plan_one(target: Target) -> str | None:
        """Add ``target``'s study; why it cannot be tuned when it is skipped (``all`` only)."""
        space = read_space(settings_for(per_target or {}, target.name)["space"] or space_spec or target.kind)
        spec = compose(experiment, target.name, base, per_target=per_target, fixed=space.fixed, overrides=overrides,
                       resources=options.resources_for(per_target or {}, target.name), space=space.path,
                       searched=tuple(space.names), tune=options.spec(), storage=options.storage, origin=space.path)
        cfg = spec.train
        check_choices(cfg, str(space.path))
        check_space_choices(space, cfg)
        key = (split_params(cfg), cfg.image_size, cfg.masking)
        if key not in prepared_by_key:
            prepared_by_key[key] = prepare(data, cfg, run_dir, source, progress,
                                           cache_root=storage.cache_root(run_dir))
        prepared = prepared_by_key[key]
        try:
            job = make_job(prepared, target, cfg)
            reason = _untunable(job)
        except InputError as exc:  # e.g. no images of this group in a split: a small data set under --all
            job, reason = None, exc.reason
        if reason is None:
            _check_losses(space, cfg, job)
        else:
            if explicit:
                raise InputError(f"target {target.name}", reason)
            warnings.warn(f"skipping {target.name}: {reason}", stacklevel=3)
            return reason
        root = storage.join("tune", experiment)
        studies.append(Study(experiment, target, space, spec, job, prepared.data_hash, prepared.split_hash, storage,
                             storage.journal_dir(run_dir, experiment), _round(root, options.resume, target)))
        return None

    skipped = [plan_one(target) for target in _targets(target_specs, base)]
    if not explicit and not any(s.target.kind == "fracture" for s in studies) and any(
            r and "records no projection" in r for r in skipped):
        plan_one(Target("fracture"))  # a source without projections (MURA): one model over every image
    if not studies:
        raise InputError("--target", "no target has enough data to tune")
    if options.resume:
        for study in studies:
            _check_resume(study, options)
    return studies


def _targets(specs: list[str], cfg: TrainConfig) -> list[Target]:
    from raypipe.data.groups import get_scheme

    scheme = get_scheme(cfg.age_scheme)
    if specs == ["all"]:
        return all_targets(scheme)
    out = []
    for spec in specs:
        with bad_input("--target"):
            target = parse_target(spec, scheme)
        if target not in out:
            out.append(target)
    return out


def _check_losses(space: SearchSpace, cfg: TrainConfig, job: TrainJob) -> None:
    """A space shared by targets must fit each: 'ce' on a binary target is an error before any trial."""
    losses = next((p.choices for p in space.params if p.name == "loss"), (cfg.loss,))
    for loss in losses:
        with bad_input(space.path, field="params.loss", note=f" (target {job.target})"):
            build_loss(dataclasses.replace(cfg, loss=loss), job.n_classes)


def _untunable(job: TrainJob) -> str | None:
    present = len(set(job.val_labels.tolist()))
    if present < 2:
        return f"its validation split holds {present} class(es): {job.monitor} is undefined"
    return None


def _round(root: str, resume: bool, target: Target) -> int:
    prefix = f"{target.name.replace('/', '-')}-round-"
    rounds = sorted(int(name.removeprefix(prefix)) for name in list_names(root)
                    if name.startswith(prefix) and name.removeprefix(prefix).isdigit())
    if resume:
        if not rounds:
            raise InputError(str(root), f"nothing to resume for {target.name}: no earlier study")
        return rounds[-1]
    return (rounds[-1] + 1) if rounds else 1


def _check_resume(study: Study, options: TuneOptions) -> None:
    record_path = join_uri(study.path, "study.json")
    text = read_text(record_path)
    if text is None:
        raise InputError(record_path, "missing: the study never started; run without --resume")
    before = json.loads(text)
    now = study.record(options)
    for key in ("space_sha256", "split_hash", "trials", "workers_per_trial"):
        if before.get(key) != now[key]:
            raise InputError(record_path, f"--resume needs the same inputs: {key} was {before.get(key)!r}, "
                             f"now {now[key]!r}", field=key)
