"""From a data folder to training-ready arrays: the one path every command takes.

source folder -> manifest (validated) -> splits (patient-grouped, hashed) -> image cache

Derived files live in the run directory, never in the user's data folder:
  <run_dir>/data/<data hash>/manifest.csv
  <run_dir>/data/<data hash>/splits-<params key>.csv (+ .json with the split hash)
  <run_dir>/cache/<data hash>-<size>px-<masking>/
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from raypipe.config import TrainConfig
from raypipe.data import manifest as manifest_mod
from raypipe.data import splits as splits_mod
from raypipe.data.cache import ImageCache
from raypipe.data.groups import AgeScheme, get_scheme
from raypipe.data.sources import load_source
from raypipe.data.targets import Target

Progress = Callable[[int, int], None]


@dataclass
class PreparedData:
    manifest: pd.DataFrame
    splits: pd.DataFrame  # row-aligned with manifest
    data_hash: str
    split_hash: str
    scheme: AgeScheme
    workdir: Path
    cache: ImageCache | None = None

    def frame(self, target: Target, split: str) -> pd.DataFrame:
        """The manifest rows of ``target`` in ``split``, in the order ``select`` returns them."""
        target.check(self.manifest)
        return target.select(self.manifest[(self.splits["split"] == split).to_numpy()], self.scheme)[0]

    def select(self, target: Target, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Cache rows and class labels of ``target`` in ``split``; ``InputError`` for a target the data
        set cannot feed at all (``Target.check``: e.g. ``fracture/AP`` on MURA)."""
        target.check(self.manifest)
        in_split = self.manifest[(self.splits["split"] == split).to_numpy()]
        rows, y = target.select(in_split, self.scheme)
        if self.cache is None:
            raise RuntimeError("prepared without an image cache")
        return self.cache.rows(rows["image_id"].tolist()), y


def load_manifest(data: Path, run_dir: Path, source_kind: str = "auto", save: bool = True
                  ) -> tuple[pd.DataFrame, str, Path]:
    """Read and validate a data set; save its manifest under the run directory (``save``)."""
    manifest = load_source(Path(data), source_kind)
    data_hash = manifest_mod.content_hash(manifest)
    workdir = Path(run_dir) / "data" / data_hash[:12]
    if save:
        save_manifest(manifest, workdir)
    return manifest, data_hash, workdir


def save_manifest(manifest: pd.DataFrame, workdir: Path) -> Path:
    path = Path(workdir) / "manifest.csv"
    if not path.exists():
        manifest_mod.save(manifest, path)
    return path


def make_or_load_splits(manifest: pd.DataFrame, data_hash: str, workdir: Path, params: splits_mod.SplitParams,
                        save: bool = True) -> tuple[pd.DataFrame, str, Path]:
    """The splits for ``params``: read back when saved before, else made (and saved, with ``save``)."""
    path = workdir / f"splits-{params.key()}.csv"
    splits = None
    if path.exists() and path.with_suffix(".json").exists():
        try:
            splits, split_hash = splits_mod.load(path)
        except ValueError:  # CSV and record torn apart (a crash between their writes): split again
            splits = None
    if splits is None:
        splits = splits_mod.make_splits(manifest, get_scheme(params.age_scheme), params)
        split_hash = (splits_mod.save(splits, path, params, data_hash) if save
                      else splits_mod.content_hash(splits))
    if not splits["image_id"].astype(str).equals(manifest["image_id"].astype(str)):
        raise RuntimeError(f"{path} does not match the manifest; delete it to re-split")
    return splits, split_hash, path


def _saved(path: Path, split_hash: str) -> bool:
    try:
        return splits_mod.load(path)[1] == split_hash
    except (OSError, ValueError):
        return False


def split_params(cfg: TrainConfig) -> splits_mod.SplitParams:
    return splits_mod.SplitParams(test_per_class=cfg.test_per_class, val_fraction=cfg.val_fraction,
                                  include_metal=cfg.include_metal, seed=cfg.split_seed, age_scheme=cfg.age_scheme,
                                  test_max_fraction=cfg.test_max_fraction)


def prepare(data: Path, cfg: TrainConfig, run_dir: Path, source_kind: str = "auto",
            progress: Progress | None = None, with_cache: bool = True,
            cache_root: Path | None = None) -> PreparedData:
    """``cache_root`` (default ``<run_dir>/cache``): e.g. a shared ``--storage`` directory, so that
    trials on other nodes open the same image cache."""
    # Nothing is written until every image has decoded: bad input leaves no manifest or split behind.
    manifest, data_hash, workdir = load_manifest(data, run_dir, source_kind, save=False)
    params = split_params(cfg)
    splits, split_hash, split_path = make_or_load_splits(manifest, data_hash, workdir, params, save=False)
    cache = None
    if with_cache:
        cache = ImageCache.build_or_open(manifest, data_hash, cfg.image_size, cfg.masking,
                                         cache_root or Path(run_dir) / "cache", progress=progress)
    save_manifest(manifest, workdir)
    if not _saved(split_path, split_hash):
        splits_mod.save(splits, split_path, params, data_hash)
    return PreparedData(manifest, splits, data_hash, split_hash, get_scheme(cfg.age_scheme), workdir, cache)
