"""Search quality at equal budget: the seed's fixed config vs random search vs TPE + ASHA. One JSON object.

    python benchmarks/search_quality.py [--quick] [--seeds 3] [--run-dir DIR] [--keep]

On a synthetic data set larger than the demo (``--patients`` 800, the same generator, seed 1 instead of the
demo's 0) and for two fracture targets, each strategy gets the same budget of ``--budget`` trial-epochs per
target and seed:

  seed_fixed   the seed scripts' config: AdamW lr 1e-5, focal loss alpha 0.25 gamma 2, weighted sampler
               (fully balanced), early stopping patience 15; one run of up to ``--budget`` epochs
  random       the shipped space (``search_spaces/fracture.yaml``), Optuna's RandomSampler, no early stopping
               by the scheduler (FIFO), trials of ``--epochs`` epochs until the budget is spent
  tpe_asha     raypipe's default: the same space, Optuna TPE + ASHA, trials of up to ``--epochs`` epochs until
               the budget is spent (ASHA's stopped trials leave budget for more trials; at most 3 x budget /
               epochs trials, of which raypipe's rule makes the first half random start-up trials)

Every study runs through raypipe's own tuning code (``tune.study.plan/run``: Ray Tune, Optuna, MLflow),
and its best trial is promoted with ``ship.promote.promote`` (cross-fitted for out-of-fold evidence, retrained
on train+val replaying the trial up to its peak, tested once on the fixed test set, patient-level bootstrap
95% CI). Reported per seed, target and
strategy: trial-epochs spent, trials, best validation AUROC, and the promoted model's test AUROC with its
CI. A seed changes the split (``split_seed``), the initialisation and sampler (``seed``) and the searcher's seed.

The strategies are raypipe's own tune options (``TuneOptions`` / ``raypipe tune --searcher --scheduler
--epoch-budget``): random = ``searcher=random, scheduler=fifo``, TPE + ASHA = the defaults, both with
``epoch_budget`` = ``--budget``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

STRATEGIES = ("seed_fixed", "random", "tpe_asha")
SEED_CONFIG = {"lr": 1.0e-5, "loss": "focal", "focal_alpha": 0.25, "focal_gamma": 2.0, "sampler": "weighted",
               "sampler_power": 1.0, "patience": 15}


# ------------------------------------------------------------------------------------------ study
def space_files(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    import yaml

    from raypipe.tune.spaces import resolve

    seed_space = root / "space-seed-fixed.yaml"
    fixed = {k: v for k, v in SEED_CONFIG.items() if k != "lr"} | {"epochs": args.budget}
    seed_space.write_text(yaml.safe_dump({"fixed": fixed, "params": {"lr": {"type": "categorical",
                                                                             "choices": [SEED_CONFIG["lr"]]}}}))
    shipped = resolve("fracture")
    return {"seed_fixed": seed_space, "random": shipped, "tpe_asha": shipped}


def tune_strategy(strategy: str, seed: int, args: argparse.Namespace, experiment: str) -> dict[str, Any]:
    """Child process: one strategy's studies of every target, side by side (raypipe's ``plan`` + ``run``)."""
    from mlflow.tracking import MlflowClient

    from raypipe.config import TrainConfig
    from raypipe.tracking.runs import tracking_uri
    from raypipe.tracking.study_runs import children
    from raypipe.tune import study as studies_mod

    root, data = Path(args._root), Path(args._root) / "data"
    base = TrainConfig(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, batch_size=32,
                       augment=0.2, test_per_class=args.test_per_class, seed=seed, split_seed=seed)
    if strategy == "seed_fixed":
        trials = 1
    elif strategy == "random":
        trials = args.budget  # an upper bound (a trial runs >= 1 epoch): the budget stopper ends the study
    else:
        # enough trials for ASHA to spend the budget (pruned trials stop at the grace period); TPE's start-up
        # follows from the trial count (tune/search.py: a third, 2-10, the base config first)
        trials = math.ceil(3 * args.budget / args.epochs)
    searched = strategy != "seed_fixed"  # the seed config is one run of `budget` epochs: nothing to cap
    options = studies_mod.TuneOptions(trials=trials, seed=seed, searcher="random" if strategy == "random" else "tpe",
                                      scheduler="fifo" if strategy == "random" else "asha",
                                      epoch_budget=args.budget if searched else None)
    planned = studies_mod.plan(data, args.targets, space_files(root, args)[strategy], base, {}, root,
                               experiment, options)
    outcomes = studies_mod.run(planned, options, root)
    client = MlflowClient(tracking_uri(root))
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    rows = []
    for outcome in outcomes:
        kids = children(client, exp_id, outcome.parent_run_id)
        epochs = sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in kids)
        rows.append({"seed": seed, "strategy": strategy, "target": outcome.target, "experiment": experiment,
                     "trials": len(kids), "finished": outcome.finished, "pruned": outcome.pruned,
                     "failed": outcome.failed, "trial_epochs": epochs, "best_val_auroc": _r(outcome.best_value),
                     "best_params": {k: float(f"{v:.4g}") if isinstance(v, float) else v
                                     for k, v in outcome.best_params.items()}})
    return {"rows": rows}


def promote_target(target: str, args: argparse.Namespace, experiment: str) -> dict[str, Any]:
    """Child process (one per target, side by side, one torch thread each): ``ship.promote.promote``."""
    import torch

    from raypipe.ship.promote import promote

    torch.set_num_threads(1)
    root = Path(args._root)
    p = promote(root / "data", target, root, experiment, margin=0.0, n_boot=args.bootstrap)
    return {"test_auroc": _r(p.test_value), "test_auroc_ci95": [_r(v) for v in p.test_ci95],
            "oof_auroc": _r(p.value), "oof_auroc_ci95": [_r(v) for v in p.ci95], "alias": p.alias,
            "model": f"{p.model_name} v{p.version}"}


def _child(kind: str, name: str, root: Path, args: argparse.Namespace, experiment: str, seed: int,
           env: dict[str, str]) -> subprocess.Popen:
    argv = [sys.executable, __file__, f"--_{kind}", name, "--_root", str(root), "--_experiment", experiment,
            "--_seed", str(seed), "--budget", str(args.budget), "--epochs", str(args.epochs),
            "--targets", ",".join(args.targets), "--backbone", args.backbone, "--image-size", str(args.image_size),
            "--test-per-class", str(args.test_per_class), "--bootstrap", str(args.bootstrap)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                            text=True, env=env)


def _collect(proc: subprocess.Popen) -> tuple[dict[str, Any] | None, str]:
    out, err = proc.communicate()
    if proc.returncode == 0 and out.strip():
        return json.loads(out.strip().splitlines()[-1]), ""
    lines = [ln for ln in (err or "").splitlines() if ln.strip() and "state-dump" not in ln]
    return None, f"exit {proc.returncode}: " + " | ".join(lines[-3:])[-400:]


def run_strategy(strategy: str, seed: int, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Tune (one child process, retried once under a new experiment name: on a shared machine someone's
    `ray stop --force` kills every Ray cluster), then promote every target (child processes side by side)."""
    rows, error = None, ""
    for attempt in range(2):
        experiment = f"sq-s{seed}-{strategy}" + (f"-retry{attempt}" if attempt else "")
        started = time.perf_counter()
        result, error = _collect(_child("tune", strategy, root, args, experiment, seed, clean_env()))
        tune_s = round(time.perf_counter() - started, 1)
        if result is not None:
            rows = result["rows"]
            break
        say(f"seed {seed} {strategy}: tune failed ({error}); {'retrying' if attempt == 0 else 'giving up'}")
    if rows is None:
        return [{"seed": seed, "strategy": strategy, "target": t, "test_auroc": None, "best_val_auroc": None,
                 "trials": 0, "trial_epochs": 0, "error": error} for t in args.targets]
    started = time.perf_counter()
    procs = {row["target"]: _child("promote", row["target"], root, args, row["experiment"], seed,
                                   clean_env(OMP_NUM_THREADS="1")) for row in rows}
    for row in rows:
        promo, error = _collect(procs[row["target"]])
        row |= promo if promo is not None else {"test_auroc": None, "promote_error": error}
        row["tune_s"] = tune_s  # every target's study ran side by side in this one process
        row["promote_s"] = round(time.perf_counter() - started, 1)  # promotions ran side by side too
        say(f"seed {seed} {strategy:10s} {row['target']:13s} trials {row['trials']:2d} epochs {row['trial_epochs']:3d} "
            f"best val AUROC {row['best_val_auroc']} test AUROC {row.get('test_auroc')} {row.get('test_auroc_ci95')}"
            f" (tune {tune_s} s, promote {row['promote_s']} s)")
    return rows


def _r(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), 4)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 4) if values else None

    out: dict[str, Any] = {}
    for strategy in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        if not mine:
            continue
        out[strategy] = {"best_val_auroc_mean": mean([r["best_val_auroc"] for r in mine]),
                         "test_auroc_mean": mean([r["test_auroc"] for r in mine]),
                         "trial_epochs_mean": mean([r["trial_epochs"] for r in mine]),
                         "trials_mean": mean([r["trials"] for r in mine])}
    # paired: same seed (split) and target
    key = {(r["seed"], r["target"], r["strategy"]): r for r in rows}
    pairs = sorted({(r["seed"], r["target"]) for r in rows})
    for a, b in (("tpe_asha", "seed_fixed"), ("tpe_asha", "random"), ("random", "seed_fixed")):
        diffs = [key[(s, t, a)]["test_auroc"] - key[(s, t, b)]["test_auroc"] for s, t in pairs
                 if (s, t, a) in key and (s, t, b) in key
                 and key[(s, t, a)]["test_auroc"] is not None and key[(s, t, b)]["test_auroc"] is not None]
        if diffs:
            out[f"{a}_minus_{b}_test_auroc"] = {"mean": round(statistics.fmean(diffs), 4),
                                                "wins": sum(d > 0 for d in diffs), "of": len(diffs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, budget 4, 1 seed: a smoke run")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (each: its own split and searcher seed)")
    ap.add_argument("--budget", type=int, default=12, help="trial-epochs per target, strategy and seed")
    ap.add_argument("--epochs", type=int, default=4, help="max epochs of a searched trial (ASHA's max_t)")
    ap.add_argument("--patients", type=int, default=800)
    ap.add_argument("--targets", default="fracture/AP/2,fracture/Lat/2")
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--test-per-class", type=int, default=5, help="fixed test set: per class and 1-year age bin")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--verbose", action="store_true", help="show the child processes' stderr")
    for hidden in ("_tune", "_promote", "_root", "_experiment"):
        ap.add_argument(f"--{hidden}", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    reserve_stdout()
    for key in FOREIGN_ENV:  # a private local Ray, the run dir's own MLflow store and storage
        os.environ.pop(key, None)
    if args._tune or args._promote:
        args.targets = [t for t in args.targets.split(",") if t]
        if args._tune:
            emit(tune_strategy(args._tune, args._seed, args, args._experiment))
        else:
            emit(promote_target(args._promote, args, args._experiment))
        return
    if args.quick:
        args.seeds, args.budget, args.epochs = 1, min(args.budget, 4), min(args.epochs, 2)
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
        space_files(root, args)
        for seed in range(args.seeds):
            for strategy in strategies:
                rows += run_strategy(strategy, seed, args, root)
        sizes = _split_sizes(data, root, args)
    emit({
        "benchmark": "search_quality", **info, "quick": args.quick, "seeds": args.seeds, "budget_trial_epochs": args.budget,
        "epochs_per_trial": args.epochs, "backbone": args.backbone, "image_size": args.image_size,
        "patients": args.patients, "data_seed": 1, "images": summary.get("images"), "targets": args.targets,
        "split_sizes_seed0": sizes, "seed_config": SEED_CONFIG, "bootstrap": args.bootstrap,
        "summary": summarise(rows), "runs": rows, "wall_seconds": round(time.perf_counter() - started, 1),
    })


def _split_sizes(data: Path, root: Path, args: argparse.Namespace) -> dict[str, dict[str, int]]:
    from raypipe.config import TrainConfig
    from raypipe.data.prepare import prepare
    from raypipe.data.targets import parse_target

    cfg = dataclasses.replace(TrainConfig(), image_size=args.image_size, test_per_class=args.test_per_class, seed=0)
    prepared = prepare(data, cfg, root)
    out = {}
    for spec in args.targets:
        target = parse_target(spec, prepared.scheme)
        out[spec] = {split: int(len(prepared.select(target, split)[0])) for split in ("train", "val", "test")}
    return out


if __name__ == "__main__":
    main()
