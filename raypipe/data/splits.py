"""Patient-safe splits: a fixed test set, then train/val.

The seeds split per image, so a patient's other view and follow-up studies leaked across
train, val and test. Here every split is grouped by ``patient_id``:

1. Fixed test set, per projection and one-year age bin: up to K fractures and K normals
   (the seeds' design). Patients are taken whole, single-study patients first; a test
   patient's images that would overflow a full cell are ``excluded`` rather than leak into
   training. Every cell therefore holds ``min(K, images in that cell)``. The test set never
   takes more than ``test_max_fraction`` of the patients (a small data set at the default K would
   leave a per-group target nothing to train on): K is lowered, with a warning, until it fits.
   A source with a test split of its own (MURA's ``valid``: manifest column ``held_out``) keeps
   it instead: its held-out images are the test set, whole (no age-bin cut: MURA has no ages),
   and images of the same patients outside it are ``excluded``.
2. The remaining patients go to train/val, stratified by projection x age group x label
   (``StratifiedGroupKFold``), grouped by patient.

Metal cases are excluded by default and oblique views dropped. The result is written
atomically with its content hash, which every later run records.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raypipe import fsio
from raypipe.data.groups import AgeScheme

SPLITS = ("train", "val", "test", "excluded")


@dataclass(frozen=True)
class SplitParams:
    test_per_class: int = 10
    val_fraction: float = 0.2
    include_metal: bool = False
    seed: int = 0  # the split seed (TrainConfig.split_seed), not the model's
    age_scheme: str = "4group"
    test_max_fraction: float = 0.3

    def key(self) -> str:
        return fsio.sha256_bytes(json.dumps(asdict(self), sort_keys=True).encode())[:10]


def make_splits(manifest: pd.DataFrame, scheme: AgeScheme, params: SplitParams) -> pd.DataFrame:
    """Return ``image_id, split, reason`` for every manifest row."""
    rng = np.random.default_rng(params.seed)
    split = pd.Series("", index=manifest.index, dtype=object)
    reason = pd.Series("", index=manifest.index, dtype=object)
    drop_proj = manifest["projection"] == "Oblique"
    split[drop_proj], reason[drop_proj] = "excluded", "oblique"
    if not params.include_metal:
        metal = manifest["metal"] & (split == "")
        split[metal], reason[metal] = "excluded", "metal"

    held = (manifest["held_out"].to_numpy(dtype=bool) if "held_out" in manifest.columns  # hand-made frames
            else np.zeros(len(manifest), dtype=bool)) & (split == "").to_numpy()
    if held.any():
        split[held] = "test"
        # Patients never cross: a held-out patient's images in the source's training split stay out.
        crossing = (split == "") & manifest["patient_id"].isin(manifest.loc[held, "patient_id"])
        split[crossing], reason[crossing] = "excluded", "patient in the source's test split"
    else:
        test_ids, overflow_ids = _capped_test(manifest[split == ""], params, rng)
        split[manifest.index.isin(test_ids)] = "test"
        overflow = manifest.index.isin(overflow_ids)
        split[overflow], reason[overflow] = "excluded", "test patient, cell full"

    rest = manifest[split == ""]
    if len(rest):
        split[rest.index] = _train_val(rest, scheme, params)
    return pd.DataFrame({"image_id": manifest["image_id"], "split": split, "reason": reason})


def _capped_test(df: pd.DataFrame, params: SplitParams, rng: np.random.Generator) -> tuple[pd.Index, pd.Index]:
    """``_fixed_test`` at the largest K <= test_per_class whose test set holds at most test_max_fraction
    of the patients (each K draws from the same generator state: a rerun gives the same split)."""
    if params.test_per_class <= 0 or df.empty:  # no fixed test set asked for
        return pd.Index([]), pd.Index([])
    state = rng.bit_generator.state
    patients = df["patient_id"].nunique()
    for k in range(params.test_per_class, 0, -1):
        rng.bit_generator.state = state
        test, overflow = _fixed_test(df, k, rng)
        share = df.loc[test.union(overflow), "patient_id"].nunique() / max(patients, 1)
        if share <= params.test_max_fraction:
            if k < params.test_per_class:
                warnings.warn(f"test_per_class {params.test_per_class} would put more than "
                              f"{params.test_max_fraction:.0%} of the {patients} patients in the test set; "
                              f"using {k} ({share:.0%})", stacklevel=3)
            return test, overflow
    # Even one image per cell is too many: fill cells (in random patient order) up to the share.
    rng.bit_generator.state = state
    cap = int(params.test_max_fraction * patients)
    warnings.warn(f"even test_per_class 1 would put more than {params.test_max_fraction:.0%} of the {patients} "
                  f"patients in the test set; using 1 with at most {cap} patients (some cells stay empty)",
                  stacklevel=3)
    return _fixed_test(df, 1, rng, max_patients=cap)


def _fixed_test(df: pd.DataFrame, k: int, rng: np.random.Generator, max_patients: int | None = None
                ) -> tuple[pd.Index, pd.Index]:
    """Pick whole patients until every (projection, 1-year bin, label) cell holds up to k images."""
    if k <= 0 or df.empty:
        return pd.Index([]), pd.Index([])
    cell = (df["projection"].astype(str) + "|" + np.floor(df["age"].fillna(-1)).astype(int).astype(str)
            + "|" + df["label"].astype(str))
    filled: dict[str, int] = {}
    by_patient = df.groupby("patient_id", sort=True).groups
    # Single-study patients first, random order within: fewer test images lost to full cells.
    patients = list(by_patient)
    order = rng.permutation(len(patients))
    n_studies = df.groupby("patient_id", sort=True)["study_id"].nunique()
    patients = sorted((patients[i] for i in order), key=lambda p: n_studies[p])
    test, overflow, taken = [], [], 0
    for pid in patients:
        rows = rng.permutation(np.asarray(by_patient[pid]))
        cells = cell[rows]
        if all(filled.get(c, 0) >= k for c in cells):
            continue
        if max_patients is not None and taken >= max_patients:
            break
        taken += 1
        for idx, c in zip(rows, cells, strict=True):
            if filled.get(c, 0) < k:
                filled[c] = filled.get(c, 0) + 1
                test.append(idx)
            else:
                overflow.append(idx)
    return pd.Index(test), pd.Index(overflow)


def _train_val(df: pd.DataFrame, scheme: AgeScheme, params: SplitParams) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold  # a 1-2 s import: only when splitting

    groups = scheme.group_of(df["age"].to_numpy(dtype=float))
    strata = df["projection"].astype(str) + "|" + pd.Series(groups, index=df.index).astype(str) + "|" + df["label"].astype(str)
    n_splits = max(2, round(1 / params.val_fraction)) if params.val_fraction > 0 else 0
    out = np.full(len(df), "train", dtype=object)
    if n_splits == 0 or df["patient_id"].nunique() < n_splits:
        return out
    # A set so small that every stratum has fewer images than folds (sklearn refuses it outright): keep
    # the label balance alone, or, smaller still, only the patient grouping.
    for coarser in (df["label"].astype(str), pd.Series("all", index=df.index)):
        if strata.value_counts().max() >= n_splits:
            break
        strata = coarser
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=params.seed)
    with warnings.catch_warnings():  # rare strata (few patients) are expected in small age groups
        warnings.simplefilter("ignore", UserWarning)
        _, val_idx = next(cv.split(np.zeros(len(df)), strata.to_numpy(), df["patient_id"].to_numpy()))
    out[val_idx] = "val"
    return out


def content_hash(splits: pd.DataFrame) -> str:
    """The split hash: of the CSV bytes ``save`` writes."""
    return fsio.sha256_bytes(splits.to_csv(index=False).encode())


def save(splits: pd.DataFrame, path: str | Path, params: SplitParams, data_hash: str) -> str:
    """Write ``splits.csv`` and its ``.json`` record atomically; return the split hash.

    The record goes last: ``load`` (and ``prepare``) trust a split only when both exist.
    """
    data = splits.to_csv(index=False).encode()
    split_hash = fsio.sha256_bytes(data)
    fsio.write_bytes(path, data)
    record = {"split_hash": split_hash, "data_hash": data_hash, "params": asdict(params),
              "counts": splits["split"].value_counts().to_dict()}
    fsio.write_json(Path(path).with_suffix(".json"), record, indent=2)
    return split_hash


def load(path: str | Path) -> tuple[pd.DataFrame, str]:
    """Read a saved split; ``ValueError`` if the CSV and its record do not belong together (a crash
    between ``save``'s two writes, or a hand edit): the caller then makes the split again."""
    path = Path(path)
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        split_hash = record["split_hash"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path.with_suffix('.json')}: unreadable split record ({exc})") from None
    data = path.read_bytes()
    if fsio.sha256_bytes(data) != split_hash:
        raise ValueError(f"{path} does not match the split hash in its record")
    return pd.read_csv(io.BytesIO(data), dtype={"image_id": "string"}, keep_default_na=False), split_hash
