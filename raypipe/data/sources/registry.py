"""The adapter registry: ``@register_source(name)`` and the two ways in, by name or by detection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from raypipe.data.sources.common import check_text_file
from raypipe.errors import InputError

Adapter = Callable[[Path], pd.DataFrame]
SOURCES: dict[str, Adapter] = {}
_DETECT: dict[str, tuple[Callable[[Path], bool], str]] = {}


def register_source(name: str, *, detect: Callable[[Path], bool] | None = None,
                    looks_for: str = "") -> Callable[[Adapter], Adapter]:
    """Register an adapter under ``name``; ``detect`` lets ``kind="auto"`` find it (in registration order).

    ``looks_for`` describes the layout for the message shown when nothing matches.
    """
    def deco(fn: Adapter) -> Adapter:
        SOURCES[name] = fn
        if detect is not None:
            _DETECT[name] = (detect, looks_for or name)
        return fn
    return deco


def load_source(root: Path, kind: str = "auto") -> pd.DataFrame:
    """Load the data set at ``root`` (a folder, or a CSV file) as a canonical manifest."""
    root = Path(root).expanduser().absolute()
    if kind == "auto":
        kind = detect_kind(root)
    if kind not in SOURCES:
        raise InputError(root, f"unknown source kind {kind!r} (expected auto, {', '.join(SOURCES)})", field="kind")
    if not root.exists():
        raise InputError(root, "no such file or directory")
    return SOURCES[kind](root)


def detect_kind(root: Path) -> str:
    """Name of the first registered adapter whose layout matches ``root``."""
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise InputError(root, "no such file or directory")
    if root.is_file():
        check_text_file(root)
    for name, (detect, _) in _DETECT.items():
        if detect(root):
            return name
    wanted = "; ".join(desc for _, desc in _DETECT.values())
    raise InputError(root, f"no recognisable data layout: looked for {wanted}")
