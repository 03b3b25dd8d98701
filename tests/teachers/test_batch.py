"""Batch teachers (teachers/batch.py) against a real local server with OpenAI's
files and batches API (tests/batch_fakeserver.py): one job per pool run, the
same cache keys as the synchronous path, a stored batch id that a stopped or
killed run polls again instead of resubmitting, failed and expired lines asked
synchronously, and cost at the batch price."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from store.db import Store
from teachers import BudgetExceeded, TeacherConfig, TeacherPool, TeacherRequest
from teachers.budget import batch_prices, prices
from tests.batch_fakeserver import FakeBatchServer

ROOT = Path(__file__).resolve().parents[2]
IN, OUT = 1e-6, 2e-6  # configured per-token prices (synchronous)


@pytest.fixture
def batch_server():
    with FakeBatchServer() as srv:
        yield srv


def settings(srv, **kw) -> dict:
    base = dict(name="fake", model="openai/fake", api_base=srv.base_url, temperature=0.0, max_tokens=64,
                timeout_s=5.0, max_retries=2, backoff_initial_s=0.001, backoff_max_s=0.01,
                input_cost_per_token=IN, output_cost_per_token=OUT, batch=True, batch_poll_s=0.01)
    base.update(kw)
    return base


def reqs(n: int, prefix: str = "q") -> list[TeacherRequest]:
    return [TeacherRequest("fake", [{"role": "user", "content": f"{prefix} {i}: what is {i} + 1?"}], tag=i)
            for i in range(n)]


def run(cfg: TeacherConfig, store, requests, **kw):
    return asyncio.run(TeacherPool([cfg], store).run(requests, **kw))


def calls(store) -> dict[str, dict]:
    rows = store.conn.execute("SELECT key FROM teacher_calls").fetchall()
    return {r[0]: store.get_teacher_call(r[0]) for r in rows}


def test_a_batch_that_takes_several_polls_fills_the_cache_under_the_synchronous_keys(batch_server, store):
    batch_server.polls_to_finish = 4
    results = run(TeacherConfig(**settings(batch_server)), store, reqs(5))
    assert [r.status for r in results] == ["ok"] * 5 and not any(r.cached for r in results)
    assert [r.tag for r in results] == list(range(5))
    assert batch_server.batches_created == 1 and batch_server.files_uploaded == 1
    (bid, polls), = batch_server.polls.items()
    assert polls == 4
    assert batch_server.completions == 0 and batch_server.lines_billed == 5  # no synchronous request at all
    rows = calls(store)
    assert set(rows) == {r.key for r in results}
    assert all(c["status"] == "ok" and c["response"]["batch"] == bid for c in rows.values())
    assert store.open_batches() == []
    job = store.conn.execute("SELECT batch_id, status, total, completed, finished FROM teacher_batches").fetchall()
    assert [tuple(j[:4]) for j in job] == [(bid, "completed", 5, 5)] and job[0][4] is not None

    # the synchronous teacher with the same settings asks nothing: same keys, same cache
    sync = {k: v for k, v in settings(batch_server).items() if not k.startswith("batch")}
    before = batch_server.requests
    again = run(TeacherConfig(**sync), store, reqs(5))
    assert all(r.cached for r in again) and [r.key for r in again] == [r.key for r in results]
    assert batch_server.requests == before


def test_identical_requests_share_one_line(batch_server, store):
    requests = reqs(2) + reqs(2)
    results = run(TeacherConfig(**settings(batch_server)), store, requests)
    assert [r.status for r in results] == ["ok"] * 4 and [r.tag for r in results] == [0, 1, 0, 1]
    assert batch_server.lines_billed == 2


def test_stop_while_waiting_returns_at_once_and_the_next_run_polls_the_same_batch(batch_server, store):
    batch_server.polls_to_finish = 3
    slow = TeacherConfig(**settings(batch_server, batch_poll_s=30.0))
    asked: list[float] = []

    def should_stop() -> bool:  # once the first poll is stored: the run then waits out a 30 s interval
        if not asked and any(b["status"] == "in_progress" for b in store.open_batches()):
            asked.append(time.monotonic())
        return bool(asked)

    pool = TeacherPool([slow], store, budget_usd=1.0)
    results = asyncio.run(pool.run(reqs(4), should_stop=should_stop))
    assert time.monotonic() - asked[0] < 2
    assert [r.status for r in results] == ["skipped"] * 4
    assert pool.budget.reserved_usd == 0  # nothing left to block the pool's next calls
    (job,) = store.open_batches()
    assert job["teacher"] == "fake" and job["total"] == 4 and job["status"] == "in_progress"
    assert job["completed"] == 1  # the first of three polls: what `status` shows

    results = run(TeacherConfig(**settings(batch_server)), store, reqs(4))
    assert [r.status for r in results] == ["ok"] * 4
    assert batch_server.batches_created == 1 and list(batch_server.polls) == [job["batch_id"]]
    assert store.open_batches() == []


def test_an_expired_batch_keeps_what_it_finished_and_the_rest_is_asked_synchronously(batch_server, store):
    batch_server.polls_to_finish, batch_server.expire_after_polls = 4, 3  # 2 of 4 lines done when it expires
    results = run(TeacherConfig(**settings(batch_server)), store, reqs(4))
    assert [r.status for r in results] == ["ok"] * 4
    assert batch_server.lines_billed == 2 and batch_server.completions == 2
    rows = calls(store)
    by_batch = [c for c in rows.values() if "batch" in (c["response"] or {})]
    assert len(by_batch) == 2
    late = [c for c in rows.values() if c not in by_batch]
    assert [c["attempts"] for c in late] == [1, 1]  # the line that never ran is no attempt
    (status,) = store.conn.execute("SELECT status FROM teacher_batches").fetchone()
    assert status == "expired" and store.open_batches() == []


def test_failed_lines_are_retried_synchronously(batch_server, store):
    faults = {"q 1": "error", "q 2": "500"}  # one in the error file, one a non-200 line of the output file
    batch_server.line_fault = lambda cid, body: faults.get(body["messages"][0]["content"].split(":")[0])
    results = run(TeacherConfig(**settings(batch_server)), store, reqs(4))
    assert [r.status for r in results] == ["ok"] * 4
    assert batch_server.completions == 2
    rows = {c["request"]["messages"][0]["content"].split(":")[0]: c for c in calls(store).values()}
    assert rows["q 1"]["attempts"] == 2 and rows["q 2"]["attempts"] == 2 and rows["q 0"]["attempts"] == 1
    assert rows["q 1"]["status"] == rows["q 2"]["status"] == "ok"


def test_cost_is_recorded_at_the_batch_price(batch_server, store):
    batch_server.line_fault = lambda cid, body: "error" if body["messages"][0]["content"].startswith("q 0") else None
    results = run(TeacherConfig(**settings(batch_server)), store, reqs(3))
    rows = {r.key: store.get_teacher_call(r.key) for r in results}
    for r in results:
        c = rows[r.key]
        full = c["prompt_tokens"] * IN + c["completion_tokens"] * OUT
        batched = "batch" in c["response"]
        assert c["cost_usd"] == pytest.approx(full / 2 if batched else full) == pytest.approx(r.cost_usd)
    assert sum("batch" in c["response"] for c in rows.values()) == 2
    assert store.spend() == pytest.approx(sum(c["cost_usd"] for c in rows.values()))


def test_batch_prices_follow_litellms_batch_cost_calculator():
    from litellm.cost_calculator import batch_cost_calculator
    from litellm.types.utils import Usage

    cfg = TeacherConfig(name="g", model="openai/gpt-4o-mini", batch=True)
    p = batch_prices(cfg, prices(cfg))
    inp, out = batch_cost_calculator(Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100),
                                     "openai/gpt-4o-mini")
    assert (1000 * p[0], 100 * p[1]) == (pytest.approx(inp), pytest.approx(out))
    configured = TeacherConfig(name="c", model="openai/x", input_cost_per_token=IN, output_cost_per_token=OUT)
    assert batch_prices(configured, (IN, OUT)) == (IN / 2, OUT / 2)
    assert batch_prices(configured, None) is None


def test_lines_beyond_the_budget_go_in_the_next_job(batch_server, store):
    # each line reserves ~67e-6 (worst case at the batch price) and costs ~15e-6
    cfg = TeacherConfig(**settings(batch_server))
    results = asyncio.run(TeacherPool([cfg], store, budget_usd=150e-6).run(reqs(4)))
    assert [r.status for r in results] == ["ok"] * 4
    assert batch_server.batches_created == 3 and batch_server.completions == 0
    assert store.spend() <= 150e-6


def test_a_line_that_can_never_fit_stops_with_budget_exceeded(batch_server, store):
    with pytest.raises(BudgetExceeded) as e:
        asyncio.run(TeacherPool([TeacherConfig(**settings(batch_server))], store, budget_usd=1e-6).run(reqs(2)))
    assert [r.status for r in e.value.results] == ["skipped", "skipped"]
    assert batch_server.batches_created == 0


def test_batch_timeout_cancels_the_job_and_asks_the_rest_synchronously(batch_server, store):
    batch_server.polls_to_finish = 10**6
    results = run(TeacherConfig(**settings(batch_server, batch_timeout_s=0.05, batch_poll_s=0.05)), store, reqs(3))
    assert [r.status for r in results] == ["ok"] * 3
    assert batch_server.cancels == 1 and batch_server.completions == 3
    (status,) = store.conn.execute("SELECT status FROM teacher_batches").fetchone()
    assert status == "cancelled"


def test_a_create_whose_answer_is_lost_is_found_in_the_list_not_made_twice(batch_server, store):
    batch_server.lose_creates = 1
    results = run(TeacherConfig(**settings(batch_server)), store, reqs(3))
    assert [r.status for r in results] == ["ok"] * 3
    assert batch_server.batches_created == 1 and batch_server.completions == 0


CHILD = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
from store.db import Store
from teachers import TeacherConfig, TeacherPool, TeacherRequest
doc = json.loads(sys.argv[1])
store = Store.open(doc["db"])
reqs = [TeacherRequest("fake", m) for m in doc["messages"]]
asyncio.run(TeacherPool([TeacherConfig(**doc["cfg"])], store).run(reqs))
print("finished", flush=True)
"""


def test_sigkill_while_waiting_then_the_next_run_polls_the_same_batch(batch_server, tmp_path):
    batch_server.polls_to_finish = 10**6  # the job does not end while the first process waits
    db = tmp_path / "distillery.db"
    Store.open(db).close()
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    doc = {"db": str(db), "cfg": settings(batch_server, batch_poll_s=0.05),
           "messages": [r.messages for r in reqs(3)]}
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), json.dumps(doc)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while sum(batch_server.polls.values()) < 2:  # submitted, id stored, waiting
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never polled its batch"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    (bid,) = batch_server.polls
    with Store.open(db) as store:
        (job,) = store.open_batches()
        assert job["batch_id"] == bid

        batch_server.polls_to_finish = batch_server.polls[bid] + 2
        results = run(TeacherConfig(**doc["cfg"]), store, reqs(3))
        assert [r.status for r in results] == ["ok"] * 3
        assert batch_server.batches_created == 1 and batch_server.files_uploaded == 1
        assert list(batch_server.polls) == [bid] and batch_server.completions == 0
        assert store.open_batches() == []


@pytest.mark.parametrize("kw, says", [
    (dict(model="self", batch=True), "remove batch"),
    (dict(model="anthropic/claude-3-5-haiku-latest", batch=True), "openai/<model>"),
    (dict(model="openai/x", batch=True, deployments=[{"api_base": "http://127.0.0.1:1/v1"}]), "keep one of them"),
    (dict(model="openai/x", batch_poll_s=5), "batch_poll_s applies only with batch = true"),
    (dict(model="openai/x", batch=True, batch_poll_s=0), "greater than 0"),
])
def test_batch_settings_that_cannot_work_are_refused_with_the_fix(kw, says):
    with pytest.raises(ValidationError) as e:
        TeacherConfig(name="t", **kw)
    assert says in str(e.value)


def test_open_batch_lines_finds_every_key_of_a_large_job(store):
    keys = [f"{i:064x}" for i in range(1200)]  # more than one chunk of bound parameters
    row = store.add_teacher_batch(teacher="fake", model="openai/fake", api_base=None, input_file_id="file-1",
                                  keys=keys + keys[:3])
    assert store.teacher_batch_keys(row) == keys and store.get_teacher_batch(row)["total"] == 1200
    assert store.open_batch_lines("fake", keys[::-1]) == {k: row for k in keys}
    assert store.open_batch_lines("other", keys) == {}
    store.update_teacher_batch(row, status="completed", finish=True)
    assert store.open_batch_lines("fake", keys) == {} and store.open_batches() == []
    with pytest.raises(TypeError):
        store.update_teacher_batch(row, finished="now")


@pytest.mark.parametrize("kw", [dict(model="openai/x"), dict(model="self"),
                                dict(model="openai/x", batch=True, batch_poll_s=5.0),
                                dict(model="openai/x", deployments=[{"api_base": "http://a/v1"}], cooldown_s=5.0)])
def test_a_stored_config_reads_back(kw):
    # runs.config_json holds every setting, defaults included; resume and replay validate it again
    cfg = TeacherConfig(name="t", **kw)
    assert TeacherConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg
