"""Named, append-only migrations for the workspace database.

Rules (as in simonw/llm): a migration is never edited once it has shipped; a
schema change is a new function appended to MIGRATIONS, returning its SQL
script (statements ending in `;`).  `apply_migrations` runs every migration
not yet recorded in `_migrations`, all inside one transaction, so a database
is either fully at the new schema or untouched.
A file it must not migrate (written by a newer version, not ours, or blank
when the caller did not just create it) is refused with a DatabaseFault
before anything is written.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

from .errors import EmptyDatabase, ForeignDatabase, NewerDatabase, ReadOnlyDatabase

# (name, SQL script) in the order they apply
MIGRATIONS: list[tuple[str, str]] = []


def migration(fn: Callable[[], str]) -> Callable[[], str]:
    MIGRATIONS.append((fn.__name__, fn()))
    return fn


@migration
def m001_initial() -> str:
    return """
        -- Content-addressed text: every rationale, model output and prompt body
        -- is stored once, keyed by sha256 hex of its UTF-8 bytes.
        CREATE TABLE texts (
            hash TEXT PRIMARY KEY,
            body TEXT NOT NULL
        );

        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            parent_run INTEGER REFERENCES runs(id),
            parent_k INTEGER,
            config_json TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'created',
            created TEXT NOT NULL
        );

        CREATE TABLE examples (
            id TEXT PRIMARY KEY,               -- hash(question, answer)
            split TEXT NOT NULL CHECK (split IN ('pool', 'dev')),
            question TEXT NOT NULL,
            answer TEXT,                       -- gold final answer, NULL when unknown
            rationale_hash TEXT REFERENCES texts(hash),  -- gold rationale, optional
            meta TEXT,                         -- JSON
            created TEXT NOT NULL
        );
        CREATE INDEX examples_split ON examples(split, created);

        CREATE TABLE prompt_versions (
            id TEXT PRIMARY KEY,               -- sha256 of the YAML body
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            created TEXT NOT NULL
        );
        CREATE INDEX prompt_versions_name ON prompt_versions(name, created);

        CREATE TABLE iterations (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            k INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',   -- running | done
            started TEXT NOT NULL,
            finished TEXT,
            adapter_path TEXT,
            adapter_sha256 TEXT,
            metrics TEXT,                      -- JSON
            stop_reason TEXT,
            PRIMARY KEY (run_id, k)
        );

        CREATE TABLE iteration_steps (
            run_id INTEGER NOT NULL,
            k INTEGER NOT NULL,
            step TEXT NOT NULL,                -- baseline | mine | teach | agree | version | train | evaluate | commit
            status TEXT NOT NULL,              -- started | done
            started TEXT NOT NULL,
            finished TEXT,
            info TEXT,                         -- JSON: counts, timings
            PRIMARY KEY (run_id, k, step),
            FOREIGN KEY (run_id, k) REFERENCES iterations(run_id, k)
        );

        CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            k INTEGER NOT NULL,
            phase TEXT NOT NULL,               -- mine | eval
            example_id TEXT NOT NULL REFERENCES examples(id),
            sample INTEGER NOT NULL,           -- 0 = greedy, 1.. = sampled
            output_hash TEXT NOT NULL REFERENCES texts(hash),
            answer TEXT,                       -- extracted answer, NULL if none
            correct INTEGER,                   -- 1/0, NULL without gold
            UNIQUE (run_id, k, phase, example_id, sample)
        );
        CREATE INDEX predictions_example ON predictions(example_id, run_id, k);

        CREATE TABLE teacher_calls (
            key TEXT PRIMARY KEY,              -- sha256 cache key (DESIGN §4)
            teacher TEXT NOT NULL,             -- configured teacher name
            model TEXT NOT NULL,               -- LiteLLM model string
            template TEXT,                     -- template name
            prompt_version TEXT REFERENCES prompt_versions(id),
            request TEXT NOT NULL,             -- JSON: messages + params, never API keys
            response TEXT,                     -- JSON of the provider response
            response_hash TEXT REFERENCES texts(hash),  -- the completion text
            status TEXT NOT NULL,              -- ok | error
            error_type TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 1,
            latency_s REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd REAL NOT NULL DEFAULT 0,
            run_id INTEGER,
            k INTEGER,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE INDEX teacher_calls_run ON teacher_calls(run_id, k);

        CREATE TABLE rationales (
            id TEXT PRIMARY KEY,               -- hash(example_id, text)
            example_id TEXT NOT NULL REFERENCES examples(id),
            text_hash TEXT NOT NULL REFERENCES texts(hash),
            answer TEXT,                       -- extracted final answer
            source TEXT NOT NULL,              -- teacher name | self | gold
            teacher_call TEXT REFERENCES teacher_calls(key),
            parent_id TEXT REFERENCES rationales(id),     -- the demonstration it refines
            error_prediction INTEGER REFERENCES predictions(id),  -- the wrong answer it answers
            accepted INTEGER,                  -- 1/0, NULL before `agree`
            agreement REAL,
            run_id INTEGER,
            k INTEGER,
            created TEXT NOT NULL
        );
        CREATE INDEX rationales_example ON rationales(example_id);

        -- Dataset versions are stored as deltas: the rows at (run, k, example)
        -- replace that example's demonstrations from version k on.  A row with
        -- rationale_id NULL removes the example.  Version k of a run is, per
        -- example, the rows at the largest k' <= k (following parent runs for
        -- replays).  Growth per iteration is proportional to what changed.
        CREATE TABLE dataset_entries (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            k INTEGER NOT NULL,
            example_id TEXT NOT NULL REFERENCES examples(id),
            rationale_id TEXT REFERENCES rationales(id),
            weight REAL NOT NULL DEFAULT 1.0
        );
        CREATE INDEX dataset_entries_lookup ON dataset_entries(run_id, example_id, k);
        CREATE INDEX dataset_entries_k ON dataset_entries(run_id, k);

        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id INTEGER,
            k INTEGER,
            step TEXT,
            kind TEXT NOT NULL,                -- started | finished | error | stop | info | ...
            message TEXT,
            data TEXT,                         -- JSON
            created TEXT NOT NULL
        );
        CREATE INDEX events_run ON events(run_id, id);
        """


@migration
def m002_rationale_verdicts() -> str:
    return """
        -- Why a rationale was not accepted (verify's structural checks or judge,
        -- or agree: wrong answer / no majority); NULL when accepted or not judged.
        ALTER TABLE rationales ADD COLUMN rejected_reason TEXT;
        -- The judge teacher's call that decided it (the verify template), if any.
        ALTER TABLE rationales ADD COLUMN verify_call TEXT REFERENCES teacher_calls(key);
        CREATE INDEX rationales_run ON rationales(run_id, k);
        -- Every verdict per iteration: a rationale is stored once (content hash),
        -- but the same text can be judged again at a later iteration (e.g. a copy
        -- of the demonstration it now refines); rationales.accepted/rejected_reason
        -- hold the latest verdict, this table all of them.
        CREATE TABLE verdicts (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            k INTEGER NOT NULL,
            rationale_id TEXT NOT NULL REFERENCES rationales(id),
            accepted INTEGER NOT NULL,
            agreement REAL,
            rejected_reason TEXT,
            verify_call TEXT REFERENCES teacher_calls(key),
            created TEXT NOT NULL,
            PRIMARY KEY (run_id, k, rationale_id)
        );
        CREATE INDEX verdicts_rationale ON verdicts(rationale_id);
        """


@migration
def m003_example_removals() -> str:
    return """
        -- `distillery data remove`: an example taken out of the pool/dev sets.
        -- The examples row stays (predictions, rationales and dataset versions
        -- refer to it); this row says it no longer takes part, since when and why.
        -- Adding the example again deletes this row (the events table keeps both).
        CREATE TABLE example_removals (
            example_id TEXT PRIMARY KEY REFERENCES examples(id),
            reason TEXT,
            created TEXT NOT NULL
        );
        """


@migration
def m004_teacher_batches() -> str:
    return """
        -- Batch jobs of batch teachers (teachers/batch.py).  A row is written
        -- before the batch is created at the provider (batch_id NULL until the
        -- provider answers), so a restarted run finds the job it submitted and
        -- polls it instead of paying for it twice.  status is the provider's
        -- (validating, in_progress, finalizing, cancelling, completed, expired,
        -- cancelled, failed) or 'submitting' / 'lost' (never reached the provider);
        -- finished is set once its results are in teacher_calls.
        CREATE TABLE teacher_batches (
            id INTEGER PRIMARY KEY,
            batch_id TEXT UNIQUE,              -- the provider's id
            teacher TEXT NOT NULL,
            model TEXT NOT NULL,
            api_base TEXT,
            input_file_id TEXT NOT NULL,
            status TEXT NOT NULL,
            total INTEGER NOT NULL,            -- request counts, as last polled
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            output_file_id TEXT,
            error_file_id TEXT,
            run_id INTEGER,
            k INTEGER,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            finished TEXT
        );
        CREATE INDEX teacher_batches_open ON teacher_batches(teacher, finished);
        -- The requests of a batch: custom_id = the teacher_calls cache key.
        CREATE TABLE teacher_batch_lines (
            batch INTEGER NOT NULL REFERENCES teacher_batches(id),
            key TEXT NOT NULL,
            PRIMARY KEY (batch, key)
        );
        CREATE INDEX teacher_batch_lines_key ON teacher_batch_lines(key);
        """


def _state(conn: sqlite3.Connection) -> tuple[dict[str, str], list[str]]:
    """({migration: when applied} as recorded, the file's other tables)."""
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    done = dict(conn.execute("SELECT name, applied FROM _migrations")) if "_migrations" in tables else {}
    return done, [t for t in tables if t != "_migrations"]


def _pending(conn: sqlite3.Connection, *, create: bool) -> list[tuple[str, str]]:
    """The migrations still to apply.  Refuses a file that must not be
    migrated: one a newer version wrote (a recorded name this code does not
    know), an SQLite file that is not ours, and, unless `create`, a blank one
    (no tables: a 0-byte file is one), whose data is gone rather than never made."""
    done, tables = _state(conn)
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    known = {name for name, _ in MIGRATIONS}
    unknown = sorted((name, applied) for name, applied in done.items() if name not in known)
    if unknown:
        raise NewerDatabase(path, unknown, MIGRATIONS[-1][0])
    if not done:
        if tables:
            raise ForeignDatabase(path, tables)
        if not create:
            raise EmptyDatabase(path)
    return [(n, fn) for n, fn in MIGRATIONS if n not in done]


def apply_migrations(conn: sqlite3.Connection, *, create: bool = True, readonly: str | None = None) -> list[str]:
    """Apply pending migrations in one transaction; return the names applied.

    `create`: a blank file may be initialised (the caller just made it).
    `readonly`: why the connection cannot write; then this only checks, and a
    database that needs a migration is refused (ReadOnlyDatabase).

    The common case (nothing pending) only reads, so opening a database that
    another process is writing never waits for its write lock.  Otherwise the
    write lock is taken first and the pending list re-read under it, so two
    processes opening a blank file at once do not both migrate, and a blank
    file the caller did not create is only called empty once any migration
    in progress has committed or rolled back; a failing migration rolls back
    everything, the _migrations table included."""
    if readonly is not None:
        pending = _pending(conn, create=False)
        if pending:
            path = conn.execute("PRAGMA database_list").fetchone()[2]
            raise ReadOnlyDatabase(path, readonly, "this version of Distillery must first add migration "
                                                   f"{', '.join(n for n, _ in pending)} to it")
        return []
    if not _pending(conn, create=True):
        return []
    # executescript() would commit implicitly, so statements run one by one
    # inside an explicit transaction; BEGIN IMMEDIATE takes the write lock up front.
    conn.execute("BEGIN IMMEDIATE")
    try:
        pending = _pending(conn, create=create)
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
        for name, script in pending:
            for stmt in split_statements(script):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO _migrations (name, applied) VALUES (?, datetime('now'))", (name,)
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return [n for n, _ in pending]


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each with its `;`.  A `;` ends a
    statement only where sqlite3.complete_statement says so (not inside a
    string, a comment or a trigger's BEGIN ... END); text after the last one
    is a last statement (blanks or comments alone run as a no-op)."""
    stmts: list[str] = []
    start = 0
    for i, ch in enumerate(script):
        if ch == ";" and sqlite3.complete_statement(script[start:i + 1]):
            stmts.append(script[start:i + 1].strip())
            start = i + 1
    if script[start:].strip():
        stmts.append(script[start:].strip())
    return stmts
