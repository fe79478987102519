"""Studies: one Ray Tune study per target (Optuna TPE + ASHA), all sharing one Ray cluster.

``plan`` (tune/plan.py) checks everything a person can get wrong (targets, spaces, config, data) before
any worker starts; ``run`` (here) fits the studies side by side, one driver thread each, and then writes
each study's summary to its MLflow parent run (tune/parent_runs.py). Where things live, per experiment (one per pipeline config), with
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

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ray import tune

from raypipe.storage import join_uri, write_text
from raypipe.tracking.runs import experiment_id, fail_run, store_client, tracking_uri
from raypipe.tracking.study_runs import StudyLogger
from raypipe.train.loop import best_key
from raypipe.tune import search
from raypipe.tune.options import TuneOptions
from raypipe.tune.parent_runs import StudyOutcome, finalize, parent_run
from raypipe.tune.plan import Study, plan
from raypipe.tune.state import StudyState
from raypipe.tune.trial import ReleaseTrainWorkers, TagTrialNode, run_trial

__all__ = ["Study", "StudyOutcome", "TuneOptions", "plan", "run"]

# Retries of a trial whose process died (a lost node, an out-of-memory kill) or raised: it restarts
# from its last checkpoint. Tune cannot tell a lost node from a bug, so one retry only (a raising trial
# runs twice). A W > 1 trial's Train run also restarts its own dead workers (launch.py).
TRIAL_MAX_FAILURES = 1


def run(studies: list[Study], options: TuneOptions, run_dir: Path,
        on_tick: Callable[[list[StudyState]], None] | None = None) -> list[StudyOutcome]:
    """Fit every study at once (one driver thread each) and summarise each in its MLflow parent run."""
    from raypipe.ray_cluster import check_gpus, init_ray

    # Tune's own per-trial tables give way to ours unless --verbose; save study state often so a
    # killed driver loses seconds, not trials.
    if not options.verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    started = time.monotonic()
    init_ray()
    ray_start_s = time.monotonic() - started
    import ray

    cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
    check_gpus(max(s.resources.gpus_per_trial for s in studies))
    per_trial = max(s.resources.cpus_per_worker * s.resources.workers_per_trial for s in studies)
    # Studies share the cluster evenly by default; fewer trials in flight also lets TPE learn from
    # finished trials instead of sampling a batch blind.
    max_concurrent = options.max_concurrent or max(1, int(cluster_cpus // per_trial) // len(studies))

    uri = tracking_uri(run_dir)
    client = store_client(uri)
    exp_id = experiment_id(client, studies[0].experiment, run_dir)
    loggers: dict[str, StudyLogger] = {}
    for study in studies:
        study.journal_dir.mkdir(parents=True, exist_ok=True)
        if not options.resume:
            write_text(join_uri(study.path, "study.json"), json.dumps(study.record(options), indent=2))
        parent = parent_run(client, exp_id, study, options)
        StudyState.open(study.key, total=options.trials, parent_run_id=parent)  # == study.state
        loggers[study.key] = StudyLogger(uri, exp_id, study.state)
        loggers[study.key].timing.run_started, loggers[study.key].timing.ray_start_s = started, ray_start_s
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
            fail_run(client, study.state.parent_run_id, f"{type(errors[study.key]).__name__}: {errors[study.key]}")
            raise errors[study.key]
        outcomes.append(finalize(client, study, loggers[study.key]))
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
