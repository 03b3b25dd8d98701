"""Errors the store raises.  The CLI boundary (loop/cli/views.py) turns them
into loop.errors.UserError with a fix; the store itself imports nothing of ours.

Two families:

- `StoreError`: the request does not match the data (a run that does not
  exist, an ambiguous id prefix).  Callers turn these into "see `distillery
  runs`"-style advice.
- `DatabaseFault`: the database *file* cannot be used as asked: damaged,
  read-only, written by a newer version, empty, or not ours.  Deliberately not
  a StoreError, so that code which reads "not found" into a StoreError never
  hides a damaged file behind that advice.  Each carries `path` and a message
  saying what is wrong and how to fix it.

`translate` is the one place where sqlite3 exceptions become faults; the
store's connection applies it to every statement and fetch (store/db.py).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class StoreError(Exception):
    """Base class of every error the store raises on purpose about a request."""


class NotFound(StoreError, LookupError):
    """A run, iteration, example or rationale that does not exist."""


class Ambiguous(StoreError, LookupError):
    """An id prefix that matches more than one row."""


class Conflict(StoreError, ValueError):
    """A write that contradicts what is stored (e.g. a dataset version written
    into iterations a replayed run inherits from its parent)."""


class DatabaseFault(Exception):
    """The database file cannot be used as asked; nothing was changed."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)


class CorruptDatabase(DatabaseFault):
    """SQLite cannot read the file: damaged, truncated or not a database."""

    def __init__(self, path: str | Path, detail: str) -> None:
        p = Path(path)
        fixed = p.with_name("fixed.db")
        super().__init__(
            p,
            f"{p} is damaged ({detail}), so it cannot be read. Recover what is readable with "
            f"`sqlite3 {p} \".recover\" | sqlite3 {fixed}`, then move {p.name} (and any {p.name}-wal, "
            f"{p.name}-shm beside it) out of the way and {fixed.name} to {p.name}; or restore {p.name} from a backup",
        )


class ReadOnlyDatabase(DatabaseFault):
    """A write to a database that cannot be written here (the file, its
    folder or the file system is read-only)."""

    def __init__(self, path: str | Path, reason: str, need: str = "this command writes to it") -> None:
        p = Path(path)
        super().__init__(
            p,
            f"{p} is read-only ({reason}) and {need}. Make it writable "
            f"(e.g. `chmod u+w {p.parent} {p}`) or copy the workspace to a writable place; "
            "commands that only read (runs, iterations, show, status, diff, trace, export, report) work as it is",
        )
        self.reason = reason


class NewerDatabase(DatabaseFault):
    """The file records migrations this version does not know: a newer
    Distillery wrote it, and reading or writing it with this one could misread
    or damage what that version stored."""

    def __init__(self, path: str | Path, unknown: list[tuple[str, str]], newest_known: str) -> None:
        p = Path(path)
        names = ", ".join(f"{name} (applied {applied})" for name, applied in unknown)
        super().__init__(
            p,
            f"{p} was written by a newer version of Distillery: it has migration {names}, which this "
            f"version does not know (the newest it knows is {newest_known}); nothing was changed. "
            "Upgrade Distillery (`pip install -U distillery`) to use this workspace",
        )
        self.unknown = unknown


class EmptyDatabase(DatabaseFault):
    """An existing file with no tables at all (0 bytes, say): whatever it held
    is gone, and initialising it in place would hide that."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        size = p.stat().st_size if p.exists() else 0
        super().__init__(
            p,
            f"{p} is empty ({size} bytes, no tables): the runs and data it held are gone, or it was never "
            f"written; nothing was changed. Restore {p.name} from a backup, or move it aside to start a new one",
        )


class ForeignDatabase(DatabaseFault):
    """An SQLite file with tables but no migration record: not a Distillery
    database, and migrating it would write our tables into someone else's file."""

    def __init__(self, path: str | Path, tables: list[str]) -> None:
        p = Path(path)
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        super().__init__(
            p,
            f"{p} is an SQLite database but not a Distillery one (tables {shown}, no _migrations table); "
            "nothing was changed. Point Distillery at its own workspace, or move this file aside",
        )


# Primary SQLite result codes (the low byte of an extended code).
_SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_NOTADB = 8, 11, 26


def translate(exc: sqlite3.Error, path: str | Path, readonly_reason: str | None = None) -> DatabaseFault | None:
    """The fault an sqlite3 exception means for the file at `path`, or None
    when it is not about the file (a bad statement, a constraint: our bugs or
    the caller's, which keep their own type).  `readonly_reason` says why a
    store opened read-only is (a write to it fails with SQLITE_READONLY)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return CorruptDatabase(path, str(exc))
    if code == _SQLITE_READONLY:
        return ReadOnlyDatabase(path, readonly_reason or f"SQLite: {exc}")
    return None
