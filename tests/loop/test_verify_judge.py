"""The optional judge ([verify] teacher): a second teacher that only checks the
rationales which passed the structural checks, through the verify template;
its calls are recorded and cached like any teacher call, and its FAIL
verdicts are stored as `judge_rejected` with the judge's call.  Also: rows
that cannot fit student.max_length are an error at preflight."""

from __future__ import annotations

import json

from store import Store

from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import db_rows, make_workspace, run_inprocess, task_rows, teacher_answer


def _judging_teacher(messages):
    """The scripted teacher, and as judge: FAIL for the first two pool questions."""
    text = "\n".join(m["content"] for m in messages)
    if "Solution to check:" in text:
        pool, _ = task_rows()
        if any(row["question"] in text for row in pool[:2]):
            return "VERDICT: FAIL\nREASON: it skips the step that matters."
        return "**VERDICT:** PASS\nREASON: derives the answer from the question."
    return teacher_answer(messages)


def test_judge_rejections_are_recorded_cached_and_explained(tmp_path, capsys):
    with FakeOpenAIServer(answer=_judging_teacher, models=("fake", "judge")) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url, max_iterations=2)
        toml = (ws / "distillery.toml").read_text()
        toml += f"""
[[teachers]]
name = "judge"
model = "openai/judge"
api_base = "{srv.base_url}"
temperature = 0.0
max_tokens = 64
teach = false

[verify]
teacher = "judge"
"""
        (ws / "distillery.toml").write_text(toml)
        assert run_inprocess(ws, "run") == 0
        asked_first = srv.requests
        st = Store.open(ws)
        try:
            run = st.get_run("main")
            m0 = st.get_iteration(run["id"], 0)["metrics"]
            rats = st.list_rationales(run_id=run["id"], k=0)
            calls = st.conn.execute(
                "SELECT teacher, template, status FROM teacher_calls WHERE template = 'verify'").fetchall()
        finally:
            st.close()
        pool = task_rows()[0]
        first_two = {row["question"] for row in pool[:2]}
        # structural checks first (the careless odd seeds), then the judge on the 6 that passed them
        assert calls[:6] == [("judge", "verify", "ok")] * 6 and all(c == calls[0] for c in calls)
        assert m0["rejected"] == {"no_computation": 6, "judge_rejected": 1}  # pool[0] passed structure; pool[1] did not
        assert m0["accepted"] == 5
        judged = [r for r in rats if r["rejected_reason"] == "judge_rejected"]
        assert len(judged) == 1 and judged[0]["verify_call"] is not None
        st = Store.open(ws)
        try:
            assert st.get_example(judged[0]["example_id"])["question"] in first_two
        finally:
            st.close()
        assert all(r["source"] == "fake" for r in rats)  # teach = false: the judge wrote no rationale

        capsys.readouterr()
        assert run_inprocess(ws, "trace", judged[0]["example_id"], "--json") == 0
        trace = json.loads(capsys.readouterr().out)
        assert any(c["template"] == "verify" for c in trace["teacher_calls"])
        assert run_inprocess(ws, "show", "0", "--json") == 0
        show = json.loads(capsys.readouterr().out)
        assert show["rejections"] == {"no_computation": 6, "judge_rejected": 1}
        verify_info = next(s["info"] for s in show["steps"] if s["step"] == "verify")
        assert list(verify_info["judge_reasons"].values()) == ["it skips the step that matters."]

        # a replay with the same settings asks neither the teacher nor the judge again
        assert run_inprocess(ws, "replay", "0", "--name", "again", "--iterations", "2") == 0
        assert srv.requests == asked_first


def test_judge_must_name_an_api_teacher(tmp_path, capsys):
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url)
        (ws / "distillery.toml").write_text((ws / "distillery.toml").read_text() + '\n[verify]\nteacher = "nobody"\n')
        before = db_rows(ws)
        capsys.readouterr()
        assert run_inprocess(ws, "run") == 2
        err = capsys.readouterr().err
    assert "verify.teacher = 'nobody'" in err and "[[teachers]]" in err and "Traceback" not in err
    assert db_rows(ws) == before


def test_rows_that_cannot_fit_max_length_are_a_preflight_error(tmp_path, capsys):
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url)
        toml = (ws / "distillery.toml").read_text().replace("max_length = 512", "max_length = 128")
        (ws / "distillery.toml").write_text(toml)
        before = db_rows(ws)
        capsys.readouterr()
        assert run_inprocess(ws, "run") == 2
        err = capsys.readouterr().err
    assert "student.max_length = 128" in err and "raise student.max_length to at least" in err
    assert "Traceback" not in err and db_rows(ws) == before
    assert not (ws / "runs").exists()
