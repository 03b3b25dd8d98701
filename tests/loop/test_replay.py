"""Replay: a run branched from iteration K continues with changed settings.
Unchanged settings reproduce the datasets with zero teacher requests; an edited
`refine` template asks the teacher again only for the refinements."""

from __future__ import annotations

import json

from store import Store

from tests.loop.helpers import datasets, run_inprocess


def test_replay_unchanged_is_free_and_identical_then_edited_refine_asks_only_refinements(finished, capsys):
    ws, teacher_server = finished
    main = datasets(ws)
    before = teacher_server.requests

    capsys.readouterr()
    assert run_inprocess(ws, "replay", "main:0", "--name", "same", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"] == "same" and doc["parent_k"] == 0 and doc["iterations"] == [1, 2]
    assert doc["teacher_requests"] == 0
    assert teacher_server.requests == before  # counted by the server: nothing was asked
    assert datasets(ws, "same") == main

    refine = ws / "prompts" / "refine.yaml"
    refine.write_text(refine.read_text().replace("Solve the question again", "Be brief. Solve the question again"))
    n_bodies = len(teacher_server.bodies)
    assert run_inprocess(ws, "replay", "0", "--name", "edited") == 0
    new = teacher_server.bodies[n_bodies:]
    st = Store.open(ws)
    try:
        run = st.get_run("edited")
        ms = [st.get_iteration(run["id"], k)["metrics"] for k in (1, 2)]
        asked = sum(m["refinements_asked"] for m in ms)
        # a k=2 prompt equal to a k=1 prompt (same wrong output, same demonstration) is a cache hit
        fresh = sum(m["teacher_calls"] for m in ms)
        versions = {p["id"] for p in st.prompt_versions("refine")}
    finally:
        st.close()
    assert len(new) == fresh > 0 and fresh + sum(m["teacher_cached"] for m in ms) == asked
    assert all("Be brief." in json.dumps(b["messages"]) for b in new)  # only refine prompts were sent
    assert len(versions) == 2  # both template versions are recorded
    # the fake teacher's refinements do not depend on the wording: same datasets
    assert datasets(ws, "edited") == main


def test_replay_bad_target_and_bad_set_write_nothing(ws, capsys):
    assert run_inprocess(ws, "replay", "main:0") == 2  # no run yet
    assert "no run named" in capsys.readouterr().err
    assert run_inprocess(ws, "replay", "x:y") == 2
    assert run_inprocess(ws, "replay", "0", "--set", "loop.combine=sideways") == 2


def test_template_edit_is_picked_up_at_the_next_iteration_and_recorded(ws, teacher_server):
    """A running loop re-reads templates at every iteration (here: two `run`
    calls, the second continuing the run after an edit of refine.yaml)."""
    import prompts

    assert run_inprocess(ws, "run", "--iterations", "1") == 0
    refine = ws / "prompts" / "refine.yaml"
    refine.write_text(refine.read_text().replace("Solve the question again", "Think twice. Solve the question again"))
    new_version = prompts.load_template("refine", ws).version
    assert run_inprocess(ws, "run", "--iterations", "2") == 0
    st = Store.open(ws)
    try:
        run = st.get_run("main")
        keys = [r["teacher_call"] for r in st.list_rationales(run_id=run["id"], k=1)]
        calls = [st.get_teacher_call(key) for key in keys]
        assert calls and all(c["prompt_version"] == new_version for c in calls)
        assert new_version in {p["id"] for p in st.prompt_versions("refine")}
        assert st.get_iteration(run["id"], 1)["metrics"]["templates"]["refine"] == new_version
    finally:
        st.close()
