"""`raypipe pipeline run`: data -> split -> cache -> tune every target -> promote -> report.

Stages are idempotent. Each finished stage is recorded in ``<run_dir>/pipeline/<experiment>.json`` with
the hash of its inputs (check: the data hash; split: the split hash; cache: data, size and masking;
tune: config, data and split hashes, search-space hashes; promote and report: the previous stage's key).
Re-running skips a stage whose inputs are unchanged and re-runs one whose inputs changed; a tune stage
that started but never finished (a crash) is resumed with ``Tuner.restore`` instead of restarted, and
an interrupted promote stage keeps the targets it had already promoted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raypipe import fsio
from raypipe.config import Preset, to_dict
from raypipe.data.prepare import prepare
from raypipe.tracking.runs import store_client, tracking_uri


@dataclass
class StageRecord:
    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> StageRecord:
        return cls(path, json.loads(path.read_text()) if path.exists() else {})

    def done(self, stage: str, key: str) -> bool:
        entry = self.stages.get(stage, {})
        return entry.get("inputs") == key and entry.get("finished", False)

    def started(self, stage: str, key: str) -> bool:
        return self.stages.get(stage, {}).get("inputs") == key

    def mark(self, stage: str, key: str, finished: bool, **extra: Any) -> None:
        self.stages[stage] = {"inputs": key, "finished": finished, **extra}
        fsio.write_text(self.path, json.dumps(self.stages, indent=2))  # atomic: a crash keeps the old record


def run_pipeline(preset: Preset, experiment: str, data: Path, run_dir: Path, source: str = "auto",
                 say: Callable[[str], None] = print, on_tick=None, storage: str | None = None) -> dict[str, Any]:
    """``storage``: Ray's storage for the tune stage (``--storage``; a directory also holds the cache)."""
    from raypipe import report
    from raypipe.ship.promote import promote, summary
    from raypipe.storage import Storage
    from raypipe.tune import study as studies

    run_dir = Path(run_dir)
    record = StageRecord.open(run_dir / "pipeline" / f"{experiment}.json")

    # 1-3. check, split, cache. Each output is keyed by content, so these always run (reading the data
    # is how a change is noticed) but reuse what exists; the record says what changed since last time.
    prepared = prepare(data, preset.train, run_dir, source,
                       cache_root=Storage.resolve(storage, run_dir).cache_root(run_dir))
    cache = prepared.cache
    _record_prepared(record, "check", prepared.data_hash,
                     f"{len(prepared.manifest)} images, data {prepared.data_hash[:12]}", say)
    _record_prepared(record, "split", prepared.split_hash, f"split {prepared.split_hash[:12]}", say)
    _record_prepared(record, "cache", f"{prepared.data_hash}:{cache.size}px:{cache.masking}",
                     f"{'built' if cache.built else 'reused'} {cache.directory}", say)

    options = studies.TuneOptions.from_plan(preset.tune, preset.resources, storage=storage)
    planned = studies.plan(data, list(preset.tune.targets), preset.tune.space, preset.train, {}, run_dir,
                           experiment, options, source, per_target=preset.tune.per_target)
    tune_inputs = {"train": to_dict(preset.train), "tune": to_dict(preset.tune),
                   "resources": {s.target.name: to_dict(s.resources) for s in planned},
                   "targets": {s.target.name: [s.space.sha256, s.data_hash, s.split_hash] for s in planned}}
    tune_key = fsio.sha256_bytes(json.dumps(tune_inputs, sort_keys=True, default=str).encode())

    # 4. tune
    if record.done("tune", tune_key):
        say("tune: unchanged, skipped")
    else:
        resume = record.started("tune", tune_key)  # started with these inputs and never finished: a crash
        if resume:
            options.resume = True
            planned = studies.plan(data, list(preset.tune.targets), preset.tune.space, preset.train, {}, run_dir,
                                   experiment, options, source, per_target=preset.tune.per_target)
        from raypipe.ray_cluster import check_gpus

        check_gpus(max(s.resources.gpus_per_trial for s in planned))  # before the record says "started"
        record.mark("tune", tune_key, finished=False)
        outcomes = studies.run(planned, options, run_dir, on_tick=on_tick)
        record.mark("tune", tune_key, finished=True, targets=[o.target for o in outcomes if o.best_trial])
        say(f"tune: {'resumed and ' if resume else ''}finished {len(outcomes)} studies")

    # 5. promote
    targets = record.stages["tune"].get("targets", [])
    promote_key = fsio.sha256_bytes(f"{tune_key}:{json.dumps(to_dict(preset.promote), sort_keys=True)}".encode())
    if record.done("promote", promote_key):
        say("promote: unchanged, skipped")
    else:
        # Targets promoted before a crash keep their versions: each is recorded as soon as it is done.
        results = dict(record.stages["promote"].get("results", {})) if record.started("promote", promote_key) else {}
        record.mark("promote", promote_key, finished=False, results=results)
        for target in targets:
            if target in results:
                say(f"promote: {target} already promoted (v{results[target]['version']}), kept")
                continue
            p = promote(data, target, run_dir, experiment, preset.promote.margin, source, preset.promote.bootstrap,
                        preset.promote.folds, preset.promote.shortcut_tolerance,
                        options.resources_for(preset.tune.per_target, target))
            results[target] = {"model": p.model_name, "version": p.version, "alias": p.alias, "reason": p.reason}
            record.mark("promote", promote_key, finished=False, results=results)
            say(f"promote: {summary(p)}")
        record.mark("promote", promote_key, finished=True, results=results)

    # 6. report
    out = run_dir / "reports" / f"{experiment}.html"
    report_key = fsio.sha256_bytes(promote_key.encode())
    if record.done("report", report_key) and out.exists():
        say(f"report: unchanged, skipped ({out})")
    else:
        client = store_client(tracking_uri(run_dir))
        report.build(client, experiment, out)
        run = client.create_run(client.get_experiment_by_name(experiment).experiment_id, run_name="pipeline report",
                                tags={"raypipe.kind": "pipeline", "mlflow.source.name": "raypipe pipeline run"})
        client.log_artifact(run.info.run_id, str(out))
        client.log_dict(run.info.run_id, record.stages, "stages.json")
        client.set_terminated(run.info.run_id, "FINISHED")
        record.mark("report", report_key, finished=True, path=str(out))
        say(f"report: {out}")
    return record.stages


def _record_prepared(record: StageRecord, stage: str, key: str, what: str, say: Callable[[str], None]) -> None:
    """Record a prepare stage's output key; say whether it differs from the last run's."""
    if record.done(stage, key):
        say(f"{stage}: unchanged, skipped ({what})")
        return
    before = record.stages.get(stage, {}).get("inputs")
    record.mark(stage, key, finished=True)
    say(f"{stage}: {what}" + (" (changed since the last run)" if before else ""))
