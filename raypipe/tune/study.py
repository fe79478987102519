"""Studies: one Ray Tune study per target (Optuna TPE + ASHA), all sharing one Ray cluster.

``plan`` checks everything a person can get wrong (targets, spaces, config, data) before any worker
starts; ``run`` fits the studies side by side, one driver thread each, and then writes each study's
summary to its MLflow parent run. Where things live, per experiment (one per pipeline config), with
<storage> = ``--storage`` (a shared directory or s3://bucket/prefix; default: the run dir):

  <storage>/tune/<experiment>/<target>-round-<n>/            Tune experiment (state, trials, checkpoints)
  <storage>/tune/<experiment>/<target>-round-<n>/study.json  what the round was started with
  <storage>/tune/<experiment>/<target>-round-<n>/train/      Ray Train runs of W > 1 trials
  <storage>/tune/<experiment>/optuna-journal.log             Optuna storage, one study per target
                                                             (object-store storage: in <run_dir> instead)

Trial processes, wherever they run, touch only <storage> and the image cache; MLflow is written by
the driver alone (``StudyLogger``), so no trial ever needs the tracking store.

(One flat name per study: Tune stages driver files by experiment name, so studies running side by
side in one process must not share a name.)

A new ``raypipe tune`` starts round n+1 of each target and warm-starts TPE from the same Optuna
study (same data split); ``--resume`` continues the latest round with ``Tuner.restore``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from raypipe import spec as run_spec
from raypipe.config import Resources, TrainConfig, check_per_target, settings_for, to_dict
from raypipe.data.prepare import PreparedData, Progress, prepare, split_params
from raypipe.data.targets import Target, all_targets, parse_target
from raypipe.errors import InputError
from raypipe.models.losses import build_loss
from raypipe.spec import RunSpec, compose
from raypipe.tracking.runs import experiment_id, git_sha, tracking_uri
from raypipe.tracking.study_runs import StudyLogger, find_or_create_parent
from raypipe.train import checkpoint
from raypipe.train.job import check_choices, make_job
from raypipe.train.launch import Storage, join_uri, list_names, read_text, write_text
from raypipe.train.loop import TrainJob, best_key
from raypipe.tune import optuna_store, search
from raypipe.tune.options import TuneOptions
from raypipe.tune.spaces import SearchSpace, read_space
from raypipe.tune.spaces import check_choices as check_space_choices
from raypipe.tune.state import StudyState, trial_number
from raypipe.tune.trial import ReleaseTrainWorkers, TagTrialNode, run_trial

OPTUNA_FILE = "optuna-journal.log"
# Retries of a trial whose process died (a lost node, an out-of-memory kill) or raised: it restarts
# from its last checkpoint. Tune cannot tell a lost node from a bug, so one retry only (a raising trial
# runs twice). A W > 1 trial's Train run also restarts its own dead workers (launch.py).
TRIAL_MAX_FAILURES = 1


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


@dataclass
class StudyOutcome:
    target: str
    monitor: str
    parent_run_id: str
    best_value: float
    best_trial: int | None
    best_run_id: str | None
    best_params: dict[str, Any]
    base_value: float  # trial 0, the study's own config unchanged (nan: not run, or its choices are not searched)
    finished: int
    pruned: int
    failed: int
    seconds: float


# ------------------------------------------------------------------------------------ planning
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
    tracking_uri(run_dir)  # a tracking server that does not answer stops us now, not after the data work
    prepared_by_key: dict[tuple, PreparedData] = {}
    studies: list[Study] = []
    explicit = target_specs != ["all"]
    check_per_target(per_target or {}, base)
    for target in _targets(target_specs, base):
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
            warnings.warn(f"skipping {target.name}: {reason}", stacklevel=2)
            continue
        root = storage.join("tune", experiment)
        studies.append(Study(experiment, target, space, spec, job, prepared.data_hash, prepared.split_hash, storage,
                             storage.journal_dir(run_dir, experiment), _round(root, options.resume, target)))
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
        try:
            target = parse_target(spec, scheme)
        except ValueError as exc:
            raise InputError("--target", str(exc)) from None
        if target not in out:
            out.append(target)
    return out


def _check_losses(space: SearchSpace, cfg: TrainConfig, job: TrainJob) -> None:
    """A space shared by targets must fit each: 'ce' on a binary target is an error before any trial."""
    losses = next((p.choices for p in space.params if p.name == "loss"), (cfg.loss,))
    for loss in losses:
        try:
            build_loss(dataclasses.replace(cfg, loss=loss), job.n_classes)
        except ValueError as exc:
            raise InputError(space.path, f"{exc} (target {job.target})", field="params.loss") from None


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


# ------------------------------------------------------------------------------------- running
def run(studies: list[Study], options: TuneOptions, run_dir: Path,
        on_tick: Callable[[list[StudyState]], None] | None = None) -> list[StudyOutcome]:
    """Fit every study at once (one driver thread each) and summarise each in its MLflow parent run."""
    from raypipe.train.launch import check_gpus, init_ray

    # Tune's own per-trial tables give way to ours unless --verbose; save study state often so a
    # killed driver loses seconds, not trials.
    if not options.verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    init_ray()
    import ray

    cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
    check_gpus(max(s.resources.gpus_per_trial for s in studies))
    per_trial = max(s.resources.cpus_per_worker * s.resources.workers_per_trial for s in studies)
    # Studies share the cluster evenly by default; fewer trials in flight also lets TPE learn from
    # finished trials instead of sampling a batch blind.
    max_concurrent = options.max_concurrent or max(1, int(cluster_cpus // per_trial) // len(studies))

    uri = tracking_uri(run_dir)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, studies[0].experiment, run_dir)
    loggers: dict[str, StudyLogger] = {}
    for study in studies:
        study.journal_dir.mkdir(parents=True, exist_ok=True)
        if not options.resume:
            write_text(join_uri(study.path, "study.json"), json.dumps(study.record(options), indent=2))
        parent = _parent_run(client, exp_id, study, options)
        StudyState.open(study.key, total=options.trials, parent_run_id=parent)  # == study.state
        loggers[study.key] = StudyLogger(uri, exp_id, study.state)
        if options.resume:
            loggers[study.key].load_existing()
        # Registered here, in the main thread: Tune's trainable registry is not thread-safe.
        tune.register_trainable(_trainable_name(study), _trainable(study, options))

    errors: dict[str, BaseException] = {}

    def fit(study: Study) -> None:
        try:  # the outcome is read back from the experiment state in _finalize
            _tuner(study, options, max_concurrent, loggers[study.key]).fit()
        except BaseException as exc:  # re-raised by the main thread
            errors[study.key] = exc

    threads = [threading.Thread(target=fit, args=(s,), name=f"study {s.target.name}", daemon=True) for s in studies]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if on_tick:
            on_tick([s.state for s in studies])
        time.sleep(0.5)
    if on_tick:
        on_tick([s.state for s in studies])

    outcomes = []
    for study in studies:
        if study.key in errors:
            client.set_terminated(study.state.parent_run_id, "FAILED")
            raise errors[study.key]
        outcomes.append(_finalize(client, study, loggers[study.key]))
    return outcomes


def _trainable_name(study: Study) -> str:
    return f"raypipe-{study.experiment}-{study.slug}"


def _trainable(study: Study, options: TuneOptions):
    res = study.resources
    workers = res.workers_per_trial
    gpus_per_worker = res.gpus_per_trial / workers
    fn = tune.with_parameters(run_trial, job=study.job, train_storage=join_uri(study.path, "train"),
                              cpus_per_worker=res.cpus_per_worker, gpus_per_worker=gpus_per_worker)
    if workers == 1:
        resources = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_trial}
    else:
        # The trial only drives its TorchTrainer, whose workers hold the CPUs/GPUs. Tune refuses an
        # all-zero request, and any CPU here would keep a 2-CPU machine from placing 2 workers: ask
        # for a token amount of memory instead.
        resources = {"CPU": 0, "memory": 1 << 20}
    return tune.with_resources(fn, resources)


def _sampler(options: TuneOptions, study: Study):
    seed = search.seed_for(options.seed, study.target.name, study.round)
    return search.sampler(options.searcher, seed, options.budget(study.cfg.epochs)["startup_trials"])


def _tuner(study: Study, options: TuneOptions, max_concurrent: int, logger: StudyLogger):
    name = _trainable_name(study)
    if options.resume:
        return tune.Tuner.restore(study.path, trainable=name, resume_errored=True)

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    monitor, objective = study.job.monitor, best_key(study.job.monitor)
    budget = options.budget(study.cfg.epochs)
    # Trial 0 is the study's own config: a study never ends below its starting point on validation.
    base = study.state.base_point
    if base is None:
        warnings.warn(f"{study.target.name}: the config's choices are not all in {study.space.path.name}; the base "
                      "config is not run as trial 0", stacklevel=2)
    searcher = OptunaSearch(space=study.space.define, metric=objective, mode="max", sampler=_sampler(options, study),
                            study_name=study.optuna_name, points_to_evaluate=[base] if base is not None else None,
                            storage=JournalStorage(JournalFileBackend(str(study.optuna_storage.resolve()))))
    scheduler = search.scheduler(options.scheduler, study.state, objective, study.cfg.epochs,
                                 budget["grace_period"], budget["reduction_factor"])
    return tune.Tuner(
        name,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=options.trials, max_concurrent_trials=max_concurrent,
                                    reuse_actors=study.resources.workers_per_trial == 1),
        run_config=tune.RunConfig(
            name=study.name, storage_path=study.root, verbose=2 if options.verbose else 0,
            stop=search.EpochBudget(options.epoch_budget) if options.epoch_budget else None,
            callbacks=[logger, ReleaseTrainWorkers(), TagTrialNode(logger)],
            failure_config=tune.FailureConfig(max_failures=TRIAL_MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=monitor,
                                                    checkpoint_score_order="max"),
        ),
    )


# ------------------------------------------------------------------------------ MLflow parent run
def _parent_run(client: MlflowClient, exp_id: str, study: Study, options: TuneOptions) -> str:
    tags = {"raypipe.target": study.target.name, "raypipe.monitor": study.job.monitor,
            "raypipe.data_hash": study.data_hash, "raypipe.split_hash": study.split_hash,
            "raypipe.space": str(study.space.path), "raypipe.space_sha256": study.space.sha256,
            "raypipe.optuna_study": study.optuna_name, "raypipe.optuna_storage": str(study.optuna_storage),
            "raypipe.tune_path": study.path,
            "raypipe.git_sha": git_sha(), "mlflow.source.name": "raypipe tune"}
    existing = client.search_runs([exp_id], f"tags.`raypipe.study` = '{study.key}'", max_results=1)
    run_id = find_or_create_parent(client, exp_id, study.key, f"{study.target.name} study (round {study.round})", tags)
    if not existing:  # params are immutable: only a new parent gets them
        params = run_spec.params(study.spec) | {"space": study.space.path.name,
                                                "trials": str(options.trials), "tune_seed": str(options.seed),
                                           "searcher": options.searcher, "scheduler": options.scheduler,
                                           "epoch_budget": str(options.epoch_budget or "none"),
                                           "tune_seed_stream": str(search.seed_for(options.seed, study.target.name,
                                                                                   study.round))}
        params |= {k: str(v) for k, v in options.budget(study.cfg.epochs).items()}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        run_spec.log(client, run_id, study.spec, with_params=False)
    return run_id


def _finalize(client: MlflowClient, study: Study, logger: StudyLogger) -> StudyOutcome:
    """Close every child run, then write the study's best trial, counts and plots to the parent run."""
    state, monitor, run_id = study.state, study.job.monitor, study.state.parent_run_id
    trials = _tune_trials(study)
    orphans = logger.reconcile(trials)["orphans"]
    # Staging folders the per-trial sweep (tune/trial.py) missed: a trial that wrote again before its process
    # died, or one a killed driver started and the restored study never knew (an orphan)
    for trial_id in [t.trial_id for t in trials] + orphans:
        checkpoint.remove_staging(trial_id)
    optuna_store.close_stale_trials(study)
    best_value, best = -math.inf, None
    for trial in trials:
        value = float(trial.metric_analysis.get(monitor, {}).get("max", math.nan))
        if not math.isnan(value) and value > best_value:
            best_value, best = value, trial
    best_params = dict(best.config) if best else {}
    base_value = next((float(t.metric_analysis.get(monitor, {}).get("max", math.nan)) for t in trials
                       if state.is_base(t.config)), math.nan)
    counts = logger.counts()
    now = mlflow.utils.time.get_current_time_millis()
    metrics = [Metric(k, float(v), now, 0) for k, v in counts.items()]
    best_run_id = None
    if not math.isnan(base_value):
        metrics.append(Metric(f"base_{monitor}", base_value, now, 0))
    if best:
        best_run_id = logger.run_id_for(best.trial_id)
        metrics.append(Metric(f"best_{monitor}", best_value, now, 0))
        tags = {"raypipe.best_trial_id": best.trial_id, "raypipe.best_trial_number": str(trial_number(best)),
                "raypipe.best_run_id": best_run_id or ""} | {f"best.{k}": str(v) for k, v in best_params.items()}
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.log_dict(run_id, {"trial_id": best.trial_id, "trial_number": trial_number(best), monitor: best_value,
                                 "run_id": best_run_id, "params": best_params,
                                 "config": to_dict(dataclasses.replace(study.cfg, **best_params))}, "best_trial.json")
    client.log_batch(run_id, metrics=metrics)
    optuna_store.log_study_plots(client, run_id, study)
    client.set_terminated(run_id, "FINISHED" if best else "FAILED")
    state.ended = time.monotonic()
    return StudyOutcome(study.target.name, monitor, run_id, best_value,
                        trial_number(best) if best else None, best_run_id, best_params, base_value,
                        counts["trials_finished"], counts["trials_pruned"], counts["trials_failed"],
                        state.ended - state.started)


def _tune_trials(study: Study) -> list:
    """Tune's trial objects of this round, read back from its saved experiment state."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(study.path).trials
