"""Atomic writes and content hashes.

Every file raypipe writes for later runs to read (manifests, splits, cache arrays and indexes,
configs, stage records) goes through ``atomic_path``: the bytes go to a temporary sibling in the
same folder, are fsync'ed, and the temporary file is renamed onto the target with ``os.replace``
(atomic on POSIX), then the folder is fsync'ed so the rename itself survives a power cut. A
crash, a kill or an exception mid-write therefore leaves the previous version readable and never
a half-written one.

Temporary names are ``.<name>.<host>.<pid>.<random>.tmp``: hidden, never matching the target's
suffix, and tagged with the writing process. A writer killed with SIGKILL cannot clean up after
itself, so the next write to the same target removes temporaries whose process is gone (same
host only: a process on another node of a shared file system cannot be checked from here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

TMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` left by writers on this host that no longer run."""
    path = Path(path)
    prefix = f".{path.name}.{_HOST}."
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\..*{re.escape(TMP_SUFFIX)}$")
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    out = []
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            out.append(path.parent / name)
    return out


def sweep(path: str | Path) -> int:
    """Remove the temporaries of ``path`` left by killed writers; return how many went."""
    gone = 0
    for tmp in stale_temporaries(path):
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            gone += 1
        except FileNotFoundError:
            pass
    return gone


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` if the block succeeds.

    The block writes the whole file at the yielded path (any way it likes: ``write_bytes``, a
    memmap, ``cv2.imwrite``...). On success the file is fsync'ed and renamed onto ``path``; on an
    exception it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **kwargs: Any) -> None:
    write_text(path, json.dumps(obj, **kwargs))


def write_yaml(path: str | Path, obj: object) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
