"""The ``raypipe`` command line (also ``python -m raypipe``): parse, call one function, print."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raypipe.cli_data import DEFAULT_RUN_DIR, RunDir, Source, StorageOpt, _check_options, data_app, data_synth
from raypipe.config import (
    check_value,
    default_experiment,
    load_preset,
    load_run_config,
    parse_yaml,
    resources_for,
)
from raypipe.console import console, err_console, progress_bar
from raypipe.errors import EXIT_INPUT, InputError
from raypipe.spec import compose

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tune and ship pediatric wrist X-ray classifiers on Ray + MLflow.")
app.add_typer(data_app, name="data")
pipeline_app = typer.Typer(no_args_is_help=True, help="The whole pipeline: data -> tune -> promote -> report.")
app.add_typer(pipeline_app, name="pipeline")

def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # the installed distribution's, not a copy in the code

        console.print(f"raypipe {version('raypipe')}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print raypipe's version and exit.")] = False) -> None:
    """Tune and ship pediatric wrist X-ray classifiers on Ray + MLflow."""


def _resolve_inputs(preset: str | None, config: Path | None, data: Path | None, target: str | None):
    """Preset or config file -> (pipeline config, data, target, whether it was a whole pipeline config). A
    preset or pipeline config names its data (synthesised when absent, from its ``synth:`` block) and target."""
    chosen, whole = load_run_config(preset, config)
    if whole:
        data = data or Path(chosen.data)
        target = target or chosen.target
        if not data.exists():
            data_synth(data, **chosen.synth)
    return chosen, data, target, whole


Preset_ = Annotated[str | None, typer.Option("--preset", help="Packaged preset, e.g. 'demo' (synthesises its data).")]
Config = Annotated[Path | None, typer.Option("--config", help="Pipeline config YAML (the preset format) or a "
                                             "train config (keys of TrainConfig); its name is the experiment's.")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set lr=3e-4")]
Data = Annotated[Path | None, typer.Option("--data", help="Data set folder (or CSV).")]


@app.command("train")
def train(
    data: Data = None,
    target: Annotated[str | None, typer.Option(help="age | fracture | fracture/AP | fracture/Lat/2")] = None,
    config: Config = None,
    preset: Preset_ = None,
    workers: Annotated[int | None, typer.Option(help="1 = in-process; >1 = Ray Train DDP.")] = None,
    epochs: int | None = None,
    set_: Sets = None,
    run_dir: RunDir = DEFAULT_RUN_DIR,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the preset or config "
                                                   "name, else raypipe).")] = None,
    source: Source = "auto",
) -> None:
    """Train one target and record it as an MLflow run."""
    overrides = _overrides(set_) | ({"epochs": epochs} if epochs is not None else {})
    chosen, data, target, _ = _resolve_inputs(preset, config, data, target)
    experiment = experiment or default_experiment(preset, config)
    if data is None or target is None:
        raise InputError("command line", "--data and --target are required (or --preset)")
    # --workers (or --set workers=N) is the run's resources: W workers of the resources block's size
    given = {"workers_per_trial": workers if workers is not None else overrides.pop("workers", None)}
    if overrides.pop("use_gpu", False) is True:
        given["gpus_per_trial"] = given["workers_per_trial"] or chosen.resources.workers_per_trial
    spec = compose(experiment, target, chosen.train, per_target=chosen.tune.per_target, overrides=overrides,
                   resources=resources_for(chosen.resources, chosen.tune.per_target, target, given),
                   origin=f"preset {preset}" if preset else config or "--set")

    from raypipe.train.job import train_target  # torch, timm, Ray, MLflow: only once the config is good

    with progress_bar("decoding images into the cache") as progress:
        outcome = train_target(data, spec, run_dir, source, progress)
    table = Table(title=f"{outcome.target}: best epoch {outcome.best_epoch} of {outcome.epochs_run}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in outcome.best_metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"MLflow run {outcome.run_id} in experiment '{experiment}' ({outcome.tracking_uri})")
    from raypipe.tracking.runs import ui_hint

    console.print(ui_hint(outcome.tracking_uri))


@app.command("tune")
def tune(
    data: Data = None,
    target: Annotated[list[str] | None, typer.Option(help="Repeat for several: --target age --target "
                                                      "fracture/AP/1. Default: the preset's, else all.")] = None,
    all_targets: Annotated[bool, typer.Option("--all", help="Age + every projection x age-group fracture model.")] = False,
    space: Annotated[str | None, typer.Option(help="Search space YAML for every target (default: "
                                              "search_spaces/age.yaml or fracture.yaml by target).")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials per target.")] = None,
    workers_per_trial: Annotated[int | None, typer.Option(help="1 = in-process trial; >1 = TorchTrainer DDP per "
                                                          "trial (default: the config's resources, else 1).")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial; fractions share a GPU (default: "
                                                         "the config's resources, else 0).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="Default: the config's resources, else 1.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Trials per study at once (default: what the "
                                                       "cluster's CPUs allow).")] = None,
    seed: Annotated[int, typer.Option(help="Searcher seed.")] = 0,
    searcher: Annotated[str | None, typer.Option(help="tpe (default) or random: a baseline for the same "
                                                 "space.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="asha (default: stops weak trials early) or fifo "
                                                  "(every trial runs all its epochs).")] = None,
    epoch_budget: Annotated[int | None, typer.Option(help="Trial-epochs per study: it ends once its trials "
                                                     "have reported that many (default: no cap).")] = None,
    grace_period: Annotated[int | None, typer.Option(help="ASHA: epochs before a trial can be stopped "
                                                     "(default: epochs / reduction factor).")] = None,
    reduction_factor: Annotated[int | None, typer.Option(help="ASHA: 1 trial in this many goes on at each "
                                                         "rung (default 2).")] = None,
    startup_trials: Annotated[int | None, typer.Option(help="TPE: trials before it models the results, the "
                                                       "base config included (default: trials / 3, 2-10).")] = None,
    config: Config = None,
    preset: Preset_ = None,
    epochs: int | None = None,
    set_: Sets = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest study of each target.")] = False,
    verbose: Annotated[bool, typer.Option(help="Ray Tune's own per-trial output.")] = False,
    run_dir: RunDir = DEFAULT_RUN_DIR,
    storage: StorageOpt = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the preset or "
                                                   "config name).")] = None,
    source: Source = "auto",
) -> None:
    """Tune one study per target (Optuna TPE + ASHA on Ray Tune by default); every trial is an MLflow child run."""
    from raypipe.tune.spaces import read_space

    chosen, data, _, _ = _resolve_inputs(preset, config, data, None)
    if data is None:
        raise InputError("command line", "--data is required (or --preset)")
    base, plan_defaults = chosen.train, chosen.tune
    targets = ["all"] if all_targets else (target or plan_defaults.targets)
    overrides = _overrides(set_) | ({"epochs": epochs} if epochs is not None else {})
    # Cheap checks first: a bad space or --set fails in a second, before Ray, MLflow and torch load.
    compose("-", "-", base, overrides=overrides, origin="--set")
    if space or plan_defaults.space:
        read_space(space or plan_defaults.space)
    given = {"searcher": searcher, "scheduler": scheduler, "epoch_budget": epoch_budget, "grace_period": grace_period,
             "reduction_factor": reduction_factor, "startup_trials": startup_trials,
             "workers_per_trial": workers_per_trial, "gpus_per_trial": gpus_per_trial,
             "cpus_per_worker": cpus_per_worker}
    for name, value in given.items():
        if value is not None and (why := check_value(name, value)):
            raise InputError("command line", why, field=f"--{name.replace('_', '-')}")

    from raypipe.tune import study as studies_mod
    from raypipe.tune.progress import ProgressBoard

    options = studies_mod.TuneOptions.from_plan(
        plan_defaults, chosen.resources, trials=trials, workers_per_trial=workers_per_trial, gpus_per_trial=gpus_per_trial,
        cpus_per_worker=cpus_per_worker, max_concurrent=max_concurrent, seed=seed, resume=resume, verbose=verbose,
        storage=storage, searcher=searcher, scheduler=scheduler, epoch_budget=epoch_budget,
        grace_period=grace_period, reduction_factor=reduction_factor, startup_trials=startup_trials)
    experiment = experiment or default_experiment(preset, config)
    space = space or plan_defaults.space
    with progress_bar("decoding images into the cache") as progress:
        planned = studies_mod.plan(data, list(targets), space, base, overrides, run_dir, experiment, options,
                                   source, progress, per_target=plan_defaults.per_target)
    console.print(f"{'resuming' if resume else 'tuning'} {len(planned)} target(s), {options.trials} trials each: "
                  + ", ".join(s.target.name for s in planned))
    with ProgressBoard(console) as board:
        outcomes = studies_mod.run(planned, options, run_dir, on_tick=board.update)
    table = Table(title=f"best trial per target (experiment '{experiment}')", title_justify="left")
    for column in ("target", "metric", "base config", "best", "trial", "finished", "pruned", "failed", "minutes"):
        table.add_column(column, justify="left" if column in ("target", "metric") else "right")
    for o in outcomes:
        table.add_row(o.target, o.monitor, "-" if math.isnan(o.base_value) else f"{o.base_value:.3f}",
                      f"{o.best_value:.3f}" if o.best_trial else "-",
                      f"#{o.best_trial}" if o.best_trial else "-", str(o.finished), str(o.pruned), str(o.failed),
                      f"{o.seconds / 60:.1f}")
    console.print(table)
    for o in outcomes:
        params = ", ".join(f"{k}={_short(v)}" for k, v in o.best_params.items())
        console.print(f"{o.target} best: {params or '-'}", soft_wrap=True)
    _runs_view(run_dir, experiment)
    console.print(f"Optuna studies: optuna-dashboard {planned[0].optuna_storage}")
    failed = [o.target for o in outcomes if o.best_trial is None]
    if failed:
        err_console.print(f"error: no trial of {', '.join(failed)} finished; the trial errors are above and in "
                          "the FAILED child runs (tag raypipe.error)", markup=False)
        raise typer.Exit(1)


@app.command("promote")
def promote_cmd(
    target: Annotated[list[str], typer.Option(help="Target(s) whose latest study to promote.")],
    data: Data = None,
    preset: Preset_ = None,
    config: Config = None,
    margin: Annotated[float | None, typer.Option(help="Out-of-fold metric gain (lower bound of its paired CI) "
                                                 "needed to replace the champion (default: promote.margin, 0).")] = None,
    rollback: Annotated[bool, typer.Option(help="Move `champion` back to the version it replaced.")] = False,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples (by patient) for the CIs (default: "
                                                  "promote.bootstrap, 1000).")] = None,
    folds: Annotated[int | None, typer.Option(help="Patient-grouped folds of train+val whose out-of-fold scores "
                                              "decide the champion and set the threshold (default: promote.folds, "
                                              "3).")] = None,
    run_dir: RunDir = DEFAULT_RUN_DIR,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment of the studies (default: the "
                                                   "preset or config name, else raypipe).")] = None,
    source: Source = "auto",
    shortcut_tolerance: Annotated[float | None, typer.Option(
        help="Flag a model whose test AUROC moves by more than this when mask places are shuffled (default: "
             "promote.shortcut_tolerance, 0.02).")] = None,
) -> None:
    """Retrain a study's best trial on train+val, test it, register it; `champion` only if it wins.

    The retrain asks for the config's resources (a pipeline config), else what the study's trials had."""

    from raypipe.ship import aliases
    from raypipe.ship import promote as ship
    from raypipe.tracking.runs import store_client, tracking_uri

    experiment = experiment or default_experiment(preset, config)
    if rollback:
        client = store_client(tracking_uri(run_dir))
        for spec in target:
            name = ship.model_name(experiment, spec)
            console.print(f"{name}: champion is v{aliases.rollback(client, name, run_dir)} again")
        return
    chosen, data, _, whole = _resolve_inputs(preset, config, data, None)
    if data is None:
        raise InputError("command line", "--data is required (or --preset)")
    plan = chosen.promote
    _check_options(margin=margin, bootstrap=bootstrap, folds=folds)
    for spec in target:
        resources = resources_for(chosen.resources, chosen.tune.per_target, spec) if whole else None
        p = ship.promote(data, spec, run_dir, experiment, plan.margin if margin is None else margin, source,
                         plan.bootstrap if bootstrap is None else bootstrap, plan.folds if folds is None else folds,
                         plan.shortcut_tolerance if shortcut_tolerance is None else shortcut_tolerance, resources)
        console.print(ship.summary(p), soft_wrap=True)
    _runs_view(run_dir, experiment)


@app.command("predict")
def predict_cmd(
    images: Annotated[list[Path] | None, typer.Argument(help="Image files (PNG, JPEG, DICOM).")] = None,
    csv: Annotated[Path | None, typer.Option(help="Batch mode: a CSV with column 'image' (and optional "
                                             "'age', 'projection', 'text_boxes').")] = None,
    labels: Annotated[Path | None, typer.Option(help="YOLO labels folder (<image stem>.txt): its text boxes "
                                                "are masked as in training.")] = None,
    age: Annotated[float | None, typer.Option(help="Age in years (else the age champion decides).")] = None,
    projection: Annotated[str | None, typer.Option(help="AP | Lat (else DICOM header or file name).")] = None,
    out: Annotated[Path, typer.Option(help="Where the Grad-CAM overlays and predictions.jsonl go.")] = Path("predictions"),
    run_dir: RunDir = DEFAULT_RUN_DIR,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment whose champions serve (default: "
                                                   "the preset or config name, else raypipe).")] = None,
    preset: Preset_ = None,
    config: Annotated[Path | None, typer.Option(help="The pipeline or train config the champions were tuned "
                                                "with: its name is the experiment's.")] = None,
) -> None:
    """Route each image to its champion: fracture probability, decision, Grad-CAM overlay; JSON lines out.

    Text boxes (masked when the champion was trained with masking) come from the CSV's text_boxes
    column, else --labels, else the GRAZPEDWRI-DX layout around the image."""
    import json

    from raypipe import fsio
    from raypipe.ship.predict import Job, csv_jobs, predict_images
    from raypipe.tracking.runs import store_client, tracking_uri

    experiment = experiment or default_experiment(preset, config)
    if labels is not None and not labels.is_dir():
        raise InputError(labels, "no such labels folder", field="--labels")
    jobs = [Job(Path(p), age, projection) for p in images or []] + (csv_jobs(csv, age, projection) if csv else [])
    if not jobs:
        raise InputError("command line", "give image files or --csv")
    rows = predict_images(store_client(tracking_uri(run_dir)), experiment, jobs, out, labels,
                          warn=lambda line: err_console.print(line, markup=False, soft_wrap=True))
    for row in rows:
        console.print(json.dumps(row), markup=False, soft_wrap=True)
    fsio.write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


@pipeline_app.command("run")
def pipeline_run(
    preset: Annotated[str | None, typer.Option(help="Packaged preset ('demo') ...")] = None,
    config: Annotated[Path | None, typer.Option(help="... or a pipeline YAML (the preset format).")] = None,
    data: Data = None,
    run_dir: RunDir = DEFAULT_RUN_DIR,
    storage: StorageOpt = None,
    source: Source = "auto",
) -> None:
    """Check, split, cache, tune every target, promote the winners, write the report; unchanged stages skip."""
    if (preset is None) == (config is None):
        raise InputError("command line", "give exactly one of --preset or --config")
    name = preset or str(config)
    chosen = load_preset(name)  # strict: a bad config fails here, before MLflow and Ray even load

    from raypipe.pipeline import run_pipeline
    from raypipe.tune.progress import ProgressBoard

    data = data or Path(chosen.data)
    if not data.exists():
        data_synth(data, **chosen.synth)
    experiment = default_experiment(preset, config)
    with ProgressBoard(console) as board:
        run_pipeline(chosen, experiment, data, run_dir, source, say=lambda line: console.print(line, markup=False),
                     on_tick=board.update, storage=storage)
    _runs_view(run_dir, experiment)


@app.command("report")
def report_cmd(
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: the preset or config "
                                                   "name, else raypipe).")] = None,
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    run_dir: RunDir = DEFAULT_RUN_DIR,
    preset: Preset_ = None,
    config: Config = None,
) -> None:
    """One self-contained HTML page: test metrics with CIs, curves, calibration, tuning summary."""

    from raypipe import report
    from raypipe.tracking.runs import store_client, tracking_uri

    experiment = experiment or default_experiment(preset, config)
    console.print(f"wrote {report.build(store_client(tracking_uri(run_dir)), experiment, out)}")


def _runs_view(run_dir: Path, experiment: str) -> None:
    """Print how to open the MLflow UI and the direct address of the experiment's runs: MLflow 3's UI opens
    an experiment on its GenAI overview otherwise (choose "Model training" there)."""

    from raypipe.tracking.runs import store_client, tracking_uri, ui_hint

    uri = tracking_uri(run_dir)
    console.print(ui_hint(uri), soft_wrap=True)
    exp = store_client(uri).get_experiment_by_name(experiment)
    if exp is not None:
        base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        console.print(f"runs of '{experiment}': {base}/#/experiments/{exp.experiment_id}/runs", soft_wrap=True)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _overrides(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError("--set", f"expected key=value, got {item!r}", field=item)
        out[key.strip()] = parse_yaml(value, "--set")  # the config files' YAML: `masking=off` stays text
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes are one line on stderr and exit code 2, never a traceback."""
    try:
        # standalone_mode=False makes click *return* the code of a `typer.Exit(n)` instead of raising it
        code = app(args=argv, standalone_mode=False)
    except InputError as exc:
        err_console.print(f"error: {exc}", soft_wrap=True, markup=False)
        sys.exit(EXIT_INPUT)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None and hasattr(exc, "show"):
            exc.show()
            sys.exit(code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
