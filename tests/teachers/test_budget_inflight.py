"""The budget reserves a call's worst case on start and settles its actual cost
on finish; calls in flight make others wait, never stop the batch.  Refused
is only a call that settled spend alone leaves no room for."""

from __future__ import annotations

import asyncio
import threading

import pytest

from teachers import BudgetExceeded, TeacherPool, TeacherRequest
from teachers.budget import Budget, estimate_cost


def reqs(n: int) -> list[TeacherRequest]:
    return [TeacherRequest("fake", [{"role": "user", "content": f"What is {i} + 1?"}], tag=i) for i in range(n)]


def test_reservations_in_flight_do_not_stop_calls_that_fit(fake_server, store, make_cfg):
    # The case: each call reserves ~$0.0012 (max_tokens at the output price) but
    # costs ~$0.0001 (a short answer).  A $0.003 cap holds two reservations at a time;
    # the third call used to fail with "spent $0 (+$0.0024 in flight)" and stop the batch.
    fake_server.latency = 0.05  # calls overlap
    cfg = make_cfg(fake_server, max_tokens=100, input_cost_per_token=1e-6, output_cost_per_token=1e-5)
    batch = reqs(8)
    assert estimate_cost(cfg, batch[0].messages, (1e-6, 1e-5)) > 0.001
    pool = TeacherPool([cfg], store, budget_usd=0.003)
    results = asyncio.run(pool.run(batch))
    assert [r.status for r in results] == ["ok"] * 8
    assert 0 < pool.budget.spent_usd <= 0.003
    assert pool.budget.reserved_usd == pytest.approx(0.0)
    assert fake_server.peak_in_flight >= 2  # still concurrent: waiting is only for what does not fit
    spent = store.conn.execute("SELECT SUM(cost_usd) FROM teacher_calls").fetchone()[0]
    assert spent == pytest.approx(pool.budget.spent_usd)


def test_refusal_names_settled_in_flight_estimate_cap_and_the_fix(fake_server, store, make_cfg):
    # actual cost = estimate = $0.01 (10 completion tokens x $0.001): two calls fit in $0.025
    fake_server.completion_tokens = lambda body, text: body["max_tokens"]
    fake_server.latency = 0.02
    cfg = make_cfg(fake_server, max_tokens=10, input_cost_per_token=0.0, output_cost_per_token=0.001)
    pool = TeacherPool([cfg], store, budget_usd=0.025)
    with pytest.raises(BudgetExceeded) as ei:
        asyncio.run(pool.run(reqs(5)))
    msg = str(ei.value)
    for part in ("budget_usd 0.025", "settled $0.020000", "in flight $0.000000", "estimate $0.010000",
                 "cap $0.025", "raise loop.budget_usd"):
        assert part in msg, msg
    e = ei.value
    assert (e.spent_usd, e.reserved_usd, e.estimate_usd, e.budget_usd) == pytest.approx((0.02, 0.0, 0.01, 0.025))
    assert e.needed_usd == pytest.approx(0.03)  # the cap the loop needs to see before it goes on
    assert [r.status for r in e.results] == ["ok", "ok", "skipped", "skipped", "skipped"]
    assert fake_server.completions == 2  # the cap is never passed, even by calls started together
    assert pool.budget.spent_usd <= 0.025


def test_raising_the_cap_continues_where_the_budget_stopped(fake_server, store, make_cfg):
    fake_server.completion_tokens = lambda body, text: body["max_tokens"]
    cfg = make_cfg(fake_server, max_tokens=10, input_cost_per_token=0.0, output_cost_per_token=0.001)
    batch = reqs(5)
    with pytest.raises(BudgetExceeded):
        asyncio.run(TeacherPool([cfg], store, budget_usd=0.025).run(batch))
    # a new pool (the next `distillery run`) starts from what the store says was spent
    again = asyncio.run(TeacherPool([cfg], store, budget_usd=0.05).run(batch))
    assert [r.status for r in again] == ["ok"] * 5
    assert [r.cached for r in again] == [True, True, False, False, False]  # nothing paid twice
    assert fake_server.completions == 5
    assert store.conn.execute("SELECT SUM(cost_usd) FROM teacher_calls").fetchone()[0] == pytest.approx(0.05)


def test_a_waiting_call_goes_when_a_call_in_flight_settles_below_its_reservation():
    async def go() -> None:
        b = Budget(1.0)
        r1 = await b.acquire(0.6)
        waiting = asyncio.ensure_future(b.acquire(0.6))  # 0.6 in flight + 0.6 > 1.0, but 0.6 alone fits
        await asyncio.sleep(0.01)
        assert not waiting.done()
        b.settle(r1, 0.1)  # the actual cost: room again
        r2 = await asyncio.wait_for(waiting, 1.0)
        assert (b.spent_usd, b.reserved_usd) == pytest.approx((0.1, 0.6))
        with pytest.raises(BudgetExceeded, match="settled \\$0.100000"):
            await b.acquire(0.95)  # 0.1 settled + 0.95 > 1.0: it can never fit, so no waiting
        b.settle(r2, 0.6)

    asyncio.run(go())


def test_a_failed_call_settles_at_zero_and_wakes_the_waiters_from_another_thread():
    async def go() -> None:
        b = Budget(1.0)
        r1 = await b.acquire(0.9)
        waiting = asyncio.ensure_future(b.acquire(0.5))
        await asyncio.sleep(0.01)
        t = threading.Thread(target=b.settle, args=(r1, 0.0))  # a pool in another thread
        t.start()
        t.join()
        await asyncio.wait_for(waiting, 1.0)
        assert (b.spent_usd, b.reserved_usd) == pytest.approx((0.0, 0.5))

    asyncio.run(go())


def test_a_cancelled_waiter_leaves_nothing_behind():
    async def go() -> None:
        b = Budget(1.0)
        r1 = await b.acquire(0.9)
        waiting = asyncio.ensure_future(b.acquire(0.5))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert b._waiters == [] and b.reserved_usd == pytest.approx(0.9)
        b.settle(r1, 0.2)

    asyncio.run(go())


def test_free_calls_and_no_cap_never_wait():
    async def go() -> None:
        capped, free = Budget(0.001), Budget(None)
        await capped.acquire(0.001)
        await asyncio.wait_for(capped.acquire(0.0), 0.5)  # a free model: cost 0
        for _ in range(3):
            await asyncio.wait_for(free.acquire(5.0), 0.5)

    asyncio.run(go())
