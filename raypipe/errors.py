"""User-facing errors.

Anything the user can fix (a bad CSV row, a missing image, an unknown config key) raises
`InputError`. The CLI prints it as one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

EXIT_INPUT = 2


class InputError(Exception):
    """Bad input, reported as ``file, row N, field 'x': reason``."""

    def __init__(
        self,
        file: str | Path,
        reason: str,
        *,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file)
        self.reason = reason
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __reduce__(self):  # picklable across process pools and Ray workers
        return (_rebuild, (self.file, self.reason, self.row, self.field))

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.reason}"


@contextlib.contextmanager
def bad_input(file: str | Path, *, field: str | None = None, note: str = "") -> Iterator[None]:
    """A ``ValueError`` from a check that does not know where its input came from (a target spec, an age
    scheme, a loss for a class count) becomes an ``InputError`` naming that place."""
    try:
        yield
    except ValueError as exc:
        raise InputError(file, f"{exc}{note}", field=field) from None


def _rebuild(file: str, reason: str, row: int | None, field: str | None) -> InputError:
    return InputError(file, reason, row=row, field=field)
