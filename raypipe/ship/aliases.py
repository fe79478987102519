"""The model registry's aliases: `champion` only for a version whose out-of-fold evidence wins (``decide``),
`challenger` otherwise; one atomic alias move under a lock per model; ``rollback`` to the champion replaced."""

from __future__ import annotations

import contextlib
import fcntl
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raypipe import faults
from raypipe.errors import InputError
from raypipe.ship import selection

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class Promotion:
    model_name: str
    version: str
    alias: str  # champion | challenger
    reason: str
    metric: str  # the selection metric: oof_auroc | oof_macro_f1
    value: float  # out of fold: what decided
    ci95: tuple[float, float]
    previous_champion: str | None
    test_value: float = math.nan  # reported, never decided on
    test_ci95: tuple[float, float] = (math.nan, math.nan)
    shortcut_flag: bool | None = None  # binary models: the shortcut audit's flag (evaluate/shortcuts.py)


@contextlib.contextmanager
def _lock(run_dir: Path, name: str) -> Iterator[None]:
    """Serialise alias changes of one model (same host; a shared run dir serialises a cluster's)."""
    path = Path(run_dir) / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide(client: MlflowClient, name: str, version: str, evidence: selection.Selection, split_hash: str,
           margin: float, n_boot: int = 1000) -> Promotion:
    """Give ``version`` the champion alias if its out-of-fold evidence wins, else the challenger alias.

    A version whose CI includes chance is registered but never champion. Against a champion on the same
    split, both recipes scored the same train+val images out of fold: ``version`` wins only when the
    lower bound of the paired patient-bootstrap CI of the difference exceeds ``margin``. Call under ``_lock``.
    """
    champion = current_champion(client, name)
    previous = str(champion.version) if champion else None
    metric = f"oof_{evidence.metric}"
    shown = f"{metric} {evidence.value:.3f} (95% CI {evidence.ci95[0]:.3f}-{evidence.ci95[1]:.3f})"
    if not evidence.above_chance:
        alias, reason = CHALLENGER, f"{shown} includes chance ({evidence.chance:.3f}): never champion"
        client.set_model_version_tag(name, version, "raypipe.chance_floor", "failed")
    elif champion is None:
        alias, reason = CHAMPION, f"first version of this model; {shown} is above chance"
    elif champion.tags.get("split_hash") != split_hash:
        alias, reason = CHALLENGER, (f"champion v{champion.version} was selected on another split "
                                     f"({champion.tags.get('split_hash', '?')[:12]}); not comparable")
    elif (theirs := selection.load_from_run(client, champion.run_id, n_boot)) is None:
        alias, reason = CHAMPION, (f"champion v{champion.version} has no out-of-fold evidence (chosen before "
                                   f"selection without test); {shown} is above chance")
    else:
        diff, (low, high) = selection.paired_difference(evidence, theirs, n_boot)
        versus = f"{diff:+.3f} vs champion v{champion.version} (paired 95% CI {low:+.3f} to {high:+.3f})"
        if low > margin:
            alias, reason = CHAMPION, f"{metric} {versus}: better by more than the margin {margin}"
        else:
            alias, reason = CHALLENGER, f"{metric} {versus}: not better by more than the margin {margin}"
    if alias == CHAMPION:
        if previous:
            client.set_model_version_tag(name, version, "previous_champion", previous)
        faults.point("promote:deciding")
        client.set_registered_model_alias(name, CHAMPION, version)  # one atomic move: never two champions
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "promotion", f"{alias}: {reason}")
    return Promotion(name, str(version), alias, reason, metric, evidence.value, evidence.ci95,
                     previous if alias == CHAMPION else None)


def rollback(client: MlflowClient, name: str, run_dir: Path) -> str:
    """Move ``champion`` back to the version the current champion replaced; return that version."""
    with _lock(run_dir, name):
        champion = current_champion(client, name)
        if champion is None:
            raise InputError(name, "has no champion to roll back")
        previous = champion.tags.get("previous_champion")
        if not previous:
            raise InputError(name, f"champion v{champion.version} replaced no earlier version")
        try:
            client.get_model_version(name, previous)
        except MlflowException:
            raise InputError(name, f"the previous champion v{previous} no longer exists") from None
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_model_version_tag(name, str(champion.version), "rolled_back", "true")
        return previous
