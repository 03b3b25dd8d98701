"""Opening the workspace database: WAL, migrations, content-addressed text.

`Store` is the one handle the rest of the code uses.  It opens read-only
where the file cannot be written (so a read-only workspace can be inspected),
and its connection turns sqlite3 errors about the file into DatabaseFaults
(store/errors.py) at every statement and fetch, so no caller sees a raw
"database disk image is malformed".  Domain APIs live in sibling modules,
mixed into `Store`: records.py (runs, examples, prompts, iterations,
predictions, rationales, events), calls.py (the teacher-call cache, batch
jobs), versions.py (dataset versions, replays), views.py (diff, lineage,
teacher-call views) and queries.py (what the CLI shows).  No SQL runs outside
store/: the rest of the code calls these methods.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .calls import CallsMixin
from .errors import ReadOnlyDatabase, translate
from .queries import QueriesMixin
from .records import RecordsMixin
from .schema import apply_migrations
from .util import now, sha256_text
from .versions import VersionsMixin
from .views import ViewsMixin

DB_NAME = "distillery.db"
_SQLITE_CANTOPEN = 14
__all__ = ["DB_NAME", "Store", "now", "sha256_text"]


def _translating(method):
    """`method` of sqlite3.Cursor, with an sqlite3 error about the file
    (damaged, read-only) raised as its DatabaseFault (store/errors.py)."""

    def call(self, *args):
        try:
            return method(self, *args)
        except sqlite3.Error as e:
            self.connection.raise_fault(e)
            raise

    call.__name__ = method.__name__
    return call


class _Cursor(sqlite3.Cursor):
    """A cursor of the store's connection.  A damaged page is found when it is
    read, which can be at any statement or fetch, so all of them translate."""

    execute = _translating(sqlite3.Cursor.execute)
    executemany = _translating(sqlite3.Cursor.executemany)
    executescript = _translating(sqlite3.Cursor.executescript)
    fetchone = _translating(sqlite3.Cursor.fetchone)
    fetchmany = _translating(sqlite3.Cursor.fetchmany)
    fetchall = _translating(sqlite3.Cursor.fetchall)
    __next__ = _translating(sqlite3.Cursor.__next__)


class _Connection(sqlite3.Connection):
    """sqlite3.Connection whose cursors (also those of conn.execute)
    translate file faults; knows the path they name."""

    path: Path
    readonly_reason: str | None = None

    def raise_fault(self, exc: sqlite3.Error) -> None:
        fault = translate(exc, self.path, self.readonly_reason)
        if fault is not None:
            raise fault from exc

    def cursor(self, factory=_Cursor):
        return super().cursor(factory)

    def execute(self, *args):
        return self.cursor().execute(*args)

    def executemany(self, *args):
        return self.cursor().executemany(*args)

    def executescript(self, *args):
        return self.cursor().executescript(*args)


def _unwritable(path: Path) -> str | None:
    """Why the database at `path` cannot be written here, or None.  SQLite
    writes beside the file (-wal, -shm), so its folder must be writable too.
    os.access asks the kernel, so it also sees read-only mounts and immutable
    files (chattr +i), which stop root as well."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"the file system of {folder} is read-only"
    except OSError:
        pass  # a folder that does not exist: reported when the file is created
    if path.exists() and not os.access(path, os.W_OK):
        return f"the file {path} is not writable"
    if folder.is_dir() and not os.access(folder, os.W_OK):
        return f"its folder {folder} is not writable"
    return None


def _connect(path: Path, readonly_reason: str | None) -> _Connection:
    kw = dict(timeout=30.0, isolation_level=None, check_same_thread=False, factory=_Connection)
    if readonly_reason is None:
        conn = sqlite3.connect(str(path), **kw)
    else:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, **kw)
        conn.path, conn.readonly_reason = path, readonly_reason
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except BaseException as e:
            conn.close()
            if not isinstance(e, sqlite3.OperationalError) or e.sqlite_errorcode & 0xFF != _SQLITE_CANTOPEN:
                raise
            # A WAL database needs its -shm file even to read, and a read-only
            # folder cannot get one.  With no -wal content every committed
            # change is in the main file, and nobody can write here, so
            # reading it as immutable (no locks, no -shm) sees all of it.
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size:
                raise ReadOnlyDatabase(path, readonly_reason, f"its write-ahead log {wal.name} holds changes that "
                                                              "SQLite can read only where it may write beside it") from None
            conn = sqlite3.connect(path.absolute().as_uri() + "?immutable=1", uri=True, **kw)
    conn.path, conn.readonly_reason = path, readonly_reason
    return conn


class Store(RecordsMixin, CallsMixin, VersionsMixin, ViewsMixin, QueriesMixin):
    """A workspace database.  Safe to open from several processes at once:
    WAL lets readers proceed while one writer commits, and every multi-row
    change happens inside `transaction()` so readers never see half of it."""

    def __init__(self, path: str | Path, *, readonly: bool | None = None) -> None:
        """Open (a missing file: create) the database and apply migrations.

        readonly: None opens it read-only when it cannot be written here, so
        inspection works on a read-only workspace and a write raises
        ReadOnlyDatabase naming the reason; True always opens it read-only;
        False refuses (ReadOnlyDatabase) a file that cannot be written.
        Raises a DatabaseFault for a file it must not use (store/errors.py);
        `readonly_reason` says why a read-only store is (None: writable)."""
        self.path = Path(path)
        existed = self.path.exists()
        why = _unwritable(self.path)
        if why is not None and readonly is False:
            raise ReadOnlyDatabase(self.path, why)
        if readonly:
            why = why or "opened read-only"
        if why is not None and not existed:
            raise ReadOnlyDatabase(self.path, why, "this command would create it")
        self.readonly_reason = why
        conn = _connect(self.path, why)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            # Migrations first: they refuse a file we must not touch before
            # anything is written to it (journal_mode=WAL writes the header).
            apply_migrations(conn, create=not existed, readonly=why)
            if why is None:
                conn.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            conn.close()
            if not existed:  # a file this call made and could not initialise: leave nothing behind
                for p in (self.path, self.path.with_name(self.path.name + "-wal"),
                          self.path.with_name(self.path.name + "-shm")):
                    p.unlink(missing_ok=True)
            raise
        self.conn = conn
        self._lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open(cls, workspace_or_file: str | Path, **kw) -> "Store":
        p = Path(workspace_or_file)
        if p.is_dir():
            p = p / DB_NAME
        return cls(p, **kw)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (re-entrant: nested calls join the outer one);
        rolled back if the block raises."""
        with self._txn("BEGIN IMMEDIATE", rollback_on_error=True) as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed
        state (WAL), so a reader never sees half of a writer's transaction
        across several queries.  Joins an enclosing transaction/snapshot."""
        with self._txn("BEGIN DEFERRED", rollback_on_error=False) as conn:
            # The snapshot starts at the first read, so read now.
            conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()
            yield conn

    @contextmanager
    def _txn(self, begin: str, *, rollback_on_error: bool) -> Iterator[sqlite3.Connection]:
        """The nesting shared by transaction() and snapshot(): the outermost
        call begins and ends the SQLite transaction, inner calls join it."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute(begin)
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK" if rollback_on_error else "COMMIT")
                raise
            self._depth = 0
            self.conn.execute("COMMIT")

    # -- content-addressed text ------------------------------------------
    def put_text(self, body: str) -> str:
        h = sha256_text(body)
        self.conn.execute("INSERT OR IGNORE INTO texts (hash, body) VALUES (?, ?)", (h, body))
        return h

    def get_text(self, h: str | None) -> str | None:
        if h is None:
            return None
        row = self.conn.execute("SELECT body FROM texts WHERE hash = ?", (h,)).fetchone()
        return row[0] if row else None
