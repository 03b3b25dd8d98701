"""Teacher calls made visible: per teacher and iteration in `show`, `status`
and the end-of-iteration summary, one row each in `distillery calls`, and
failed calls in `trace`.

One run of the tiny loop (2 iterations) with two teachers on the fake server,
which fails some requests on purpose: the seed prompt of one question per
teacher fails on every attempt (a failed call, no rationale), and every prompt
about another question per teacher fails its first attempt (a retry: more
requests than calls).  What the commands say is checked against what the
server saw (its own log of requests and faults) and against the stored rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3

import numpy as np
import pytest

from store import Store
from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import cli, config_toml, run_inprocess, strip_ansi, task_rows, teacher_answer

LATENCY_S = 0.01
PRICE_IN, PRICE_OUT = 1e-6, 2e-6
TEACHERS = {"fake": 64, "fake-b": 60}  # name -> max_tokens: tells their requests (and cache keys) apart
FAIL_ALWAYS = {("fake", 1), ("fake-b", 2)}  # (teacher, pool question): its seed prompt fails every attempt
FAIL_FIRST = {("fake", 4), ("fake-b", 5)}  # every prompt about it fails its first attempt, then succeeds
SEED_MARK = "Solve the following problem step by step."  # in the `rationale` (k = 0) template only
POOL = task_rows()[0]


def _teacher_of(body: dict) -> str:
    mt = body.get("max_tokens") or body.get("max_completion_tokens")
    return next(name for name, m in TEACHERS.items() if m == mt)


def _text(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def _question(text: str) -> int | None:
    return next((i for i, r in enumerate(POOL) if r["question"] in text), None)


def _config(base_url: str) -> str:
    extra = (f"backoff_initial_s = 0.01\nbackoff_max_s = 0.02\n"
             f"input_cost_per_token = {PRICE_IN}\noutput_cost_per_token = {PRICE_OUT}\n")
    toml = config_toml(base_url).replace("max_tokens = 64\nmax_retries = 2\n", "max_tokens = 64\nmax_retries = 2\n" + extra)
    second = (f'\n[[teachers]]\nname = "fake-b"\nmodel = "openai/fake"\napi_base = "{base_url}"\n'
              f"temperature = 0.0\nmax_tokens = {TEACHERS['fake-b']}\nmax_retries = 2\n" + extra)
    return toml.replace("\n[loop]\n", second + "\n[loop]\n")


def _json(ws, *args):
    """`distillery ARGS -w WS --json` in this process (any scope: no capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_inprocess(ws, *args, "--json") == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """(workspace, server log [(teacher, k, fingerprint, fault, body)], `run` stdout, `status --json`)."""
    from loop.config.workspace import init_workspace

    log: list[tuple] = []

    def fault_fn(fp, attempt, body):
        text = _text(body)
        teacher, i, k = _teacher_of(body), _question(text), 0 if SEED_MARK in text else 1
        fault = None
        if (teacher, i) in FAIL_ALWAYS and k == 0:
            fault = "500"
        elif (teacher, i) in FAIL_FIRST and attempt == 1:
            fault = "503"
        log.append((teacher, k, fp, fault, body))
        return fault

    with FakeOpenAIServer(answer=teacher_answer, fault_fn=fault_fn, latency=LATENCY_S) as srv:
        ws = tmp_path_factory.mktemp("calls") / "ws"
        init_workspace(ws, "tiny")
        (ws / "distillery.toml").write_text(_config(srv.base_url))
        r = cli("run", "-w", str(ws), "--iterations", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        status = _json(ws, "status")  # before any other run of this workspace
        yield ws, log, strip_ansi(r.stdout), status


def _server_numbers(log, k: int) -> dict:
    """Per teacher, what the server saw at iteration k: requests, answered and
    failed prompts, the tokens of its usage fields, and their price."""
    out = {}
    for name, max_tokens in TEACHERS.items():
        mine = [(fp, fault, body) for t, kk, fp, fault, body in log if t == name and kk == k]
        ok = [body for _, fault, body in mine if fault is None]
        fps = {fp for fp, _, _ in mine}
        answered = {fp for fp, fault, _ in mine if fault is None}
        pt = sum(len(m["content"].split()) for b in ok for m in b["messages"])
        ct = sum(min(len(teacher_answer(b["messages"]).split()), max_tokens) for b in ok)
        out[name] = {"requests": len(mine), "ok": len(answered), "failed": len(fps - answered),
                     "prompt_tokens": pt, "completion_tokens": ct, "cost_usd": pt * PRICE_IN + ct * PRICE_OUT}
    return out


def _rows(ws, where: str = "", args=()) -> list[dict]:
    """The stored teacher_calls rows of run main, read with plain SQL."""
    con = sqlite3.connect(ws / "distillery.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(
            "SELECT c.* FROM teacher_calls c JOIN runs r ON r.id = c.run_id WHERE r.name = 'main'" + where, args)]
    finally:
        con.close()


def _row_numbers(rows: list[dict]) -> dict:
    out = {}
    for name in TEACHERS:
        mine = [r for r in rows if r["teacher"] == name]
        lat = [r["latency_s"] for r in mine if r["status"] == "ok"]
        out[name] = {"requests": sum(r["attempts"] for r in mine), "ok": len(lat),
                     "failed": sum(r["status"] == "error" for r in mine),
                     "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in mine),
                     "completion_tokens": sum(r["completion_tokens"] or 0 for r in mine),
                     "cost_usd": sum(r["cost_usd"] for r in mine),
                     "latency_p50_s": float(np.percentile(lat, 50)), "latency_p95_s": float(np.percentile(lat, 95))}
    return out


def _same(got: dict, want: dict) -> None:
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key


def test_show_gives_each_teachers_numbers_as_the_server_and_the_rows_have_them(faulty):
    ws, log, _, _ = faulty
    for k in (0, 1):
        tc = _json(ws, "show", str(k))["teacher_calls"]
        server, rows = _server_numbers(log, k), _row_numbers(_rows(ws, " AND c.k = ?", (k,)))
        assert set(tc["teachers"]) == set(TEACHERS)
        for name, s in tc["teachers"].items():
            _same(s, server[name])
            _same(s, rows[name])
            assert s["cached"] == 0 and s["calls"] == s["ok"] + s["failed"]
            assert LATENCY_S <= s["latency_p50_s"] <= s["latency_p95_s"]
        assert tc["requests"] == sum(s["requests"] for s in server.values())
        assert tc["count"] == sum(s["ok"] + s["failed"] for s in server.values())
    # the faults took effect as planned: a failure per teacher at k = 0, retries in both iterations
    k0, k1 = _server_numbers(log, 0), _server_numbers(log, 1)
    assert all(k0[t]["failed"] == 1 for t in TEACHERS)
    assert all(k0[t]["requests"] > k0[t]["ok"] + 3 * k0[t]["failed"] for t in TEACHERS)  # 3 attempts per failure + a retry
    assert all(k1[t]["failed"] == 0 and k1[t]["ok"] > 0 for t in TEACHERS)


def test_status_has_the_latest_iteration_and_the_whole_run(faulty):
    ws, log, _, status = faulty
    tc = status["teacher_calls"]
    assert status["run"] == "main" and tc["k"] == 1
    assert tc["iteration"] == _json(ws, "show", "1")["teacher_calls"]["teachers"]
    k0, k1 = _server_numbers(log, 0), _server_numbers(log, 1)
    rows = _row_numbers(_rows(ws))
    for name, s in tc["run"].items():
        _same(s, {key: k0[name][key] + k1[name][key] for key in k0[name]})
        _same(s, rows[name])  # latency percentiles over every answered call of the run


def test_the_iteration_summary_has_a_line_per_teacher(faulty):
    ws, _, out, _ = faulty
    for k in (0, 1):
        block = out.split(f"\niteration {k}")[1].split("\nstop ")[0].split("\nresult ")[0]
        for name, s in _json(ws, "show", str(k))["teacher_calls"]["teachers"].items():
            line = (rf"^ +{re.escape(name)} +{s['calls']} calls \({s['ok']} new, {s['cached']} cached, "
                    rf"{s['failed']} failed\), {s['requests']} requests;")
            assert re.search(line, block, re.M), block


def test_calls_lists_the_rows_and_filters_them(faulty):
    ws, log, _, _ = faulty
    cols = ("key", "teacher", "model", "status", "error_type", "attempts", "prompt_tokens", "completion_tokens",
            "latency_s", "cost_usd")
    for k in (0, 1):
        doc = _json(ws, "calls", f"main:{k}")
        stored = sorted(_rows(ws, " AND c.k = ?", (k,)), key=lambda r: r["key"])
        assert [{c: r[c] for c in cols} for r in sorted(doc["calls"], key=lambda r: r["key"])] == \
               [{c: r[c] for c in cols} for r in stored]
        assert doc["teachers"] == _json(ws, "show", str(k))["teacher_calls"]["teachers"]

    failed = _json(ws, "calls", "0", "--status", "failed")["calls"]
    assert sorted(r["key"] for r in failed) == sorted(r["key"] for r in _rows(ws, " AND c.status = 'error'"))
    st = Store.open(ws)
    try:  # exactly the planned ones: the seed prompt of each FAIL_ALWAYS question, by its teacher
        got = {(r["teacher"], _question(_text(st.get_teacher_call(r["key"])["request"]))) for r in failed}
    finally:
        st.close()
    assert got == FAIL_ALWAYS
    assert all(r["error_type"] == "TeacherUnavailable" and r["attempts"] == 3 for r in failed)
    assert _json(ws, "calls", "1", "--status", "failed")["calls"] == []

    only_b = _json(ws, "calls", "0", "--teacher", "fake-b")
    assert {r["teacher"] for r in only_b["calls"]} == {"fake-b"} and set(only_b["teachers"]) == {"fake-b"}
    ok = _json(ws, "calls", "0", "--status", "ok", "--teacher", "fake")["calls"]
    assert ok and all(r["status"] == "ok" and r["teacher"] == "fake" for r in ok)


def test_calls_refuses_an_unknown_teacher_or_status(faulty, capsys):
    ws = faulty[0]
    assert run_inprocess(ws, "calls", "0", "--teacher", "nobody") == 2
    assert "no teacher named 'nobody'" in capsys.readouterr().err
    assert run_inprocess(ws, "calls", "0", "--status", "cached") == 2
    assert "--status ok or --status failed" in capsys.readouterr().err


def test_calls_prints_a_table(faulty, capsys):
    ws = faulty[0]
    capsys.readouterr()
    assert run_inprocess(ws, "calls", "0", "--status", "failed") == 0
    out = capsys.readouterr().out
    assert "teacher calls at main:0 (2)" in out and "Unavailable" in out and "server error 500" in out
    assert "fake-b at main:0:" in out


def test_trace_shows_the_failed_call_of_an_example(faulty, capsys):
    ws = faulty[0]
    st = Store.open(ws)
    try:
        eid = st.examples_by_question([POOL[2]["question"]])[POOL[2]["question"]]["id"]
    finally:
        st.close()
    doc = _json(ws, "trace", eid)
    failed = [c for c in doc["teacher_calls"] if c["status"] == "error"]
    assert [(c["teacher"], c["template"], c["k"]) for c in failed] == [("fake-b", "rationale", 0)]
    assert not any(r["teacher_call"] == failed[0]["key"] for r in doc["rationales"])  # no rationale refers to it
    capsys.readouterr()
    assert run_inprocess(ws, "trace", eid) == 0
    out = capsys.readouterr().out
    assert failed[0]["key"][:12] in out and "server error 500" in out


def test_a_new_run_answers_from_the_cache_and_counts_it(ws, teacher_server):
    """A second run asks iteration 0's prompts again, the judge's included:
    every answer comes from the cache (no request, no new row) and is counted
    as cached, for the teacher that wrote it or judged."""
    toml = ws / "distillery.toml"
    toml.write_text(toml.read_text() + '\n[verify]\nteacher = "fake"\n')
    assert run_inprocess(ws, "run", "--iterations", "1") == 0
    sent = teacher_server.requests
    toml.write_text(toml.read_text().replace('run_name = "main"', 'run_name = "second"'))
    assert run_inprocess(ws, "run", "--iterations", "1") == 0
    assert teacher_server.requests == sent  # the server saw nothing
    first = _json(ws, "show", "main:0")["teacher_calls"]["teachers"]["fake"]
    doc = _json(ws, "show", "second:0")
    judge = next(d["info"]["judge"] for d in doc["steps"] if d["step"] == "verify")
    s = doc["teacher_calls"]["teachers"]["fake"]
    assert judge["cached"] > 0
    assert s["cached"] == s["calls"] == first["ok"] == doc["metrics"]["teacher_cached"] + judge["cached"]
    assert s["requests"] == s["ok"] == s["failed"] == s["prompt_tokens"] == 0 and s["latency_p50_s"] is None
    assert _json(ws, "calls", "second:0")["calls"] == []
    assert _json(ws, "status")["teacher_calls"]["run"]["fake"] == s
