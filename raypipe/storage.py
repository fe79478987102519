"""Where Ray keeps a study's experiments and checkpoints (``--storage``): a directory (on more than one
node: a shared filesystem every node mounts at the same path) or an object-store URI such as
``s3://bucket/prefix``, which Ray and this module open with ``pyarrow.fs``. Small files (study records)
are read and written here the same way on both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from raypipe import fsio
from raypipe.errors import InputError

# Object stores Ray reaches through pyarrow.fs; anything else with a scheme is a typo.
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
STORAGE_ENV = "RAYPIPE_STORAGE"


@dataclass(frozen=True)
class Storage:
    """Ray's ``storage_path`` for tuning: Tune experiments, trial and Train checkpoints, study records.

    ``uri`` is an absolute directory or ``scheme://bucket/prefix`` (query parameters such as
    ``?endpoint_override=...`` are kept and passed to pyarrow). A directory also holds the image cache
    and the Optuna journal; an object store holds neither (a memory map and Optuna's journal need a
    POSIX file): those stay in the driver's ``--run-dir`` (see ``cache_root`` and ``journal_dir``).
    """

    uri: str

    @classmethod
    def resolve(cls, spec: str | Path | None, run_dir: Path) -> Storage:
        """``--storage`` (or ``$RAYPIPE_STORAGE``) -> a checked ``Storage``; none given: the run dir."""
        text = str(spec or "").strip()
        if not text:
            return cls(str(Path(run_dir).resolve()))
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() != "file":
            if scheme.lower() not in REMOTE_SCHEMES or not scheme.isalnum():
                raise InputError("--storage", f"unknown scheme '{scheme}://' in {text!r}: give a directory or "
                                 "s3://bucket/prefix (also gs://, hdfs://, abfs://)")
            if not urlsplit(text).netloc:
                raise InputError("--storage", f"{text!r} names no bucket: use {scheme}://bucket/prefix")
            return cls(text.rstrip("/"))
        path = Path(rest if sep else text).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise InputError("--storage", f"{path} is a file, not a directory")
        return cls(str(path))

    @property
    def local(self) -> bool:
        return "://" not in self.uri

    def join(self, *parts: str) -> str:
        """A path or URI below this storage (query parameters stay at the end)."""
        return join_uri(self.uri, *parts)

    def cache_root(self, run_dir: Path) -> Path:
        """The image cache: beside the experiments on a (shared) directory, else node-local."""
        return Path(self.uri) / "cache" if self.local else Path(run_dir).resolve() / "cache"

    def journal_dir(self, run_dir: Path, experiment: str) -> Path:
        """Where an experiment's Optuna journal lives: only the driver writes it, and it needs POSIX."""
        base = Path(self.uri) if self.local else Path(run_dir).resolve()
        return base / "tune" / experiment

    def __str__(self) -> str:
        return self.uri


def join_uri(base: str, *parts: str) -> str:
    if "://" not in base:
        return str(Path(base).joinpath(*parts))
    head, _, query = base.partition("?")
    joined = "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)])
    return f"{joined}?{query}" if query else joined


def _fs(uri: str):
    """(pyarrow filesystem, path) exactly as Ray resolves a ``storage_path``."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def read_text(uri: str) -> str | None:
    """A small file under a storage path or URI; ``None`` if it does not exist."""
    if "://" not in uri:
        path = Path(uri)
        return path.read_text() if path.is_file() else None
    fs, path = _fs(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except FileNotFoundError:
        return None


def write_text(uri: str, text: str) -> None:
    """Atomically on a filesystem (temporary file + rename); a single PUT on an object store."""
    if "://" not in uri:
        fsio.write_text(uri, text)
        return
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def list_names(uri: str) -> list[str]:
    """Names of the entries directly below a storage path or URI (none if it does not exist)."""
    if "://" not in uri:
        path = Path(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


