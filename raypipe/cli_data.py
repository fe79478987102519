"""``raypipe data ...`` (synth, check, split, cache) and the options every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raypipe.console import console, progress_bar
from raypipe.errors import InputError, bad_input

data_app = typer.Typer(no_args_is_help=True, help="Make, check, split and cache data sets.")

RunDir = Annotated[Path, typer.Option("--run-dir", help="Where manifests, caches, checkpoints and the "
                                      "embedded MLflow store live.", envvar="RAYPIPE_RUN_DIR")]
Source = Annotated[str, typer.Option("--source", help="auto | grazpedwri | mura | csv")]
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", envvar="RAYPIPE_STORAGE", help="Ray storage for Tune experiments and checkpoints: a directory "
    "(shared by every node on a cluster) or s3://bucket/prefix. Default: the run dir.")]
DEFAULT_RUN_DIR = Path("runs")


@data_app.command("synth")
def data_synth(out: Path, patients: int = 300, seed: int = 0, height: int = 256, width: int = 160,
               shortcut: Annotated[str | None, typer.Option(
                   help="'marker': no fracture drawn, the label only in the text marker's corner; "
                        "'presence': a marker on fractures only (sets to test masking on)")] = None) -> None:
    """Write a synthetic data set in the GRAZPEDWRI-DX layout (16-bit PNGs, YOLO labels)."""
    from raypipe.data.synth import synthesize

    with progress_bar("drawing radiographs") as progress:
        summary = synthesize(out, patients=patients, seed=seed, height=height, width=width, progress=progress,
                             shortcut=shortcut)
    console.print(f"wrote {summary['images']} images of {summary['patients']} patients to {out}"
                  f" in {summary['seconds']:.1f} s")


@data_app.command("check")
def data_check(data: Path, source: Source = "auto",
               age_scheme: Annotated[str, typer.Option(help="3group | 4group | 5group | cut points '6,12'")] = "4group"
               ) -> None:
    """Validate a data set and print what it holds."""
    from raypipe.data.sources import load_source
    from raypipe.data.summary import summarize

    summary = summarize(load_source(data, source), _scheme(age_scheme))
    table = summary.pop("table")
    console.print(_frame_table(table, f"{data}: images by projection x age group x label"))
    for key, value in summary.items():
        console.print(f"{key.replace('_', ' ')}: {value}")


@data_app.command("split")
def data_split(data: Path, run_dir: RunDir = DEFAULT_RUN_DIR, source: Source = "auto", test_per_class: int = 10,
               val_fraction: float = 0.2, include_metal: bool = False, seed: int = 0, age_scheme: str = "4group",
               test_max_fraction: float = 0.3) -> None:
    """Fixed test set per projection and 1-year age bin, then patient-grouped train/val."""
    from raypipe.data.prepare import load_manifest, make_or_load_splits
    from raypipe.data.splits import SplitParams

    _scheme(age_scheme)
    _check_options(test_per_class=test_per_class, val_fraction=val_fraction, seed=seed)
    manifest, data_hash, workdir = load_manifest(data, run_dir, source)
    params = SplitParams(test_per_class, val_fraction, include_metal, seed, age_scheme, test_max_fraction)
    splits, split_hash, path = make_or_load_splits(manifest, data_hash, workdir, params)
    counts = splits["split"].value_counts()
    console.print(", ".join(f"{name} {counts.get(name, 0)}" for name in ("train", "val", "test", "excluded")))
    console.print(f"splits: {path}\nsplit hash: {split_hash}")


@data_app.command("cache")
def data_cache(data: Path, run_dir: RunDir = DEFAULT_RUN_DIR, source: Source = "auto", size: int = 224,
               masking: str = "fill") -> None:
    """Decode every image once into a memory-mapped cache for this size and masking."""
    from raypipe.data.cache import ImageCache
    from raypipe.data.prepare import load_manifest, save_manifest

    _check_options(image_size=size, masking=masking)
    manifest, data_hash, workdir = load_manifest(data, run_dir, source, save=False)
    with progress_bar("decoding images") as progress:
        cache = ImageCache.build_or_open(manifest, data_hash, size, masking, run_dir / "cache", progress=progress)
    save_manifest(manifest, workdir)  # only once every image decoded: bad input leaves nothing behind
    console.print(f"{len(cache)} images cached at {size}px ({'built' if cache.built else 'already cached'})")



def _check_options(**values) -> None:
    """Command-line values get the same range checks as the same keys in a config file."""
    from raypipe.config import check_value

    for key, value in values.items():
        if (why := check_value(key, value)) is not None:
            raise InputError(f"--{'size' if key == 'image_size' else key.replace('_', '-')}", why)


def _scheme(spec: str):
    from raypipe.data.groups import get_scheme

    with bad_input("--age-scheme"):
        return get_scheme(spec)


def _frame_table(frame, title: str) -> Table:
    table = Table(title=title)
    frame = frame.reset_index()
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    return table
