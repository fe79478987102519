"""Decode every image once into a memory-mapped uint8 array, keyed by data, size and masking.

Decoding a 16-bit 600x1000 PNG costs tens of milliseconds; a training run reads every image every
epoch and a study runs many trials. So the decode -> mask -> letterbox chain (``images.prepare``)
runs once per (manifest content, size, masking) and every later reader memory-maps the result:
the OS page cache shares it between DataLoader workers, Ray workers and trials on one node.

Layout of ``root / f"{data_hash[:16]}-{size}px-{masking}"``::

    images.u8    raw uint8, shape (N, size, size), row i = manifest row i
    index.json   image ids in row order, shape, key fields; written LAST and atomically

``index.json`` marks a complete cache: a build that crashed (or was killed) leaves none, so the
next call rebuilds. The array is built in a temporary sibling and renamed into place before the
index is written, so two processes racing to build the same key never expose a half-written
array (each writes its own temporary file; the last rename wins with identical content).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raypipe import fsio
from raypipe.data import images
from raypipe.errors import InputError

log = logging.getLogger(__name__)

ARRAY_NAME = "images.u8"
INDEX_NAME = "index.json"
FORMAT_VERSION = 1

Progress = Callable[[int, int], None]
_Job = tuple[str, str]  # (path, text boxes)


def _decode_chunk(jobs: Sequence[_Job], size: int, masking: str) -> np.ndarray | tuple[str, str]:
    """Worker: decode a chunk in order. Errors come back as values: ``InputError`` does not pickle."""
    try:
        out = np.empty((len(jobs), size, size), np.uint8)
        for k, (path, boxes) in enumerate(jobs):
            out[k] = images.prepare(path, boxes, size, masking)  # module lookup: monkeypatchable
        return out
    except InputError as exc:
        return (exc.file, exc.reason)


_quiet = {"depth": 0, "saved": -1}
_quiet_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence C libraries writing to file descriptor 2 (libpng prints ``libpng error: ...`` itself
    before OpenCV returns None): a bad image must end as one line, ours. Python-level errors are
    unaffected: they propagate as exceptions and print after the descriptor is restored."""
    with _quiet_lock:
        if _quiet["depth"] == 0:
            sys.stderr.flush()
            _quiet["saved"] = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                os.dup2(_quiet["saved"], 2)
                os.close(_quiet["saved"])


class ImageCache:
    """A complete, read-only decoded image cache. Build or open it with ``build_or_open``.

    Pickles without its memory map (``__getstate__``): each process re-opens the file lazily on
    first access, so the object can be sent to DataLoader workers or Ray tasks cheaply.
    """

    def __init__(self, directory: Path, image_ids: list[str], size: int, masking: str,
                 data_hash: str, built: bool) -> None:
        self.directory = Path(directory).resolve()  # trial processes run in other working directories
        self.image_ids = list(image_ids)
        self.size = size
        self.masking = masking
        self.data_hash = data_hash
        self.built = built  # True when this call decoded the images, False when it only opened them
        self._row_of: dict[str, int] | None = None
        self._array: np.memmap | None = None

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def key_dir(root: str | Path, data_hash: str, size: int, masking: str) -> Path:
        return Path(root) / f"{data_hash[:16]}-{size}px-{masking}"

    @classmethod
    def build_or_open(cls, manifest: pd.DataFrame, data_hash: str, size: int, masking: str,
                      root: str | Path, workers: int = 2,
                      progress: Progress | None = None) -> ImageCache:
        """Open the cache for this key if it is complete and matches ``manifest``, else build it.

        ``workers <= 1`` decodes in this process (no pool start-up; handy for tiny sets/tests).
        Raises ``InputError`` naming the first image that cannot be decoded; no index is written.
        """
        if masking not in images.MASKING_MODES:
            raise ValueError(f"unknown masking mode {masking!r}")
        if size < 1:
            raise ValueError(f"image size must be positive, got {size}")
        if len(manifest) == 0:
            raise InputError("<manifest>", "no images to cache")
        ids = [str(v) for v in manifest["image_id"]]
        directory = cls.key_dir(root, data_hash, size, masking)
        existing = cls._open_existing(directory, ids, data_hash, size, masking)
        if existing is not None:
            log.debug("image cache hit: %s", directory)
            return existing
        cls._build(manifest, directory, ids, data_hash, size, masking, workers, progress)
        return cls(directory, ids, size, masking, data_hash, built=True)

    @classmethod
    def _open_existing(cls, directory: Path, ids: list[str], data_hash: str, size: int,
                       masking: str) -> ImageCache | None:
        index_path = directory / INDEX_NAME
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        expected = {"version": FORMAT_VERSION, "data_hash": data_hash, "size": size, "masking": masking,
                    "shape": [len(ids), size, size], "image_ids": ids}
        if any(index.get(k) != v for k, v in expected.items()):
            log.info("image cache %s does not match this manifest; rebuilding", directory)
            return None
        array_path = directory / ARRAY_NAME
        if not array_path.is_file() or array_path.stat().st_size != len(ids) * size * size:
            return None
        return cls(directory, ids, size, masking, data_hash, built=False)

    @classmethod
    def _build(cls, manifest: pd.DataFrame, directory: Path, ids: list[str], data_hash: str, size: int,
               masking: str, workers: int, progress: Progress | None) -> None:
        created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INDEX_NAME).unlink(missing_ok=True)  # a stale index must not outlive its array
        jobs: list[_Job] = [(str(p), "" if pd.isna(b) else str(b))
                            for p, b in zip(manifest["path"], manifest["text_boxes"], strict=True)]
        n = len(jobs)
        chunk = max(1, min(32, n // max(1, 4 * workers)))
        chunks = [jobs[i : i + chunk] for i in range(0, n, chunk)]
        started = time.perf_counter()
        try:
            # The array is decoded into a temporary sibling, fsync'ed and renamed into place (fsio):
            # a crash or a bad image leaves no array under the final name, and no temporary either.
            with fsio.atomic_path(directory / ARRAY_NAME) as tmp:
                arr = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, size, size))
                done = 0
                with _quiet_native_stderr():
                    for result in cls._decode_all(chunks, size, masking, workers):
                        if isinstance(result, tuple):
                            raise InputError(result[0], result[1])
                        arr[done : done + len(result)] = result
                        done += len(result)
                        if progress is not None:
                            progress(done, n)
                arr.flush()
                del arr
        except BaseException:
            for folder in created:  # bad input leaves nothing behind: not even empty folders
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        index = {"version": FORMAT_VERSION, "data_hash": data_hash, "size": size, "masking": masking,
                 "shape": [n, size, size], "dtype": "uint8", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "build_seconds": round(time.perf_counter() - started, 3), "image_ids": ids}
        fsio.write_json(directory / INDEX_NAME, index)
        log.info("built image cache %s: %d images in %.1f s", directory, n, index["build_seconds"])

    @staticmethod
    def _decode_all(chunks: list[list[_Job]], size: int, masking: str,
                    workers: int) -> Iterator[np.ndarray | tuple[str, str]]:
        """Yield decoded chunks in manifest order (``Executor.map`` preserves order)."""
        if workers <= 1 or len(chunks) == 1:
            for c in chunks:
                yield _decode_chunk(c, size, masking)
            return
        # Threads, not processes: OpenCV's decode and resize release the GIL, and a process pool
        # breaks callers without a __main__ guard (stdin scripts, notebooks, some Ray workers).
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_chunk, chunks, [size] * len(chunks), [masking] * len(chunks))
            try:
                yield from results
            finally:  # on error, do not decode the rest of the data set for nothing
                pool.shutdown(wait=True, cancel_futures=True)

    # -- access -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.image_ids), self.size, self.size)

    @property
    def array(self) -> np.memmap:
        """The read-only memory map, opened on first use in each process."""
        if self._array is None:
            if not (self.directory / ARRAY_NAME).is_file():  # e.g. a trial on a node without this cache
                import socket

                raise FileNotFoundError(
                    f"image cache {self.directory} is not on node {socket.gethostname()}: build it there "
                    "(`raypipe data cache` with the same --run-dir) or tune with a shared --storage directory")
            self._array = np.memmap(self.directory / ARRAY_NAME, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def rows(self, image_ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """Row positions of ``image_ids`` (e.g. a split's images) in this cache."""
        if self._row_of is None:
            self._row_of = {k: i for i, k in enumerate(self.image_ids)}
        try:
            return np.fromiter((self._row_of[str(k)] for k in image_ids), dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"image {exc.args[0]!r} is not in the image cache {self.directory}") from None

    def get(self, i: int) -> np.ndarray:
        """Row ``i`` as a read-only (size, size) uint8 view; copy before writing into it."""
        return self.array[i]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # memmaps do not travel; the receiver re-opens the file
        state["_row_of"] = None
        return state

    def __repr__(self) -> str:
        return f"ImageCache({str(self.directory)!r}, n={len(self)}, size={self.size}, masking={self.masking!r})"
