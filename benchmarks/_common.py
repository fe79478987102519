"""Shared by the benchmark scripts: machine facts, load average, run directory, output conventions.

Every script prints exactly one JSON object on stdout (``emit``); progress goes to stderr (``say``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def say(*parts: Any) -> None:
    """Progress line on stderr, prefixed with the wall clock."""
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a figure was measured on; ``load_before`` is the 1/5/15-minute load average at the start."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    import torch

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "mem_gib": round(mem, 1), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "load_before": loadavg()}


_REAL_STDOUT: Any = None


def reserve_stdout() -> None:
    """Point file descriptor 1 at stderr for the rest of the process and keep the real stdout for ``emit``.

    Ray, MLflow, rich and child processes then cannot put anything but the one JSON object on stdout.
    """
    global _REAL_STDOUT
    if _REAL_STDOUT is not None:
        return
    sys.stdout.flush()
    _REAL_STDOUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)


def emit(result: dict[str, Any]) -> None:
    """The one JSON object on stdout (``load_after`` added)."""
    result = {**result, "load_after": loadavg()}
    out = _REAL_STDOUT or sys.stdout
    out.write(json.dumps(result, default=_default) + "\n")
    out.flush()


def _default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def run_dir(path: Path | None, keep: bool, prefix: str) -> Iterator[Path]:
    """``path`` if given (kept), else a fresh temporary directory removed at the end unless ``keep``."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"raypipe-bench-{prefix}-"))
    try:
        yield tmp
    finally:
        if keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# Settings that would send a benchmark's runs elsewhere: a tracking server, a Ray head, shared storage.
FOREIGN_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYPIPE_STORAGE")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus what would send runs elsewhere (a tracking server, a Ray head)."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def synth(out: Path, patients: int, seed: int, height: int = 256, width: int = 160) -> dict[str, Any]:
    """The project's synthetic generator, reused when ``out`` already holds a data set."""
    from raypipe.data.synth import synthesize

    if (out / "dataset.csv").is_file():
        return {"reused": True}
    started = time.perf_counter()
    summary = synthesize(out, patients=patients, seed=seed, height=height, width=width)
    say(f"synthesized {summary['images']} images ({height}x{width}) in {time.perf_counter() - started:.1f} s")
    return summary
