"""Opening the workspace database: WAL, migrations, content-addressed text.

`Store` is the one handle the rest of the code uses.  Domain APIs (examples,
predictions, rationales, datasets, views) live in sibling modules and are
attached as methods of `Store` or take a `Store` as their first argument.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlite_utils

from .records import RecordsMixin
from .schema import apply_migrations
from .util import now, sha256_text
from .versions import VersionsMixin
from .views import ViewsMixin

DB_NAME = "distillery.db"
__all__ = ["DB_NAME", "Store", "now", "sha256_text"]


class Store(RecordsMixin, VersionsMixin, ViewsMixin):
    """A workspace database.  Safe to open from several processes at once:
    WAL lets readers proceed while one writer commits, and every multi-row
    change happens inside `transaction()` so readers never see half of it."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        conn = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._depth = 0
        if not readonly:
            apply_migrations(conn)

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
