"""TeacherPool.run(should_stop=, on_progress=): a stop request cancels what is
still waiting or in flight and keeps what finished; progress is reported as
requests complete, not at the end."""

from __future__ import annotations

import asyncio
import time

from teachers import TeacherPool, TeacherRequest


def reqs(n: int) -> list[TeacherRequest]:
    return [TeacherRequest("fake", [{"role": "user", "content": f"What is {i} + 1?"}], tag=i) for i in range(n)]


def test_progress_is_reported_per_completed_request(fake_server, store, make_cfg):
    seen = []
    pool = TeacherPool([make_cfg(fake_server, max_concurrency=2)], store)
    results = asyncio.run(pool.run(reqs(6), on_progress=lambda done, total: seen.append((done, total))))
    assert [r.status for r in results] == ["ok"] * 6
    assert seen == [(i, 6) for i in range(1, 7)]


def test_stop_cancels_slow_requests_and_keeps_finished_ones(fake_server, store, make_cfg):
    pool = TeacherPool([make_cfg(fake_server, timeout_s=120.0, max_concurrency=4)], store)
    asyncio.run(pool.run(reqs(2)))  # two answers already cached
    fake_server.latency = 60.0  # every new request would take a minute
    t0 = time.monotonic()
    asked = time.monotonic() + 0.5
    results = asyncio.run(pool.run(reqs(6), should_stop=lambda: time.monotonic() > asked))
    assert time.monotonic() - t0 < 5
    assert [r.status for r in results[:2]] == ["ok", "ok"] and all(r.cached for r in results[:2])
    assert [r.status for r in results[2:]] == ["skipped"] * 4
    assert pool.budget.reserved_usd == 0
    n = store.conn.execute("SELECT COUNT(*) FROM teacher_calls WHERE status = 'ok'").fetchone()[0]
    assert n == 2  # nothing of the cancelled calls was stored as an answer
