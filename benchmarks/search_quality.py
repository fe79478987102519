"""Search quality at equal trial-epochs: the base config alone vs random search vs TPE + ASHA. One JSON object.

    python benchmarks/search_quality.py [--quick] [--seeds 5] [--run-dir DIR] [--keep]

On a learnable synthetic set that is not the demo's (``--patients`` 300, the same generator, data seed 1
instead of the demo's 0) and for two fracture targets (projection x the 10-14 y age group, ~160 training
images each), each strategy gets the same budget of ``--budget`` trial-epochs per target and seed (default
30: three full trials of ``--epochs`` 10; what 2 CPU cores allow for 5 seeds in about an hour):

  base       the base config alone: raypipe's TrainConfig defaults for this model (``--backbone`` at
             ``--image-size``, lr 1e-3, focal loss, no sampler, augment 0.5, patience ``--patience``), given the
             whole budget as one longer run (``epochs`` = budget, early stopping on): "an untuned longer run"
  random     the shipped space (``search_spaces/fracture.yaml``), Optuna's RandomSampler, FIFO (no early
             stopping by the scheduler), trials of ``--epochs`` until the budget is spent; trial 0 is the base
             config at ``--epochs``
  tpe_asha   raypipe's default: the same space, Optuna TPE + ASHA with raypipe's default budgets
             (tune/search.py), trials of up to ``--epochs`` until the budget is spent; trial 0 is the base config

Every study runs through raypipe's own tuning code (``tune.study.plan/run``: Ray Tune, Optuna, MLflow). The
figure per seed, target and strategy is the study's best trial as a search selects it: its best epoch's
validation AUROC, and the same checkpoint (the weights of that epoch, trained on train only; no retrain)
scored once on the fixed test set, with a patient-level bootstrap 95% CI. The JSON also holds the best
trial's validation curve (one value per epoch). A seed changes the split (``split_seed``), the
initialisation and sampling (``seed``) and the searcher's seed; the data set stays the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FOREIGN_ENV, clean_env, emit, machine, reserve_stdout, run_dir, say, synth  # noqa: E402

STRATEGIES = ("base", "random", "tpe_asha")


def base_config(args: argparse.Namespace, seed: int):
    from raypipe.config import TrainConfig

    return TrainConfig(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, patience=args.patience,
                       test_per_class=args.test_per_class, seed=seed, split_seed=seed)


def space_file(strategy: str, root: Path, args: argparse.Namespace) -> Path:
    """The shipped fracture space; for ``base`` a one-point space whose only trial is the base config."""
    import yaml

    from raypipe.config import TrainConfig
    from raypipe.tune.spaces import resolve

    if strategy != "base":
        return resolve("fracture")
    path = root / "space-base.yaml"
    path.write_text(yaml.safe_dump({"fixed": {"epochs": args.budget},
                                    "params": {"lr": {"type": "categorical", "choices": [TrainConfig.lr]}}}))
    return path


def tune_strategy(strategy: str, seed: int, args: argparse.Namespace, experiment: str) -> dict[str, Any]:
    """Child process: one strategy's studies of every target, side by side (raypipe's ``plan`` + ``run``),
    then each study's selected checkpoint scored on the test set."""
    from mlflow.tracking import MlflowClient

    from raypipe.tracking.runs import tracking_uri
    from raypipe.tracking.study_runs import children
    from raypipe.tune import study as studies_mod

    root, data = Path(args._root), Path(args._root) / "data"
    if strategy == "base":
        trials = 1
    elif strategy == "random":
        trials = math.ceil(args.budget / args.epochs)
    else:  # enough trials for ASHA to spend the budget (stopped trials leave epochs for more)
        trials = math.ceil(3 * args.budget / args.epochs)
    options = studies_mod.TuneOptions(trials=trials, seed=seed, searcher="random" if strategy == "random" else "tpe",
                                      scheduler="fifo" if strategy != "tpe_asha" else "asha",
                                      epoch_budget=args.budget if strategy != "base" else None)
    planned = studies_mod.plan(data, args.targets, space_file(strategy, root, args), base_config(args, seed), {},
                               root, experiment, options)
    outcomes = studies_mod.run(planned, options, root)
    client = MlflowClient(tracking_uri(root))
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    rows = []
    for study, outcome in zip(planned, outcomes, strict=True):
        kids = children(client, exp_id, outcome.parent_run_id)
        epochs = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in kids)
        curve = [round(m.value, 4) for m in sorted(client.get_metric_history(outcome.best_run_id, outcome.monitor),
                                                    key=lambda m: m.step)] if outcome.best_run_id else []
        rows.append({"seed": seed, "strategy": strategy, "target": outcome.target, "trials": len(kids),
                     "finished": outcome.finished, "pruned": outcome.pruned, "failed": outcome.failed,
                     "trial_epochs": epochs, "best_val_auroc": _r(outcome.best_value),
                     "base_val_auroc": _r(outcome.base_value), "best_val_curve": curve,
                     "best_params": {k: float(f"{v:.4g}") if isinstance(v, float) else v
                                     for k, v in outcome.best_params.items()},
                     **score_on_test(study, data, root, args)})
    return {"rows": rows}


def score_on_test(study, data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The study's best checkpoint (Tune keeps each trial's best epoch) scored on the fixed test set."""
    from raypipe.data.prepare import prepare
    from raypipe.evaluate.clinical import bootstrap_ci, point_metrics
    from raypipe.ship.promote import _load, _predict
    from raypipe.train import checkpoint

    found = []
    for state in Path(study.path).glob("*/checkpoint_*/" + checkpoint.STATE_FILE):
        saved = checkpoint.read_state(state.parent)
        found.append((saved.get("best", float("-inf")), str(state.parent)))
    if not found:
        return {"test_auroc": None, "test_auroc_ci95": None}
    _, best_dir = max(found)
    prepared = prepare(data, study.cfg, root)  # the study's own split and cache (both reused from disk)
    rows, y = prepared.select(study.target, "test")
    patients = prepared.frame(study.target, "test")["patient_id"].to_numpy()  # grouping only, never logged
    scores = _predict(_load(Path(best_dir)), prepared.cache, rows, 2)
    ci = bootstrap_ci(y, scores, patients, 2, n_boot=args.bootstrap, names=("auroc",))["auroc"]
    return {"test_auroc": _r(point_metrics(y, scores, 2)["auroc"]), "test_auroc_ci95": [_r(v) for v in ci],
            "test_images": int(len(y)), "test_patients": int(len(set(patients)))}


def _child(name: str, root: Path, args: argparse.Namespace, experiment: str, seed: int) -> subprocess.Popen:
    argv = [sys.executable, __file__, "--_tune", name, "--_root", str(root), "--_experiment", experiment,
            "--_seed", str(seed), "--budget", str(args.budget), "--epochs", str(args.epochs),
            "--patience", str(args.patience), "--targets", ",".join(args.targets), "--backbone", args.backbone,
            "--image-size", str(args.image_size), "--test-per-class", str(args.test_per_class),
            "--bootstrap", str(args.bootstrap)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                            text=True, env=clean_env())


def _collect(proc: subprocess.Popen) -> tuple[dict[str, Any] | None, str]:
    out, err = proc.communicate()
    if proc.returncode == 0 and out.strip():
        return json.loads(out.strip().splitlines()[-1]), ""
    lines = [ln for ln in (err or "").splitlines() if ln.strip() and "state-dump" not in ln]
    return None, f"exit {proc.returncode}: " + " | ".join(lines[-3:])[-400:]


def run_strategy(strategy: str, seed: int, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Tune and score in one child process, retried once under a new experiment name (on a shared machine
    someone's `ray stop --force` kills every Ray cluster)."""
    error = ""
    for attempt in range(2):
        experiment = f"sq-s{seed}-{strategy}" + (f"-retry{attempt}" if attempt else "")
        started = time.perf_counter()
        result, error = _collect(_child(strategy, root, args, experiment, seed))
        if result is not None:
            for row in result["rows"]:
                row["wall_s"] = round(time.perf_counter() - started, 1)  # the targets' studies ran side by side
                say(f"seed {seed} {strategy:8s} {row['target']:15s} trials {row['trials']:2d} epochs "
                    f"{row['trial_epochs']:3d} best val AUROC {row['best_val_auroc']} test AUROC {row['test_auroc']} "
                    f"{row['test_auroc_ci95']} ({row['wall_s']} s)")
            return result["rows"]
        say(f"seed {seed} {strategy}: failed ({error}); {'retrying' if attempt == 0 else 'giving up'}")
    return [{"seed": seed, "strategy": strategy, "target": t, "test_auroc": None, "best_val_auroc": None,
             "trials": 0, "trial_epochs": 0, "error": error} for t in args.targets]


def _r(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), 4)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 4) if values else None

    out: dict[str, Any] = {}
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        if mine:
            out[strategy] = {f"{k}_mean": mean([r.get(k) for r in mine])
                             for k in ("best_val_auroc", "test_auroc", "trial_epochs", "trials")}
    # paired: the same seed (split) and target
    key = {(r["seed"], r["target"], r["strategy"]): r for r in rows}
    pairs = sorted({(r["seed"], r["target"]) for r in rows})
    for a, b in (("tpe_asha", "base"), ("tpe_asha", "random"), ("random", "base")):
        for metric in ("best_val_auroc", "test_auroc"):
            diffs = [key[(s, t, a)][metric] - key[(s, t, b)][metric] for s, t in pairs
                     if key.get((s, t, a), {}).get(metric) is not None and key.get((s, t, b), {}).get(metric) is not None]
            if diffs:
                out[f"{a}_minus_{b}_{metric}"] = {"mean": round(statistics.fmean(diffs), 4),
                                                  "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                                                  "of": len(diffs)}
    over_base, over_random = (out.get(f"tpe_asha_minus_{b}_best_val_auroc", {}).get("mean") for b in ("base", "random"))
    out["goal"] = {"tpe_asha_ge_base_plus_0.05_val": over_base is not None and over_base >= 0.05,
                   "tpe_asha_ge_random_val": over_random is not None and over_random >= 0.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, budget 4, 1 seed: a smoke run")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (each: its own split and searcher seed)")
    ap.add_argument("--budget", type=int, default=30, help="trial-epochs per target, strategy and seed")
    ap.add_argument("--epochs", type=int, default=10, help="max epochs of a searched trial (ASHA's max_t)")
    ap.add_argument("--patience", type=int, default=6, help="early stopping of every run")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--targets", default="fracture/AP/2,fracture/Lat/2")
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--test-per-class", type=int, default=10, help="fixed test set: per class and 1-year age bin")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--verbose", action="store_true", help="show the child processes' stderr")
    for hidden in ("_tune", "_root", "_experiment"):
        ap.add_argument(f"--{hidden}", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    reserve_stdout()
    for key in FOREIGN_ENV:  # a private local Ray, the run dir's own MLflow store and storage
        os.environ.pop(key, None)
    if args._tune:
        args.targets = [t for t in args.targets.split(",") if t]
        emit(tune_strategy(args._tune, args._seed, args, args._experiment))
        return
    if args.quick:
        args.seeds, args.budget, args.epochs, args.patience = 1, min(args.budget, 4), min(args.epochs, 2), 2
        args.patients, args.bootstrap, args.test_per_class = min(args.patients, 200), min(args.bootstrap, 200), 2
    args.targets = [t for t in args.targets.split(",") if t]
    strategies = [s for s in args.strategies.split(",") if s]
    if unknown := set(strategies) - set(STRATEGIES):
        ap.error(f"unknown strategies {sorted(unknown)}")
    info = machine()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with run_dir(args.run_dir, args.keep, "search") as root:
        data = root / "data"
        summary = synth(data, args.patients, seed=1)
        for seed in range(args.seeds):
            for strategy in strategies:
                rows += run_strategy(strategy, seed, args, root)
        sizes = _split_sizes(data, root, args)
    emit({
        "benchmark": "search_quality", **info, "quick": args.quick, "seeds": args.seeds, "budget_trial_epochs": args.budget,
        "epochs_per_trial": args.epochs, "patience": args.patience, "backbone": args.backbone,
        "image_size": args.image_size, "patients": args.patients, "data_seed": 1, "images": summary.get("images"),
        "targets": args.targets, "split_sizes_seed0": sizes, "bootstrap": args.bootstrap,
        "summary": summarise(rows), "runs": rows, "wall_seconds": round(time.perf_counter() - started, 1),
    })


def _split_sizes(data: Path, root: Path, args: argparse.Namespace) -> dict[str, dict[str, int]]:
    from raypipe.data.prepare import prepare
    from raypipe.data.targets import parse_target

    prepared = prepare(data, base_config(args, 0), root)
    out = {}
    for spec in args.targets:
        target = parse_target(spec, prepared.scheme)
        out[spec] = {split: int(len(prepared.select(target, split)[0])) for split in ("train", "val", "test")}
    return out


if __name__ == "__main__":
    main()
