"""`distillery data add|list|remove`: limits, conflicts, and removal as an event."""

from __future__ import annotations

import json

import pytest

from loop.cli.main import main
from store import Store
from tests.loop.helpers import db_rows


def run_inprocess(ws, *args) -> int:
    return main([*args, "-w", str(ws)])


def cli_json(capsys, ws, *args):
    capsys.readouterr()
    rc = run_inprocess(ws, *args, "--json")
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def _ws(tmp_path):
    from loop.config.workspace import init_workspace

    ws = tmp_path / "ws"
    init_workspace(ws, "tiny")
    return ws


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_oversized_question_is_refused_before_anything_is_written(tmp_path, capsys):
    from loop.data.importer import MAX_QUESTION_CHARS

    ws = _ws(tmp_path)
    f = _jsonl(tmp_path / "big.jsonl", [{"question": "Q?", "answer": "1"},
                                        {"question": "x" * (MAX_QUESTION_CHARS + 1), "answer": "2"}])
    before = db_rows(ws)
    assert run_inprocess(ws, "data", "add", str(f)) == 2
    err = capsys.readouterr().err
    assert f"{f}:2" in err and "question" in err and f"{MAX_QUESTION_CHARS:,}" in err and "Traceback" not in err
    assert db_rows(ws) == before


def test_same_id_for_another_question_and_a_dev_copy_are_errors(tmp_path, capsys):
    ws = _ws(tmp_path)
    pool = _jsonl(tmp_path / "pool.jsonl", [{"id": "a", "question": "What is 2+2?", "answer": "4"}])
    assert run_inprocess(ws, "data", "add", str(pool)) == 0
    other = _jsonl(tmp_path / "other.jsonl", [{"id": "a", "question": "What is 3+3?", "answer": "6"}])
    assert run_inprocess(ws, "data", "add", str(other)) == 2
    assert "already names a different example" in capsys.readouterr().err
    dev = _jsonl(tmp_path / "dev.jsonl", [{"question": "What is 2+2?", "answer": "4"}])
    assert run_inprocess(ws, "data", "add", str(dev), "--split", "dev") == 2
    err = capsys.readouterr().err
    assert "already in the pool split" in err and f"{dev}:1" in err
    # the very same line again is still "already present"
    assert run_inprocess(ws, "data", "add", str(pool)) == 0
    assert "0 added to pool, 1 already present" in capsys.readouterr().out


def test_remove_list_and_restore(tmp_path, capsys):
    ws = _ws(tmp_path)
    f = _jsonl(tmp_path / "pool.jsonl", [{"id": f"ex-{i}", "question": f"Q{i}?", "answer": str(i)} for i in range(3)])
    assert run_inprocess(ws, "data", "add", str(f)) == 0
    doc = cli_json(capsys, ws, "data", "remove", "ex-1", "--reason", "bad line")
    assert doc == {"removed": ["ex-1"], "already_removed": []}
    listed = cli_json(capsys, ws, "data", "list")
    assert [e["id"] for e in listed["examples"]] == ["ex-0", "ex-2"]
    gone = cli_json(capsys, ws, "data", "list", "--removed")["examples"]
    assert [(e["id"], e["reason"]) for e in gone] == [("ex-1", "bad line")]
    with Store.open(ws) as st:
        assert st.get_example("ex-1") is not None  # history is kept
        assert st.count_examples("pool") == 2
        assert any(e["kind"] == "data" and e["data"]["removed"] == ["ex-1"] for e in st.list_events())
    assert run_inprocess(ws, "data", "remove", "nope") == 2
    assert "no example id starts with 'nope'" in capsys.readouterr().err
    assert run_inprocess(ws, "data", "add", str(f)) == 0  # adding it again restores it
    assert "1 added to pool, 2 already present" in capsys.readouterr().out
    assert [e["id"] for e in cli_json(capsys, ws, "data", "list")["examples"]] == ["ex-0", "ex-1", "ex-2"]


@pytest.mark.parametrize("field,limit", [("answer", "MAX_ANSWER_CHARS"), ("rationale", "MAX_RATIONALE_CHARS"),
                                         ("id", "MAX_ID_CHARS")])
def test_field_limits(tmp_path, field, limit):
    import loop.data.importer as d

    row = {"question": "Q?", "answer": "1", field: "y" * (getattr(d, limit) + 1)}
    with pytest.raises(d.DataError, match=rf"f.jsonl:1: \"{field}\" has .* the limit is"):
        d.read_jsonl(_jsonl(tmp_path / "f.jsonl", [row]))


def test_a_too_long_example_is_named_and_removing_it_unblocks_the_run(ws, tmp_path, capsys):
    """Issue: one oversized example broke every later run.  Now preflight names
    it with the fix, `data remove` takes it out, and the run goes on."""
    toml = ws / "distillery.toml"
    toml.write_text(toml.read_text().replace('kind = "arithmetic"', 'kind = "jsonl"')
                    .replace("max_iterations = 3", "max_iterations = 1"))
    pool = [{"id": f"p{i}", "question": f"Tom has {i} apples and buys 2 more. How many apples?", "answer": str(i + 2),
             "rationale": f"{i} + 2 = {i + 2}.\n#### {i + 2}"} for i in range(4)]
    pool.append({"id": "long", "question": "Count the apples: " + "apple " * 2000, "answer": "2000"})
    dev = [{"id": f"d{i}", "question": f"Ann has {i} pears and buys 3 more. How many pears?", "answer": str(i + 3)}
           for i in range(2)]
    assert run_inprocess(ws, "data", "add", str(_jsonl(tmp_path / "pool.jsonl", pool))) == 0
    assert run_inprocess(ws, "data", "add", str(_jsonl(tmp_path / "dev.jsonl", dev)), "--split", "dev") == 0
    capsys.readouterr()
    assert main(["run", "-w", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "student.max_length" in err and "distillery data remove long" in err and "Traceback" not in err
    assert run_inprocess(ws, "data", "remove", "long") == 0
    assert main(["run", "-w", str(ws)]) == 0
    with Store.open(ws) as st:
        run = st.get_run("main")
        mined = {p["example_id"] for p in st.list_predictions(run["id"], 0, "eval")}
        assert "long" not in mined and {"d0", "d1"} <= mined
