"""Test hooks, inert unless a fault test arms them through the environment.

Fault tests need a failure to land at the same spot every run (mid-epoch on one DDP rank, between
registering a model version and moving its alias, inside one chosen trial); killing from outside at a
guessed moment is flaky. Ray workers inherit the variables from the driver that started the cluster.

``RAYPIPE_FAULT`` is a comma-separated list of:
  ``<point>``            SIGKILL this process when it reaches ``point(<point>)``: ``promote:trained``,
                         ``promote:registered``, ``promote:deciding``, ``train:rank<R>@<E>`` (rank R, epoch E)
  ``raise:<key>=<value>`` raise in ``raise_for(cfg)`` when the training config has that setting, so one
                         chosen trial of a study fails inside its loop as a real bug would
``RAYPIPE_FAULT_ONCE=<file>``: a kill fires only in the process that creates that file, so a restarted
process (a Ray Train worker group, a retried trial) runs through.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

ENV, ONCE_ENV = "RAYPIPE_FAULT", "RAYPIPE_FAULT_ONCE"


def _armed() -> list[str]:
    return [p for p in os.environ.get(ENV, "").split(",") if p]


def armed(name: str) -> bool:
    return name in _armed()


def point(name: str, delay_s: float = 0.0) -> None:
    """SIGKILL this process here if ``name`` is armed (after ``delay_s``; once with ``RAYPIPE_FAULT_ONCE``)."""
    if not armed(name):
        return
    if marker := os.environ.get(ONCE_ENV):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()} {name}\n".encode())
        os.close(fd)
    time.sleep(delay_s)
    os.kill(os.getpid(), signal.SIGKILL)


def raise_for(cfg: Any) -> None:
    """Raise if ``raise:<key>=<value>`` is armed and ``cfg.<key>`` has that value."""
    for spec in _armed():
        key, _, value = spec.removeprefix("raise:").partition("=")
        if spec.startswith("raise:") and hasattr(cfg, key) and str(getattr(cfg, key)) == value:
            raise RuntimeError(f"injected fault: {key}={value} ({ENV})")
