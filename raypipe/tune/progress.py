"""One compact live table for all studies (targets, trials done/running/pruned/failed, best so far).

In a terminal the table redraws in place; elsewhere (CI logs, ``ray job logs``) one line is
printed each time a study's counts change, so a log shows progress without Ray's per-trial dumps.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from raypipe.tune.state import StudyState


def table(states: list[StudyState], title: str = "tuning") -> Table:
    out = Table(title=title, title_justify="left")
    for name, justify in (("target", "left"), ("done", "right"), ("running", "right"), ("pruned", "right"),
                          ("failed", "right"), ("best", "right"), ("trial", "right"), ("time", "right")):
        out.add_column(name, justify=justify)
    for s in states:
        best = "-" if math.isinf(s.best) else f"{s.monitor.removeprefix('val_')} {s.best:.3f}"
        elapsed = (s.ended or time.monotonic()) - s.started
        out.add_row(s.target, f"{s.done}/{s.total}", str(len(s.running)), str(len(s.pruned)), str(len(s.failed)),
                    best, f"#{s.best_trial}" if s.best_trial else "-", f"{elapsed:.0f}s")
    return out


class ProgressBoard:
    """``with ProgressBoard(console) as board: ... board.update(states)``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        self._seen: dict[str, tuple] = {}

    def __enter__(self) -> ProgressBoard:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def update(self, states: list[StudyState]) -> None:
        if self.live:
            self.live.update(table(states))
            return
        for s in states:
            counts = (s.done, len(s.pruned), len(s.failed), s.best)
            if self._seen.get(s.key) != counts:
                self._seen[s.key] = counts
                best = "-" if math.isinf(s.best) else f"{s.best:.3f}"
                self.console.print(f"[tune] {s.target}: {s.done}/{s.total} done, {len(s.running)} running, "
                                   f"{len(s.pruned)} pruned, {len(s.failed)} failed, best {s.monitor} {best}", markup=False,
                                   soft_wrap=True)
