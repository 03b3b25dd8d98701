"""Database faults at the store: a damaged, empty, foreign or newer file is
refused with a DatabaseFault naming the path and the fix, and nothing is
written to it; a file that cannot be written is opened read-only (reads work,
writes raise ReadOnlyDatabase).

Read-only here means really read-only for this process.  Mode bits do not
stop root, so as root `read_only` sets the immutable attribute (chattr +i),
which the kernel enforces for root too (and which os.access, the check the
store makes, reports); where neither works the test is skipped, not faked."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from store import (
    CorruptDatabase, DatabaseFault, EmptyDatabase, ForeignDatabase, NewerDatabase, ReadOnlyDatabase, Store, StoreError,
    schema,
)


# ------------------------------------------------------------------ helpers
def _tree(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out.append(p)
        if p.is_dir():
            out += sorted(p.rglob("*"))
    return out


def _writable(paths) -> bool:
    """Can this process still write any of `paths` (a file opened for
    writing, a file created in a folder)?  Probes without changing anything
    that stays."""
    for p in paths:
        try:
            if p.is_dir():
                probe = p / f".probe-{uuid.uuid4().hex}"
                probe.touch()
                probe.unlink()
            else:
                os.close(os.open(p, os.O_WRONLY))
            return True
        except OSError:
            continue
    return False


@contextmanager
def read_only(*paths):
    """Make `paths` (folders: with everything in them) unwritable for this
    process for the block: chmod a-w, and as root, whom that does not stop,
    chattr +i.  Skips the test where nothing here can do it."""
    everything = _tree(paths)
    modes = {p: p.stat().st_mode for p in everything}
    immutable = False
    try:
        for p in everything:
            p.chmod(0o555 if p.is_dir() else 0o444)
        if _writable(everything):  # root: mode bits do not apply
            if shutil.which("chattr") is None:
                pytest.skip("running as root without chattr: nothing here makes a file read-only for this process")
            immutable = True
            done = subprocess.run(["chattr", "+i", *map(str, everything)], capture_output=True, text=True)
            if done.returncode != 0 or _writable(everything):
                pytest.skip(f"running as root and chattr +i does not work here: {done.stderr.strip()}")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *map(str, everything)], capture_output=True)
        for p, mode in modes.items():
            p.chmod(mode)


def fingerprint(*paths) -> dict:
    """{path: (size, mtime_ns, sha256)} of every file: "nothing written" means this is unchanged."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in _tree(paths) if p.is_file()}


@pytest.fixture
def db(tmp_path) -> Path:
    """A database with a few examples, closed (everything in the main file)."""
    p = tmp_path / "distillery.db"
    with Store.open(p) as st:
        st.add_examples([{"id": f"e{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(200)],
                        "pool")
        st.create_run("main", {})
    return p


def _assert_fault(exc: DatabaseFault, path: Path, *fragments: str) -> None:
    msg = str(exc)
    assert str(path) in msg and exc.path == path, msg
    for f in fragments:
        assert f in msg, msg
    assert not isinstance(exc, StoreError)  # "not found" advice must never catch a damaged file


# ------------------------------------------------------------- damaged files
def test_garbage_file_is_refused_untouched(tmp_path):
    p = tmp_path / "distillery.db"
    p.write_bytes(b"these are not the bytes of an SQLite database\n" * 100)
    before = fingerprint(tmp_path)
    with pytest.raises(CorruptDatabase) as e:
        Store.open(p)
    _assert_fault(e.value, p, "file is not a database", '".recover"', "backup")
    assert fingerprint(tmp_path) == before


def test_truncated_file_is_refused_untouched(db):
    os.truncate(db, db.stat().st_size // 3)
    before = fingerprint(db.parent)
    with pytest.raises(CorruptDatabase) as e:
        Store.open(db)
    _assert_fault(e.value, db, "malformed", f'sqlite3 {db} ".recover" | sqlite3 {db.with_name("fixed.db")}')
    assert fingerprint(db.parent) == before


def test_damage_found_later_is_a_fault_too(db):
    """A damaged page is only found when read: the connection translates the
    error at any statement or fetch, not only at open."""
    con = sqlite3.connect(db)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'examples'").fetchone()[0]
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    st = Store.open(db)  # the schema page is intact
    try:
        assert st.get_run("main")["name"] == "main"
        with pytest.raises(CorruptDatabase) as e:
            st.list_examples("pool")
        _assert_fault(e.value, db, "malformed", '".recover"')
        with pytest.raises(CorruptDatabase):
            list(st.conn.execute("SELECT * FROM examples"))  # iterating a cursor, too
    finally:
        st.close()


def test_other_sqlite_errors_keep_their_type(store):
    """Only faults of the file are translated: a bad statement is our bug."""
    with pytest.raises(sqlite3.OperationalError):
        store.conn.execute("SELECT * FROM no_such_table")
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute("INSERT INTO texts (hash, body) VALUES (NULL, NULL)")


# ------------------------------------------- files that must not be initialised
def test_zero_byte_file_is_not_initialised(tmp_path):
    p = tmp_path / "distillery.db"
    p.touch()
    before = fingerprint(tmp_path)
    with pytest.raises(EmptyDatabase) as e:
        Store.open(p)
    _assert_fault(e.value, p, "is empty (0 bytes", "backup")
    assert fingerprint(tmp_path) == before  # still 0 bytes, no -wal/-shm beside it
    assert sorted(os.listdir(tmp_path)) == ["distillery.db"]


def test_a_file_it_creates_is_initialised(tmp_path):
    with Store.open(tmp_path / "new.db") as st:
        assert st.count_examples() == 0
        assert st.readonly_reason is None


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    p = tmp_path / "distillery.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE contacts (name TEXT)")
    con.commit()
    con.close()
    before = fingerprint(tmp_path)
    with pytest.raises(ForeignDatabase) as e:
        Store.open(p)
    _assert_fault(e.value, p, "not a Distillery one", "contacts")
    assert fingerprint(tmp_path) == before


def _add_future_migration(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("INSERT INTO _migrations (name, applied) VALUES ('m999_future', '2031-01-01 00:00:00')")
    con.commit()
    con.close()


@pytest.mark.parametrize("readonly", [None, True])
def test_unknown_migration_is_refused_untouched(db, readonly):
    _add_future_migration(db)
    before = fingerprint(db)  # (read-only, SQLite may leave an empty -wal and a -shm beside it)
    with pytest.raises(NewerDatabase) as e:
        Store.open(db, readonly=readonly)
    _assert_fault(e.value, db, "newer version of Distillery", "m999_future (applied 2031-01-01 00:00:00)",
                  f"the newest it knows is {schema.MIGRATIONS[-1][0]}", "Upgrade Distillery")
    assert e.value.unknown == [("m999_future", "2031-01-01 00:00:00")]
    assert fingerprint(db) == before


# ---------------------------------------------------------------- read-only
def _check_read_only(st: Store, db: Path, reason: str) -> None:
    assert st.readonly_reason is not None and reason in st.readonly_reason
    assert st.count_examples() == 200 and st.get_run("main")["name"] == "main"
    with st.snapshot():
        assert len(st.list_examples("pool")) == 200
    for write in (lambda: st.add_examples([{"question": "new?", "answer": "1"}], "pool"),
                  lambda: st.create_run("other", {}),
                  lambda: st.put_text("loose text")):
        with pytest.raises(ReadOnlyDatabase) as e:
            write()
        _assert_fault(e.value, db, "is read-only", reason, "this command writes to it", "chmod u+w")


def test_forced_read_only_reads_and_refuses_writes(db):
    before = fingerprint(db)
    with Store.open(db, readonly=True) as st:
        _check_read_only(st, db, "opened read-only")
    assert fingerprint(db) == before


def test_unwritable_file_opens_read_only(db):
    """The file alone is read-only: SQLite's -shm can still be made beside it."""
    before = fingerprint(db)
    with read_only(db):
        with Store.open(db) as st:
            _check_read_only(st, db, f"the file {db} is not writable")
        with pytest.raises(ReadOnlyDatabase):
            Store.open(db, readonly=False)  # a caller that will write is refused at once
    assert fingerprint(db) == before


def test_unwritable_folder_opens_read_only(db):
    """Folder and file read-only: no -shm can be made, so the file is read as
    immutable (everything committed is in it)."""
    before = fingerprint(db.parent)
    with read_only(db.parent):
        with Store.open(db) as st:
            _check_read_only(st, db, "not writable")
        with pytest.raises(ReadOnlyDatabase) as e:
            Store.open(db.with_name("other.db"))
        _assert_fault(e.value, db.with_name("other.db"), "would create it")
    assert fingerprint(db.parent) == before


def test_read_only_database_needing_a_migration_is_refused(db, monkeypatch):
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [("m900_extra", "CREATE TABLE extra (x INTEGER);")])
    before = fingerprint(db)
    with pytest.raises(ReadOnlyDatabase) as e:
        Store.open(db, readonly=True)
    _assert_fault(e.value, db, "must first add migration m900_extra")
    assert fingerprint(db) == before
