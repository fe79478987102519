"""What a data set holds, for ``raypipe data check``: counts by projection x age group x label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raypipe.data.groups import AgeScheme

PROJECTION_ORDER = ("AP", "Lat", "Oblique", "U")


def summarize(manifest_df: pd.DataFrame, scheme: AgeScheme) -> dict[str, object]:
    """Counts for ``raypipe data check``, as plain data (the CLI renders them).

    ``table`` is indexed by (projection, age_group) with columns normal/fracture/total; every
    group of ``scheme`` appears even when empty, so a thin cell is visible before a split or a
    per-group model is built on it. Ages outside any group (NaN) form an ``unknown`` group.
    """
    m = manifest_df
    names = np.array([*scheme.labels(), "unknown"])
    group = names[scheme.group_of(m["age"].to_numpy(dtype=float))]  # -1 (NaN age) -> "unknown"
    lab = np.where(m["label"].to_numpy() == 1, "fracture", "normal")
    counts = pd.DataFrame({"projection": m["projection"].to_numpy(), "age_group": group, "label": lab})
    table = counts.groupby(["projection", "age_group", "label"]).size().unstack("label", fill_value=0)
    projections = [p for p in PROJECTION_ORDER if p in set(counts["projection"])]
    groups = [*scheme.labels(), *(["unknown"] if (group == "unknown").any() else [])]
    full = pd.MultiIndex.from_product([projections, groups], names=["projection", "age_group"])
    table = table.reindex(index=full, columns=["normal", "fracture"], fill_value=0).astype(int)
    table["total"] = table["normal"] + table["fracture"]
    return {
        "images": len(m),
        "patients": int(m["patient_id"].nunique()),
        "studies": int(m["study_id"].nunique()),
        "fractures": int((m["label"] == 1).sum()),
        "table": table,
        "metal": int(m["metal"].sum()),
        "text_boxes": int((m["text_boxes"] != "").sum()),
        "missing_age": int(m["age"].isna().sum()),
        # the source's own test split (MURA's valid), which becomes the fixed test set
        "held_out": int(m["held_out"].sum()) if "held_out" in m.columns else 0,
        "sources": {str(k): int(v) for k, v in m["source"].value_counts().items()},
        "age_scheme": scheme.name,
    }
