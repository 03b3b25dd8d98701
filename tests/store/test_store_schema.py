"""Migrations: a blank file reaches the documented schema, re-opening is a
no-op, and a failing migration leaves the database untouched."""

import sqlite3

import pytest

from store import Store, schema

# DESIGN §5 tables and the columns the code relies on.
EXPECTED = {
    "texts": {"hash", "body"},
    "runs": {"id", "name", "parent_run", "parent_k", "config_json", "config_hash", "status", "created"},
    "examples": {"id", "split", "question", "answer", "rationale_hash", "meta", "created"},
    "prompt_versions": {"id", "name", "body", "created"},
    "iterations": {"run_id", "k", "status", "started", "finished", "adapter_path", "adapter_sha256", "metrics", "stop_reason"},
    "iteration_steps": {"run_id", "k", "step", "status", "started", "finished", "info"},
    "predictions": {"id", "run_id", "k", "phase", "example_id", "sample", "output_hash", "answer", "correct"},
    "teacher_calls": {
        "key", "teacher", "model", "template", "prompt_version", "request", "response", "response_hash",
        "status", "error_type", "error", "attempts", "latency_s", "prompt_tokens", "completion_tokens",
        "cost_usd", "run_id", "k", "created", "updated",
    },
    "rationales": {
        "id", "example_id", "text_hash", "answer", "source", "teacher_call", "parent_id",
        "error_prediction", "accepted", "agreement", "run_id", "k", "created", "rejected_reason", "verify_call",
    },
    "verdicts": {
        "run_id", "k", "rationale_id", "accepted", "agreement", "rejected_reason", "verify_call", "created",
    },
    "dataset_entries": {"run_id", "k", "example_id", "rationale_id", "weight"},
    "example_removals": {"example_id", "reason", "created"},
    "teacher_batches": {
        "id", "batch_id", "teacher", "model", "api_base", "input_file_id", "status", "total", "completed",
        "failed", "output_file_id", "error_file_id", "run_id", "k", "created", "updated", "finished",
    },
    "teacher_batch_lines": {"batch", "key"},
    "events": {"id", "run_id", "k", "step", "kind", "message", "data", "created"},
    "_migrations": {"name", "applied"},
}


def columns(conn, table):
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def tables(conn):
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_blank_file_reaches_schema(tmp_path):
    st = Store.open(tmp_path / "distillery.db")
    assert tables(st.conn) == set(EXPECTED)
    for table, cols in EXPECTED.items():
        assert columns(st.conn, table) == cols, table
    assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    names = [r[0] for r in st.conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [n for n, _ in schema.MIGRATIONS]


def test_open_from_workspace_dir(tmp_path):
    with Store.open(tmp_path) as st:
        assert st.path == tmp_path / "distillery.db"
    assert (tmp_path / "distillery.db").exists()


def test_migrations_idempotent(tmp_path):
    Store.open(tmp_path / "d.db").close()
    st = Store.open(tmp_path / "d.db")
    assert schema.apply_migrations(st.conn) == []
    assert st.conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(schema.MIGRATIONS)


_bad = "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"


def test_failing_migration_on_blank_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [("m999_bad", _bad)])
    with pytest.raises(sqlite3.OperationalError):
        Store.open(tmp_path / "d.db")
    # not even m001 or the bookkeeping table: the file it made is removed, since
    # a blank file left behind would be refused as an emptied database next time
    assert not (tmp_path / "d.db").exists()


def test_failing_migration_keeps_previous_schema(tmp_path, monkeypatch):
    st = Store.open(tmp_path / "d.db")
    st.add_examples([{"question": "q", "answer": "1"}], "pool")
    st.close()
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [("m999_bad", _bad)])
    with pytest.raises(sqlite3.OperationalError):
        Store.open(tmp_path / "d.db")
    conn = sqlite3.connect(tmp_path / "d.db")
    assert "half_done" not in tables(conn)
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == [n for n, _ in schema.MIGRATIONS[:-1]]
    assert conn.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 1


def test_new_migration_applies_once(tmp_path, monkeypatch):
    Store.open(tmp_path / "d.db").close()

    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [("m900_extra", "CREATE TABLE extra (x INTEGER);")])
    st = Store.open(tmp_path / "d.db")
    assert "extra" in tables(st.conn)
    assert schema.apply_migrations(st.conn) == []
