"""Live state of one study in the driver process: counts for the progress table, pruned trials.

Ray Tune pickles its scheduler and callbacks into the experiment state and unpickles them on
``Tuner.restore``. A ``StudyState`` pickles as its key only and unpickles to the live object of
this process, so a restored study still reports to the table and logger of the run that resumed it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


def trial_number(trial) -> int:
    """The study's running trial count (1, 2, ...): Tune puts it first in the experiment tag."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else 0


@dataclass
class StudyState:
    key: str  # "<experiment>/<target slug>/round-<n>": unique per study round
    target: str = ""
    monitor: str = ""
    total: int = 0
    parent_run_id: str | None = None
    running: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    pruned: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    best: float = -math.inf
    best_trial: int | None = None  # trial number
    base_point: dict[str, Any] | None = None  # the study's own config in the space: trial 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    _live: ClassVar[dict[str, StudyState]] = {}

    @classmethod
    def open(cls, key: str, **fields: Any) -> StudyState:
        """The process-wide state of study ``key`` (created on first use, updated with ``fields``)."""
        state = cls._live.setdefault(key, cls(key))
        for name, value in fields.items():
            setattr(state, name, value)
        return state

    def __reduce__(self):
        return (StudyState.open, (self.key,))

    # --------------------------------------------------------------- updates from Tune callbacks
    def started_trial(self, trial_id: str) -> None:
        with self.lock:
            self.running.add(trial_id)
            self.failed.discard(trial_id)

    def result(self, trial, score: float) -> None:
        with self.lock:
            if not math.isnan(score) and score > self.best:
                self.best, self.best_trial = score, trial_number(trial)

    def ended_trial(self, trial_id: str, failed: bool = False) -> None:
        with self.lock:
            self.running.discard(trial_id)
            (self.failed if failed else self.finished).add(trial_id)

    def is_base(self, config: dict[str, Any]) -> bool:
        """Whether a trial's sampled config is the study's base config (trial 0)."""
        return self.base_point is not None and dict(config) == self.base_point

    def was_pruned(self, trial_id: str) -> bool:
        return trial_id in self.pruned

    @property
    def done(self) -> int:
        return len(self.finished) + len(self.failed)
