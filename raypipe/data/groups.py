"""Age-group schemes as data.

A scheme is a list of cut points in years; group ``i`` holds ages in ``[cuts[i-1], cuts[i])``.
The seeds used three schemes; the 4-group one is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES: dict[str, tuple[float, ...]] = {
    "3group": (8.0, 15.0),  # 0-7 / 8-14 / 15-19
    "4group": (5.0, 10.0, 15.0),  # 0-4 / 5-9 / 10-14 / 15-19
    "5group": (1.5, 5.0, 10.0, 15.0),  # 0-1.5 / 1.5-5 / 5-10 / 10-15 / 15-19
}
DEFAULT_SCHEME = "4group"


@dataclass(frozen=True)
class AgeScheme:
    name: str
    cuts: tuple[float, ...]

    @property
    def n_groups(self) -> int:
        return len(self.cuts) + 1

    def group_of(self, age: np.ndarray | float) -> np.ndarray:
        """Group index for each age (NaN ages get -1)."""
        a = np.asarray(age, dtype=float)
        g = np.searchsorted(np.asarray(self.cuts), a, side="right")
        return np.where(np.isnan(a), -1, g)

    def labels(self) -> list[str]:
        """Human names of the groups, e.g. ``["0-5", "5-10", "10-15", "15+"]``."""
        lows, highs = (0.0, *self.cuts), (*self.cuts, None)
        return [f"{_fmt(lo)}-{_fmt(hi)}" if hi is not None else f"{_fmt(lo)}+" for lo, hi in zip(lows, highs, strict=True)]


def _fmt(x: float) -> str:
    return f"{x:g}"


def get_scheme(spec: str | list[float] | tuple[float, ...]) -> AgeScheme:
    """A named scheme (``"4group"``) or custom cut points (``[6, 12]`` or ``"6,12"``)."""
    if isinstance(spec, str) and spec in SCHEMES:
        return AgeScheme(spec, SCHEMES[spec])
    if isinstance(spec, str):
        try:
            cuts = tuple(float(v) for v in spec.split(","))
        except ValueError:
            raise ValueError(f"unknown age scheme {spec!r}: use one of {sorted(SCHEMES)} or cut points like '6,12'") from None
    else:
        cuts = tuple(float(v) for v in spec)
    if not cuts or any(b <= a for a, b in zip(cuts[:-1], cuts[1:], strict=False)) or cuts[0] <= 0:
        raise ValueError(f"age cut points must be positive and increasing, got {list(cuts)}")
    return AgeScheme("custom:" + ",".join(_fmt(c) for c in cuts), cuts)
