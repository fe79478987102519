"""Trial overhead: the same small trials bare, through `raypipe tune` with W=1 and with W=2. One JSON object.

    python benchmarks/trial_overhead.py [--quick] [--run-dir DIR] [--keep] [--trials 12] [--epochs 3] [--w2-trials N]

The same ``--trials`` fixed trials (backbone ``test_convnext``, ``--image-size`` 64 px, ``--epochs`` 3, one
target of a small synthetic data set) run as:

  bare         a sequential PyTorch loop in one process: raypipe's dataset, model, loss and epoch functions,
               no checkpoints, no Ray, no MLflow (1 torch thread, as a 1-CPU trial gets)
  loop         raypipe's training loop in-process (``loop.run`` + ``LocalSession``): adds a checkpoint per epoch
  tune_w1      ``raypipe tune --workers-per-trial 1 --max-concurrent 1``: one trial at a time, like the bare loop
  tune_w1_c2   the same with the default concurrency (2 trials at once on 2 CPUs): what a user gets
  tune_w2      ``raypipe tune --workers-per-trial 2``: each trial drives a Ray Train TorchTrainer (DDP, 2 workers);
               ``--w2-trials N`` runs N of them and projects the wall time of ``--trials`` from fixed + per-trial cost

The trials are identical (a search space whose only parameter is a one-choice categorical), so ASHA
has nothing to prune and every mode trains the same trial-epochs (checked: ``trial_epochs``). Each mode runs
in a fresh Python process; ``wall_s`` is timed inside it after the imports of torch and timm (for tune: the
``raypipe tune`` command itself, which imports Ray and MLflow, plans, starts Ray, runs the study and
summarises it), ``process_wall_s`` is the whole process, seen from outside.

Where the tune overhead goes is timed in the driver (wrappers around raypipe's own functions: Ray start,
planning, the MLflow child-run callback, the Optuna searcher, the study summary) and read back from Tune's
results and MLflow's child runs (trial lifetime, in-trial set-up and checkpoint/report time, epochs).
Target (issue 7): tune_w1 wall <= 1.15 x bare wall.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clean_env, emit, machine, reserve_stdout, run_dir, say, synth  # noqa: E402

TARGET_PCT = 15.0
MODES = ("bare", "loop", "tune_w1", "tune_w1_c2", "tune_w2")
TARGET = "fracture/AP"


# ---------------------------------------------------------------------------------------- set-up
def write_inputs(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The train config and the all-fixed search space every mode uses."""
    import yaml

    config = root / "overhead-train.yaml"
    config.write_text(yaml.safe_dump({
        "backbone": "test_convnext", "image_size": args.image_size, "batch_size": 32, "augment": 0.2,
        "loss": "focal", "sampler": "none", "test_per_class": 2, "loader_workers": 0, "seed": 0}))
    space = root / "overhead-space.yaml"
    space.write_text(yaml.safe_dump({
        "fixed": {"epochs": args.epochs, "patience": args.epochs + 1},
        "params": {"lr": {"type": "categorical", "choices": [2.0e-3]}}}))  # one choice: identical trials
    return config, space


def resolved_config(config: Path, space: Path):
    """Base config + the space's fixed block + its one choice: the config every trial trains."""
    import dataclasses

    from raypipe.config import load_train_config
    from raypipe.tune.spaces import load_space

    base = load_train_config(config)
    sp = load_space(space, base)
    return dataclasses.replace(base, **sp.fixed, **{p.name: p.choices[0] for p in sp.params})


# ------------------------------------------------------------------------------------ child: bare
def child_bare(args: argparse.Namespace, use_loop: bool) -> dict[str, Any]:
    import numpy as np
    import timm  # noqa: F401  (torch and timm are imported before the clock starts in every mode)
    import torch

    # A bare loop needs none of Ray or MLflow: everything it uses is imported before the clock starts.
    import raypipe.data.dataset
    import raypipe.data.sampling
    import raypipe.models.backbones
    import raypipe.models.losses
    import raypipe.train.loop
    import raypipe.train.metrics
    import raypipe.train.session  # noqa: F401
    from raypipe.data.prepare import prepare
    from raypipe.data.targets import parse_target
    from raypipe.train.job import make_job  # imports MLflow (job.py), kept outside the clock

    torch.set_num_threads(1)
    started = time.perf_counter()
    cfg = resolved_config(Path(args.config), Path(args.space))
    prepared = prepare(Path(args.data), cfg, Path(args.root))
    job = make_job(prepared, parse_target(TARGET, prepared.scheme), cfg)
    trials = []
    for _ in range(args.trials):
        t0 = time.perf_counter()
        epochs = _loop_trial(job) if use_loop else _bare_trial(job, np, torch)
        trials.append({"wall_s": time.perf_counter() - t0, "epoch_s": epochs})
    wall = time.perf_counter() - started
    in_epoch = sum(sum(t["epoch_s"]) for t in trials)
    return {"wall_s": wall, "in_epoch_s": in_epoch, "trial_epochs": sum(len(t["epoch_s"]) for t in trials),
            "trials": len(trials), "per_trial_wall_s": [round(t["wall_s"], 3) for t in trials],
            "setup_s": wall - sum(t["wall_s"] for t in trials), "torch_threads": torch.get_num_threads()}


def _bare_trial(job, np, torch) -> list[float]:
    """loop.run's steps 1-3 and 5 without checkpoint, report or early stopping: the compute of a trial."""
    from torch.utils.data import DataLoader

    from raypipe.data.dataset import CachedImageDataset
    from raypipe.data.sampling import KeyedDraws, build_sampler
    from raypipe.models.backbones import build_model
    from raypipe.models.losses import build_loss
    from raypipe.train import loop
    from raypipe.train.metrics import evaluate

    cfg = job.cfg
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_ds = CachedImageDataset(job.cache, job.train_rows, job.train_labels, cfg.augment, train=True, seed=cfg.seed)
    val_ds = CachedImageDataset(job.cache, job.val_rows, job.val_labels, 0.0, train=False, seed=cfg.seed)
    sampler = KeyedDraws(build_sampler(cfg, job.train_labels, 0, 1))
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=len(train_ds) > cfg.batch_size)
    val_loader = DataLoader(val_ds, batch_size=2 * cfg.batch_size, shuffle=False)
    model = build_model(cfg, job.n_classes)
    criterion = build_loss(cfg, job.n_classes, np.bincount(job.train_labels, minlength=job.n_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    amp = torch.autocast("cpu", enabled=False)
    device = torch.device("cpu")
    seconds = []
    for epoch in range(1, cfg.epochs + 1):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loop._train_epoch(model, train_loader, criterion, optimizer, cfg.grad_clip, amp, device, 1)
        y, scores, _ = loop._predict(model, val_loader, criterion, job.n_classes, amp, device)
        evaluate(y, scores, job.n_classes)
        seconds.append(time.perf_counter() - t0)
        scheduler.step()
    return seconds


def _loop_trial(job) -> list[float]:
    from raypipe.train import loop
    from raypipe.train.session import LocalSession

    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="raypipe-bench-loop-") as tmp:
        loop.run(job, LocalSession(Path(tmp), job.monitor, on_report=lambda m, c: seconds.append(m["epoch_seconds"])))
    return seconds


# ------------------------------------------------------------------------------------ child: tune
class Timers:
    """Wall seconds, calls and first-start/last-end clock times of wrapped driver-side functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first_start: dict[str, float] = {}
        self.last_end: dict[str, float] = {}

    def wrap(self, owner: Any, attr: str, key: str) -> None:
        inner = getattr(owner, attr, None)
        if inner is None:  # the package moved on: that part is simply not attributed
            say(f"note: {getattr(owner, '__name__', owner)}.{attr} not found; not timed")
            return

        def timed(*a, **kw):
            t0 = time.perf_counter()
            self.first_start.setdefault(key, time.time())
            try:
                return inner(*a, **kw)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1
                self.last_end[key] = time.time()

        setattr(owner, attr, timed)


def child_tune(args: argparse.Namespace, workers: int, concurrent: int | None) -> dict[str, Any]:
    import timm  # noqa: F401
    import torch  # noqa: F401

    from raypipe import cli

    timers = Timers()
    started = time.perf_counter()

    # Driver-side hooks, installed lazily so that the import of Ray/MLflow stays inside the timed command.
    def install() -> None:
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        from raypipe import ray_cluster
        from raypipe.tracking.study_runs import StudyLogger
        from raypipe.tune import study as studies_mod

        timers.wrap(ray_cluster, "init_ray", "ray_start")  # tune.study imports it when a study runs
        timers.wrap(studies_mod, "plan", "plan")
        timers.wrap(studies_mod, "finalize", "study_summary")
        timers.wrap(studies_mod, "run", "run")
        timers.wrap(studies_mod, "parent_run", "mlflow_parent_run")
        # MlflowClient() on a fresh SQLite file creates the schema (~2 s), then the experiment is looked up
        timers.wrap(studies_mod, "store_client", "mlflow_store_open")
        timers.wrap(studies_mod, "experiment_id", "mlflow_store_open")
        timers.wrap(studies_mod, "_trainable", "register_trainable")  # tune.with_parameters: the job into Ray
        timers.wrap(studies_mod, "_tuner", "tuner_setup")  # Optuna journal storage, searcher, Tuner()
        timers.wrap(tune, "register_trainable", "register_trainable")
        timers.wrap(tune.Tuner, "fit", "tuner_fit")
        for hook in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            timers.wrap(StudyLogger, hook, "mlflow_trial_callbacks")
        trial_mod = sys.modules.get("raypipe.tune.trial")
        if trial_mod is not None and hasattr(trial_mod, "TagTrialNode"):  # node tags: MLflow calls per result
            timers.wrap(trial_mod.TagTrialNode, "on_trial_result", "mlflow_trial_callbacks")
        for method in ("suggest", "on_trial_complete", "on_trial_result"):
            timers.wrap(OptunaSearch, method, "optuna_searcher")

    t_import = time.perf_counter()
    install()
    import_s = time.perf_counter() - t_import
    argv = ["tune", "--data", args.data, "--config", args.config, "--space", args.space, "--target", TARGET,
            "--trials", str(args.trials), "--workers-per-trial", str(workers), "--run-dir", args.root,
            "--experiment", args.experiment, "--seed", "0"]
    if concurrent:
        argv += ["--max-concurrent", str(concurrent)]
    with contextlib.redirect_stdout(sys.stderr):  # the CLI's tables must not reach our one JSON line
        try:
            cli.main(argv)
        except SystemExit as exc:
            if exc.code:
                raise
    wall = time.perf_counter() - started
    out = {"wall_s": wall, "driver": {k: round(v, 3) for k, v in timers.seconds.items()},
           "driver_calls": dict(timers.calls), "import_ray_mlflow_s": round(import_s, 3)}
    out |= _trial_accounting(Path(args.root), args.experiment, timers)
    return out


def _trial_accounting(root: Path, experiment: str, timers: Timers) -> dict[str, Any]:
    """Per-trial times from Tune's result files and MLflow's child runs."""
    from mlflow.tracking import MlflowClient

    from raypipe.tracking.runs import tracking_uri

    results = []
    for path in sorted((root / "tune" / experiment).glob("*-round-*/*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            results.append(rows)
    client = MlflowClient(tracking_uri(root))
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`raypipe.kind` = 'trial'", max_results=1000)
    lifetimes = [(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time]
    spans = sorted((r.info.start_time / 1000, r.info.end_time / 1000) for r in runs if r.info.end_time)
    in_epoch = sum(row.get("epoch_seconds", 0.0) for rows in results for row in rows)
    in_function = sum(rows[-1].get("time_total_s", 0.0) for rows in results)
    statuses = defaultdict(int)
    for r in runs:
        statuses[r.info.status] += 1
    fit_start, fit_end = timers.first_start.get("tuner_fit", math.nan), timers.last_end.get("tuner_fit", math.nan)
    span = (spans[-1][1] - spans[0][0]) if spans else math.nan
    return {
        "trials": len(runs), "statuses": dict(statuses), "trial_epochs": sum(len(rows) for rows in results),
        "in_epoch_s": in_epoch,
        # trial function start -> last report, minus the epochs: model build, loaders, checkpoint save +
        # Tune's copy of it per epoch (W=2: also the TorchTrainer's worker group start and DDP set-up)
        "in_trial_setup_ckpt_s": in_function - in_epoch,
        # the driver's view of a trial (MLflow child run open -> closed) minus the trial function: actor
        # start or reuse, scheduling, result delivery
        "trial_start_stop_s": sum(lifetimes) - in_function,
        "sum_trial_lifetimes_s": sum(lifetimes),
        # Tuner.fit() called -> first trial running: Tune's experiment set-up and the first trial
        # process (a fresh Ray worker importing torch, timm and raypipe)
        "fit_to_first_trial_s": (spans[0][0] - fit_start) if spans else math.nan,
        "trials_span_s": span,
        # between the trials (one at a time): next trial scheduled, Optuna asked, actor reused or started
        "gaps_between_trials_s": span - sum(lifetimes),
        "last_trial_to_fit_end_s": (fit_end - spans[-1][1]) if spans else math.nan,
    }


# ------------------------------------------------------------------------------------------ parent
def run_child(mode: str, args: argparse.Namespace, root: Path, data: Path, config: Path, space: Path) -> dict:
    """One mode in a fresh process; a failed run is retried once in a fresh run dir (on a shared machine
    someone's `ray stop --force` ends every local Ray cluster) and the retry is reported."""
    trials = args.w2_trials if mode == "tune_w2" and args.w2_trials else args.trials
    env = clean_env(OMP_NUM_THREADS="1") if mode in ("bare", "loop") else clean_env()
    for attempt in range(2):
        mode_dir = root / (mode if attempt == 0 else f"{mode}-retry")
        # Share the prebuilt manifest/split/cache: each mode's run dir links the parent's data folders.
        mode_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("data", "cache"):
            if not (mode_dir / sub).exists():
                (mode_dir / sub).symlink_to(root / "shared" / sub, target_is_directory=True)
        argv = [sys.executable, __file__, "--_child", mode, "--_root", str(mode_dir), "--_data", str(data),
                "--_config", str(config), "--_space", str(space), "--trials", str(trials),
                "--epochs", str(args.epochs), "--image-size", str(args.image_size)]
        say(f"{mode}: {trials} trials x {args.epochs} epochs ...")
        started = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                              text=True, env=env)
        process_wall = time.perf_counter() - started
        if proc.returncode == 0:
            break
        tail = "\n".join(ln for ln in (proc.stderr or "").splitlines() if "state-dump" not in ln)[-2000:]
        if attempt == 1:
            raise SystemExit(f"{mode} failed twice (exit {proc.returncode}):\n{tail}")
        say(f"{mode} failed (exit {proc.returncode}), retrying once:\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = process_wall
    result["retried"] = attempt == 1
    say(f"{mode}: wall {result['wall_s']:.1f} s, in-epoch {result['in_epoch_s']:.1f} s, "
        f"{result['trial_epochs']} trial-epochs (process {process_wall:.1f} s)")
    return result


def summarise(results: dict[str, dict], trials: int) -> dict[str, Any]:
    """Per mode: wall, in-epoch time, overhead; for tune modes where it went, split into a fixed part
    (once per command) and a marginal part per trial, so ``overhead(n) ~= fixed + n * marginal``."""
    bare = results.get("bare")
    out = {}
    for mode, r in results.items():
        n = r["trials"]
        overhead = r["wall_s"] - r["in_epoch_s"]
        row = {"trials": n, "retried": r.get("retried", False), "wall_s": round(r["wall_s"], 2),
               "process_wall_s": round(r["process_wall_s"], 2),
               "in_epoch_s": round(r["in_epoch_s"], 2), "trial_epochs": r["trial_epochs"],
               "overhead_s": round(overhead, 2), "overhead_per_trial_s": round(overhead / n, 2)}
        if mode.startswith("tune"):
            row["where"] = _partition(r)
            row["driver_timers_s"] = r["driver"]  # raw: every wrapped function's total seconds
            row["statuses"] = r["statuses"]
            if mode != "tune_w1_c2":  # trials one at a time: the parts add up to the wall time
                fixed = sum(v for k, v in row["where"].items() if k in FIXED_PARTS)
                row["fixed_overhead_s"] = round(fixed, 2)
                row["marginal_overhead_per_trial_s"] = round((overhead - fixed) / n, 2)
                if n != trials:  # fewer trials than the others (--w2-trials): the same model at the full count
                    row[f"projected_wall_{trials}_trials_s"] = round(
                        fixed + trials * (r["in_epoch_s"] + overhead - fixed) / n, 1)
        if bare:
            wall = r["wall_s"] if n == trials else row.get(f"projected_wall_{trials}_trials_s")
            if wall is not None:
                row["extra_vs_bare_s"] = round(wall - bare["wall_s"], 2)
                row["extra_vs_bare_per_trial_s"] = round((wall - bare["wall_s"]) / trials, 2)
                row["wall_vs_bare_pct"] = round(100 * (wall / bare["wall_s"] - 1), 1)
        out[mode] = row
    return out


FIXED_PARTS = ("import_ray_mlflow_s", "plan_s", "ray_start_s", "mlflow_store_open_s (new SQLite store: schema)",
               "mlflow_parent_run_s",
               "register_trainable_s", "tuner_setup_s (Optuna journal, searcher, Tuner())", "fit_to_first_trial_s",
               "last_trial_to_fit_end_s", "study_summary_s", "other_s")


def _partition(r: dict[str, Any]) -> dict[str, float]:
    """The command's wall split into parts that add up to it (trial parts summed over trials).

    For one trial at a time (``tune_w1``, ``tune_w2``) the parts add up to ``wall_s``; with trials side by side
    (``tune_w1_c2``) the per-trial sums overlap and exceed the span they ran in.
    """
    d = r["driver"]
    parts = {
        "import_ray_mlflow_s": r["import_ray_mlflow_s"],  # the command imports Ray, Ray Tune and MLflow
        "plan_s": d.get("plan", 0.0),  # data check, split and cache hits, space, config
        "ray_start_s": d.get("ray_start", 0.0),
        "mlflow_store_open_s (new SQLite store: schema)": d.get("mlflow_store_open", 0.0),
        "mlflow_parent_run_s": d.get("mlflow_parent_run", 0.0),  # includes the git sha tag (a git subprocess)
        "register_trainable_s": d.get("register_trainable", 0.0),
        "tuner_setup_s (Optuna journal, searcher, Tuner())": d.get("tuner_setup", 0.0),
        "fit_to_first_trial_s": r["fit_to_first_trial_s"],
        "in_epoch_s": r["in_epoch_s"],
        "in_trial_setup_ckpt_s": r["in_trial_setup_ckpt_s"],
        "trial_start_stop_s": r["trial_start_stop_s"],
        "gaps_between_trials_s": r["gaps_between_trials_s"],
        "last_trial_to_fit_end_s": r["last_trial_to_fit_end_s"],
        "study_summary_s": d.get("study_summary", 0.0),  # MLflow parent run summary + Optuna plots
    }
    parts["other_s"] = r["wall_s"] - sum(parts.values())  # CLI, registering trainables, final tables
    parts = {k: round(v, 2) for k, v in parts.items()}
    # inside the parts above, timed in the driver:
    parts["of_which_mlflow_trial_callbacks_s"] = round(d.get("mlflow_trial_callbacks", 0.0), 2)
    parts["of_which_optuna_searcher_s"] = round(d.get("optuna_searcher", 0.0), 2)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 trials x 2 epochs, W=2 on 2 trials")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--w2-trials", type=int, default=None, help="trials of tune_w2 (default: --trials); each "
                    "starts a Ray Train worker group, ~20-40 s here: `make bench` runs 4 and projects 12")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    ap.add_argument("--verbose", action="store_true", help="show the modes' own stderr")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_space", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        args.root, args.data, args.config, args.space = args._root, args._data, args._config, args._space
        args.experiment = f"overhead-{args._child}"
        runners = {"bare": lambda: child_bare(args, use_loop=False), "loop": lambda: child_bare(args, use_loop=True),
                   "tune_w1": lambda: child_tune(args, 1, 1), "tune_w1_c2": lambda: child_tune(args, 1, None),
                   "tune_w2": lambda: child_tune(args, 2, None)}
        reserve_stdout()
        emit(runners[args._child]())
        return
    if args.quick:
        args.trials, args.epochs, args.patients = min(args.trials, 4), min(args.epochs, 2), min(args.patients, 120)
        args.w2_trials = min(args.w2_trials or 2, 2)
    reserve_stdout()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown mode(s) {sorted(unknown)}")
    info = machine()
    started = time.perf_counter()
    with run_dir(args.run_dir, args.keep, "overhead") as root:
        data = root / "data"
        synth(data, args.patients, seed=3)
        config, space = write_inputs(root, args)
        from raypipe.data.prepare import prepare
        from raypipe.data.targets import parse_target
        from raypipe.train.job import make_job

        cfg = resolved_config(config, space)
        prepared = prepare(data, cfg, root / "shared")  # manifest, split and cache built once, shared by all modes
        job = make_job(prepared, parse_target(TARGET, prepared.scheme), cfg)
        results = {mode: run_child(mode, args, root, data, config, space) for mode in modes}
    summary = summarise(results, args.trials)
    w1 = summary.get("tune_w1", {})
    w2 = summary.get("tune_w2", {})
    emit({
        # Stable keys a script can read (issue 17): once per command, per trial, a W=2 trial's extra start-up
        # over a W=1 trial, and W=1 wall over the bare loop's for the same trials (None: mode not run)
        "fixed_s": w1.get("fixed_overhead_s"), "per_trial_s": w1.get("marginal_overhead_per_trial_s"),
        "w2_start_s": (round(w2["marginal_overhead_per_trial_s"] - w1["marginal_overhead_per_trial_s"], 2)
                       if "marginal_overhead_per_trial_s" in w2 and "marginal_overhead_per_trial_s" in w1 else None),
        "tune_over_bare": (round(1 + w1["wall_vs_bare_pct"] / 100, 3) if w1.get("wall_vs_bare_pct") is not None
                           else None),
        "benchmark": "trial_overhead", **info, "quick": args.quick, "trials": args.trials,
        "w2_trials": args.w2_trials or args.trials, "epochs": args.epochs,
        "backbone": cfg.backbone, "image_size": cfg.image_size, "target": TARGET,
        "train_images": len(job.train_rows), "val_images": len(job.val_rows), "modes": summary,
        "goal": {"criterion": f"tune_w1 wall <= bare wall + {TARGET_PCT:g} %",
                 "tune_w1_vs_bare_pct": w1.get("wall_vs_bare_pct"),
                 "met": w1.get("wall_vs_bare_pct") is not None and w1["wall_vs_bare_pct"] <= TARGET_PCT},
        "wall_seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
