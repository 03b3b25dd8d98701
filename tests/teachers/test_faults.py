"""A large batch under a 30% fault rate: nothing lost, nothing paid twice, and a
second run of the same batch makes zero HTTP requests."""

from __future__ import annotations

import asyncio

import pytest

from teachers import TeacherPool, TeacherRequest
from tests.fakeserver import FAULT_KINDS


def batch(n: int) -> list[TeacherRequest]:
    return [TeacherRequest("fake", [{"role": "user", "content": f"Question {i}: what is {i} + 1?"}],
                           template="rationale", tag=i) for i in range(n)]


def test_200_requests_under_30_percent_faults(fake_server, store, make_cfg):
    fake_server.fault_rate = 0.3
    fake_server.fault_kinds = FAULT_KINDS  # 429, 500, 503, hang, reset, malformed, empty, no final answer
    fake_server.retry_after_s = 0.01
    fake_server.hang_s = 3.0
    fake_server.seed = 7
    fake_server.answer = lambda msgs: "Add one.\n#### " + str(int(msgs[-1]["content"].split()[1].rstrip(":")) + 1)
    cfg = make_cfg(fake_server, max_retries=6, timeout_s=2.0, max_concurrency=16)
    reqs = batch(200)

    results = asyncio.run(TeacherPool([cfg], store).run(reqs))
    assert [r.tag for r in results] == list(range(200))  # none lost, order kept
    assert {r.status for r in results} <= {"ok", "error"}
    ok = [r for r in results if r.status == "ok"]
    assert sum(fake_server.faults.values()) > 50  # the faults really happened
    assert set(fake_server.faults) == set(FAULT_KINDS)
    # every request is in the store, as a success or a recorded failure
    db = dict(store.conn.execute("SELECT status, COUNT(*) FROM teacher_calls GROUP BY status").fetchall())
    assert db.get("ok", 0) == len(ok) and db.get("ok", 0) + db.get("error", 0) == 200
    # none paid twice: each request got at most one billed completion
    assert max(fake_server.billed.values()) == 1
    assert fake_server.completions == len(ok) == len({r.key for r in ok})
    # every HTTP attempt the server saw is accounted for in the store (the client
    # may count a few more: attempts that timed out before the busy server read them)
    attempts = store.conn.execute("SELECT SUM(attempts) FROM teacher_calls").fetchone()[0]
    assert attempts >= fake_server.requests
    assert len(ok) == 200  # with 6 retries every request of this seeded batch succeeds

    before = fake_server.requests
    again = asyncio.run(TeacherPool([cfg], store).run(reqs))
    assert fake_server.requests == before  # ZERO HTTP requests on replay
    assert all(r.cached and r.status == "ok" for r in again)
    assert [r.text for r in again] == [r.text for r in results]


def test_recorded_failures_are_retried_on_the_next_run_only(fake_server, store, make_cfg):
    # Requests 0-4 fail on their first 3 attempts (more than max_retries=1 allows).
    poisoned = set()

    def fault_fn(fp, attempt, body):
        if "Question 0:" in body["messages"][-1]["content"] or any(
                f"Question {i}:" in body["messages"][-1]["content"] for i in range(1, 5)):
            poisoned.add(fp)
            return "503" if attempt <= 2 else None
        return None

    fake_server.fault_fn = fault_fn
    cfg = make_cfg(fake_server, max_retries=1)
    reqs = batch(20)
    first = asyncio.run(TeacherPool([cfg], store).run(reqs))
    assert [r.status for r in first] == ["error"] * 5 + ["ok"] * 15
    assert fake_server.requests == 5 * 2 + 15
    second = asyncio.run(TeacherPool([cfg], store).run(reqs))
    assert all(r.status == "ok" for r in second)
    assert [r.cached for r in second] == [False] * 5 + [True] * 15
    assert fake_server.requests == 25 + 5  # only the failed ones were requested again
    assert max(fake_server.billed.values()) == 1


def test_a_teacher_whose_every_call_failed_stops_the_batch_with_the_cause(fake_server, store, make_cfg):
    # One teacher always answers 503, the other is fine: going on would be an iteration
    # that silently learned nothing from the first (the run used to exit 0, 0 rationales).
    from teachers import TeacherCallsFailed
    from tests.fakeserver import FakeOpenAIServer

    with FakeOpenAIServer(fault_fn=lambda fp, attempt, body: "503") as down:
        cfgs = [make_cfg(down, name="down", max_retries=1), make_cfg(fake_server, name="up")]
        reqs = [TeacherRequest(t, [{"role": "user", "content": f"Question {i}: what is {i} + 1? ({t})"}], tag=(t, i))
                for t in ("down", "up") for i in range(3)]
        with pytest.raises(TeacherCallsFailed) as ei:
            asyncio.run(TeacherPool(cfgs, store).run(reqs))
    e = ei.value
    assert e.teacher == "down"
    msg = str(e)
    assert msg.startswith("teacher 'down': all 3 of its calls failed (3 TeacherUnavailable)") and "503" in msg
    assert "run again" in msg and "not cached" in msg
    assert [r.status for r in e.results] == ["error"] * 3 + ["ok"] * 3  # the other teacher's answers are kept
    assert store.conn.execute("SELECT COUNT(*) FROM teacher_calls WHERE status = 'error'").fetchone()[0] == 3
    assert down.requests == 3 * 2  # transient: retried (max_retries=1) before giving up
