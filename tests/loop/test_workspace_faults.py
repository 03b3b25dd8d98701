"""Database and workspace faults through the CLI: every command gives an exit
code, a message naming the path and the fix, no traceback, and writes nothing.

- read-only workspace: the inspection commands work; the commands that write
  say why they cannot (exit 2);
- damaged database (garbage, truncated, a bad page found later): exit 1 with
  the `.recover` recipe;
- empty (0 bytes), newer (an unknown migration) database: exit 2;
- missing database: the advice is true, and following it loses nothing
  (`init --force` backs up what it replaces).

Read-only is real (tests/store/test_store_faults.py: read_only; as root,
chattr +i), or the test is skipped."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from loop.cli.main import main
from loop.config.presets import preset_toml
from loop.config.workspace import init_workspace, open_store
from store import ReadOnlyDatabase
from tests.loop.helpers import cli
from tests.store.test_store_faults import fingerprint, read_only


def _main(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out + err


def _assert_says(text: str, *fragments) -> None:
    assert "Traceback" not in text, text
    for f in fragments:
        assert str(f) in text, text


@pytest.fixture
def tiny(tmp_path) -> Path:
    ws = tmp_path / "ws"
    init_workspace(ws, "tiny")
    return ws


@pytest.fixture
def done_ws(finished, tmp_path) -> Path:
    """A copy of the session's finished workspace (run `main`, 3 iterations)."""
    ws = tmp_path / "done"
    shutil.copytree(finished[0], ws)
    return ws


def _example_id(ws: Path) -> str:
    con = sqlite3.connect(ws / "distillery.db")
    try:
        return con.execute("SELECT id FROM examples WHERE split = 'pool' ORDER BY id LIMIT 1").fetchone()[0]
    finally:
        con.close()


def _jsonl(tmp_path: Path) -> Path:
    p = tmp_path / "new.jsonl"
    p.write_text('{"question": "What is 40 + 2?", "answer": "42"}\n')
    return p


# -------------------------------------------------------------- read-only
INSPECT = {
    "runs": ["runs"],
    "runs_json": ["runs", "--json"],
    "iterations": ["iterations"],
    "show": ["show", "1"],
    "show_best_json": ["show", "best", "--json"],
    "status": ["status"],
    "status_json": ["status", "--json"],
    "diff": ["diff", "0", "1"],
    "trace": ["trace", "{eid}"],
    "export_stdout": ["export", "best"],
    "export_file": ["export", "0", "-o", "{out}/export.jsonl"],
    "report": ["report", "-o", "{out}/report.html"],
    "prompts_list": ["prompts", "list"],
    "prompts_show": ["prompts", "show", "refine"],
    "prompts_history": ["prompts", "history", "rationale"],
    "prompts_diff": ["prompts", "diff", "rationale"],
}


@pytest.mark.parametrize("case", sorted(INSPECT))
def test_inspection_works_on_a_read_only_workspace(done_ws, tmp_path, capsys, case):
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(eid=_example_id(done_ws), out=out) for a in INSPECT[case]]
    before = fingerprint(done_ws)
    with read_only(done_ws):
        rc, text = _main(capsys, *args, "-w", done_ws)
    assert rc == 0, text
    _assert_says(text)
    assert "read-only" not in text
    assert fingerprint(done_ws) == before


# (args, what the message must name besides "writable")
WRITES = {
    "data_add": (["data", "add", "{jsonl}"], "{ws}/distillery.db is read-only"),
    "data_remove": (["data", "remove", "{eid}"], "{ws}/distillery.db is read-only"),
    "replay": (["replay", "1", "--set", "loop.combine=accumulate"], "this command writes to the workspace {ws}"),
    "init_force": (["init", "{ws}", "--force", "--preset", "tiny"], "{ws}/distillery.db is read-only"),
}


@pytest.mark.parametrize("case", sorted(WRITES))
def test_writes_are_refused_on_a_read_only_workspace(done_ws, tmp_path, capsys, case):
    args, says = WRITES[case]
    fill = dict(ws=done_ws, jsonl=_jsonl(tmp_path), eid=_example_id(done_ws))
    before = fingerprint(done_ws)
    with read_only(done_ws):
        rc, text = _main(capsys, *[a.format(**fill) for a in args], "-w", done_ws)
    assert rc == 2, text
    _assert_says(text, says.format(**fill), "writable", "commands that only read")
    assert fingerprint(done_ws) == before


def test_run_on_a_read_only_workspace_says_why(done_ws):
    """The real CLI: `run` refuses at its first write (the run lock) with the
    workspace and the fix, and the inspection advice."""
    before = fingerprint(done_ws)
    with read_only(done_ws):
        p = cli("run", "-w", str(done_ws))
    assert p.returncode == 2, p.stdout + p.stderr
    _assert_says(p.stderr, f"cannot write {done_ws}/.distillery", f"this command writes to the workspace {done_ws}",
                 "writable", "status")
    assert fingerprint(done_ws) == before


def test_read_only_database_file_in_a_writable_workspace(tiny, tmp_path, capsys):
    """Only distillery.db is read-only: reading works, `data add` names the
    file and the reason, and the file is untouched."""
    db = tiny / "distillery.db"
    before = fingerprint(db)
    with read_only(db):
        rc, text = _main(capsys, "runs", "-w", tiny)
        assert rc == 0, text
        rc, text = _main(capsys, "data", "add", _jsonl(tmp_path), "-w", tiny)
    assert rc == 2, text
    _assert_says(text, f"{db} is read-only (the file {db} is not writable)", "chmod u+w")
    assert fingerprint(db) == before


def test_open_store_for_writing_refuses_at_once(tiny):
    """`open_store(ws, write=True)`: a command that will write is refused
    before it does any work (loading a model, say), not at its first write."""
    db = tiny / "distillery.db"
    before = fingerprint(db)
    with read_only(db):
        with pytest.raises(ReadOnlyDatabase) as e:
            open_store(tiny, write=True)
        _assert_says(str(e.value), f"{db} is read-only (the file {db} is not writable)", "this command writes")
        open_store(tiny).close()  # reading is fine
    assert fingerprint(db) == before


# ------------------------------------------------------------------ damaged
def _garbage(db: Path) -> None:
    db.write_bytes(b"\x00not sqlite at all\n" * 512)


def _truncate(db: Path) -> None:
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)


DAMAGE = {"garbage": (_garbage, "file is not a database"), "truncated": (_truncate, "database disk image is malformed")}
ON_DAMAGE = {
    "runs": ["runs"],
    "status": ["status"],
    "show": ["show", "0"],
    "data_add": ["data", "add", "{jsonl}"],
    "prompts_history": ["prompts", "history", "rationale"],
    "init_force": ["init", "{ws}", "--force", "--preset", "tiny"],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("case", sorted(ON_DAMAGE))
def test_damaged_database(tiny, tmp_path, capsys, damage, case):
    db = tiny / "distillery.db"
    (tiny / "distillery.toml").write_text((tiny / "distillery.toml").read_text() + "# edited\n")
    make, what = DAMAGE[damage]
    make(db)
    before = fingerprint(tiny)
    args = [a.format(ws=tiny, jsonl=_jsonl(tmp_path)) for a in ON_DAMAGE[case]]
    rc, text = _main(capsys, *args, "-w", tiny)
    assert rc == 1, text
    _assert_says(text, f"{db} is damaged ({what})", f'sqlite3 {db} ".recover" | sqlite3 {tiny}/fixed.db', "backup")
    assert fingerprint(tiny) == before  # init --force did not replace the config either


def test_run_on_a_damaged_database(tiny):
    db = tiny / "distillery.db"
    _truncate(db)
    before = fingerprint(db, tiny / "distillery.toml", tiny / "prompts")
    p = cli("run", "-w", str(tiny))
    assert p.returncode == 1, p.stdout + p.stderr
    _assert_says(p.stderr, f"{db} is damaged", '".recover"', "backup")
    assert fingerprint(db, tiny / "distillery.toml", tiny / "prompts") == before


def test_damage_found_after_opening(done_ws, capsys):
    """A bad page in the predictions table: the database opens, `runs` works,
    and `show` (which reads predictions) fails cleanly, exit 1."""
    db = done_ws / "distillery.db"
    con = sqlite3.connect(db)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'predictions'").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xff" * size)
    before = fingerprint(db)
    rc, text = _main(capsys, "runs", "-w", done_ws)
    assert rc == 0, text
    rc, text = _main(capsys, "show", "1", "-w", done_ws)
    assert rc == 1, text
    _assert_says(text, f"{db} is damaged (database disk image is malformed)", '".recover"')
    assert fingerprint(db) == before


# ------------------------------------------------------- empty, newer, missing
ON_OPEN = {
    "runs": ["runs"],
    "status": ["status"],
    "iterations": ["iterations"],
    "data_add": ["data", "add", "{jsonl}"],
    "export": ["export", "0"],
}


@pytest.mark.parametrize("case", sorted(ON_OPEN))
def test_empty_database_is_refused(tiny, tmp_path, capsys, case):
    db = tiny / "distillery.db"
    db.write_bytes(b"")
    before = fingerprint(tiny)
    rc, text = _main(capsys, *[a.format(jsonl=_jsonl(tmp_path)) for a in ON_OPEN[case]], "-w", tiny)
    assert rc == 2, text
    _assert_says(text, f"{db} is empty (0 bytes", "backup", f"`distillery init {tiny} --force --preset tiny`",
                 "distillery.db.bak-")
    assert fingerprint(tiny) == before


@pytest.mark.parametrize("case", sorted(ON_OPEN))
def test_newer_database_is_refused(tiny, tmp_path, capsys, case):
    db = tiny / "distillery.db"
    con = sqlite3.connect(db)
    con.execute("INSERT INTO _migrations (name, applied) VALUES ('m999_future', '2031-01-01 00:00:00')")
    con.commit()
    con.close()
    before = fingerprint(tiny)
    rc, text = _main(capsys, *[a.format(jsonl=_jsonl(tmp_path)) for a in ON_OPEN[case]], "-w", tiny)
    assert rc == 2, text
    _assert_says(text, f"{db} was written by a newer version of Distillery", "m999_future", "Upgrade Distillery")
    assert fingerprint(tiny) == before


def test_run_on_a_newer_database(tiny):
    db = tiny / "distillery.db"
    con = sqlite3.connect(db)
    con.execute("INSERT INTO _migrations (name, applied) VALUES ('m999_future', '2031-01-01 00:00:00')")
    con.commit()
    con.close()
    before = fingerprint(db)
    p = cli("run", "-w", str(tiny))
    assert p.returncode == 2, p.stdout + p.stderr
    _assert_says(p.stderr, "newer version of Distillery", "m999_future", "pip install -U distillery")
    assert fingerprint(db) == before


def test_following_the_empty_database_advice(tiny, capsys):
    """`init --force` moves the empty file aside (named) and creates a new one."""
    db = tiny / "distillery.db"
    db.write_bytes(b"")
    rc, text = _main(capsys, "runs", "-w", tiny)
    assert rc == 2
    advised = re.search(r"`distillery (init [^`]+)`", text).group(1).split()
    rc, text = _main(capsys, *advised)
    assert rc == 0, text
    backups = sorted(tiny.glob("distillery.db.bak-*"))
    assert len(backups) == 1 and backups[0].stat().st_size == 0
    _assert_says(text, f"backup    {backups[0]} (the empty database it replaced)")
    rc, text = _main(capsys, "runs", "-w", tiny)
    assert rc == 0, text


def test_missing_database_advice_is_true(tiny, capsys):
    """The advice says what `init --force` does; doing it loses nothing: the
    edited config is kept as a backup, edited templates stay."""
    cfg = tiny / "distillery.toml"
    edited = cfg.read_text() + "# my edit: keep me\n"
    cfg.write_text(edited)
    (tiny / "prompts" / "refine.yaml").write_text((tiny / "prompts" / "refine.yaml").read_text() + "# mine\n")
    refine = (tiny / "prompts" / "refine.yaml").read_bytes()
    (tiny / "distillery.db").unlink()
    p = cli("run", "-w", str(tiny))
    assert p.returncode == 2, p.stdout + p.stderr
    _assert_says(p.stderr, f"{tiny}/distillery.db is missing", "backup",
                 "rewrites distillery.toml from the tiny preset, first copying yours (when it differs) to "
                 "distillery.toml.bak-<date>-<time>",
                 "keeps prompts/")
    assert "keeps distillery.toml" not in p.stderr
    advised = re.search(r"`distillery (init [^`]+)`", p.stderr).group(1).split()
    rc, text = _main(capsys, *advised)
    assert rc == 0, text
    backups = sorted(tiny.glob("distillery.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == edited
    _assert_says(text, f"backup    {backups[0]} (the config it replaced)")
    assert cfg.read_text() == preset_toml("tiny")
    assert (tiny / "prompts" / "refine.yaml").read_bytes() == refine
    rc, text = _main(capsys, "runs", "-w", tiny)
    assert rc == 0, text


def test_init_force_backs_up_the_config(tiny, capsys):
    cfg = tiny / "distillery.toml"
    cfg.write_text(cfg.read_text().replace('run_name = "main"', 'run_name = "mine"'))
    edited = cfg.read_bytes()
    rc, text = _main(capsys, "init", tiny, "--force", "--preset", "demo", "--json")
    assert rc == 0, text
    doc = json.loads(text)
    [b] = doc["backups"]
    assert b["file"] == str(cfg) and b["why"] == "replaced"
    assert re.fullmatch(r"distillery\.toml\.bak-\d{8}-\d{6}", Path(b["backup"]).name)
    assert Path(b["backup"]).read_bytes() == edited
    assert doc["kept_database"] is True
    # the same preset again replaces nothing, so there is nothing to back up
    rc, text = _main(capsys, "init", tiny, "--force", "--preset", "demo", "--json")
    assert rc == 0 and json.loads(text)["backups"] == []
