"""Targets: named views of the manifest that one model learns.

``age``             age-group classifier over every AP/lateral image with a known age
``fracture``        fracture yes/no over every AP/lateral image, and every image whose source
                    records no projection (``U``: MURA)
``fracture/AP``     one projection (``AP`` or ``Lat``)
``fracture/AP/1``   one projection and one age group (index into the run's age scheme)

A target the data set cannot feed at all (per-projection targets on a source without projections,
age targets on one without ages) is refused with one line by ``unsupported``, before any split is
looked at: "no images in the train split" would hide why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raypipe.data.groups import AgeScheme
from raypipe.errors import InputError

PROJECTIONS = ("AP", "Lat")
UNKNOWN = "U"  # the manifest's "no projection recorded"


@dataclass(frozen=True)
class Target:
    kind: str  # "age" | "fracture"
    projection: str | None = None
    group: int | None = None

    @property
    def name(self) -> str:
        return "/".join(str(p) for p in (self.kind, self.projection, self.group) if p is not None)

    def n_classes(self, scheme: AgeScheme) -> int:
        return scheme.n_groups if self.kind == "age" else 2

    def class_names(self, scheme: AgeScheme) -> list[str]:
        return scheme.labels() if self.kind == "age" else ["normal", "fracture"]

    def select(self, manifest: pd.DataFrame, scheme: AgeScheme) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows of this target and their class index."""
        groups = scheme.group_of(manifest["age"].to_numpy(dtype=float))
        if self.projection is None:  # oblique views stay out (too few to learn from)
            keep = manifest["projection"].isin((*PROJECTIONS, UNKNOWN)).to_numpy().copy()  # may be read-only
        else:
            keep = (manifest["projection"] == self.projection).to_numpy().copy()
        if self.kind == "age" or self.group is not None:
            keep &= groups >= 0
        if self.group is not None:
            keep &= groups == self.group
        rows = manifest[keep]
        y = groups[keep] if self.kind == "age" else rows["label"].to_numpy()
        return rows, np.asarray(y, dtype=np.int64)

    def unsupported(self, manifest: pd.DataFrame) -> str | None:
        """Why the data set as a whole cannot feed this target (``None`` when it can)."""
        source = "/".join(sorted(set(manifest["source"].astype(str)))) or "the data set"
        if self.projection is not None and not manifest["projection"].isin(PROJECTIONS).any():
            return (f"the source ({source}) records no projection for any image; train 'fracture' "
                    "(every image) instead")
        if (self.kind == "age" or self.group is not None) and not manifest["age"].notna().any():
            what = "the age model needs" if self.kind == "age" else "per-age-group targets need"
            return f"the source ({source}) records no age for any image; {what} ages"
        return None

    def check(self, manifest: pd.DataFrame) -> None:
        """``InputError`` (one line, exit 2) when ``unsupported`` says why."""
        if (why := self.unsupported(manifest)) is not None:
            raise InputError(f"target {self.name}", why)


def parse_target(spec: str, scheme: AgeScheme) -> Target:
    parts = spec.strip("/").split("/")
    kind = parts[0]
    if kind not in ("age", "fracture") or (kind == "age" and len(parts) > 1) or len(parts) > 3:
        raise ValueError(f"unknown target {spec!r}: use 'age', 'fracture', 'fracture/AP' or 'fracture/Lat/2'")
    projection = parts[1] if len(parts) > 1 else None
    if projection is not None and projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r} in target {spec!r}: use AP or Lat")
    group = None
    if len(parts) > 2:
        if not parts[2].isdigit() or int(parts[2]) >= scheme.n_groups:
            raise ValueError(f"age group {parts[2]!r} in target {spec!r} is not one of 0..{scheme.n_groups - 1}"
                             f" of scheme {scheme.name} ({', '.join(scheme.labels())})")
        group = int(parts[2])
    return Target(kind, projection, group)


def all_targets(scheme: AgeScheme) -> list[Target]:
    """The age model plus one fracture model per projection and age group, as the seeds trained."""
    return [Target("age")] + [Target("fracture", p, g) for p in PROJECTIONS for g in range(scheme.n_groups)]
