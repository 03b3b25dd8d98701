"""TeacherClient through real LiteLLM against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from prompts import load_template, record_prompt_version
from teachers import (
    TeacherAuthError,
    TeacherBadRequest,
    TeacherClient,
    TeacherPool,
    TeacherRequest,
)
from teachers.budget import Budget
from tests.fakeserver import RETRYABLE_FAULTS, planted_secret

MSG = [{"role": "user", "content": "What is 40 + 2?"}]


def run(coro):
    return asyncio.run(coro)


def rows(store):
    cur = store.conn.execute("SELECT * FROM teacher_calls")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_success_is_cached_and_never_requested_again(fake_server, store, make_cfg):
    client = TeacherClient(make_cfg(fake_server), store)
    r1 = run(client.complete(MSG, template="rationale"))
    assert r1.status == "ok" and r1.text.endswith("#### 42") and not r1.cached and r1.attempts == 1
    assert fake_server.requests == 1
    r2 = run(TeacherClient(make_cfg(fake_server), store).complete(MSG, template="rationale"))
    assert r2.cached and r2.text == r1.text and r2.key == r1.key
    assert fake_server.requests == 1  # no second HTTP request
    (row,) = rows(store)
    assert row["status"] == "ok" and row["teacher"] == "fake" and row["model"] == "openai/fake"
    req = json.loads(row["request"])
    assert req["messages"] == MSG and req["params"]["temperature"] == 0.0 and req["sample_index"] == 0
    assert row["completion_tokens"] > 0 and row["latency_s"] > 0


@pytest.mark.parametrize("fault", RETRYABLE_FAULTS)
def test_each_transient_fault_is_retried(fault, fake_server, store, make_cfg):
    fake_server.hang_s = 5.0
    fake_server.queue_faults([fault])
    cfg = make_cfg(fake_server, timeout_s=0.5 if fault == "timeout" else 2.0)
    res = run(TeacherClient(cfg, store).complete(MSG))
    assert res.status == "ok", res.error
    assert res.attempts == 2 and fake_server.requests == 2
    assert fake_server.faults[fault] == 1
    assert rows(store)[0]["attempts"] == 2


def test_answer_without_final_number_is_stored_as_a_success(fake_server, store, make_cfg):
    fake_server.queue_faults(["no_answer"])
    res = run(TeacherClient(make_cfg(fake_server), store).complete(MSG))
    assert res.status == "ok" and "####" not in res.text  # agreement rejects it later; it is not re-paid
    assert fake_server.requests == 1


def test_retry_after_is_honoured(fake_server, store, make_cfg):
    fake_server.retry_after_s = 0.4
    fake_server.queue_faults(["429"])
    cfg = make_cfg(fake_server, retry_after_max_s=5.0)  # backoff alone would wait ~1-10 ms
    t0 = time.perf_counter()
    res = run(TeacherClient(cfg, store).complete(MSG))
    assert res.status == "ok"
    assert time.perf_counter() - t0 >= 0.4


def test_exhausted_retries_are_recorded_then_retried_next_time(fake_server, store, make_cfg):
    fake_server.queue_faults(["500"] * 3)
    cfg = make_cfg(fake_server, max_retries=2)
    res = run(TeacherClient(cfg, store).complete(MSG))
    assert res.status == "error" and res.error_type == "TeacherUnavailable" and "500" in res.error
    assert fake_server.requests == 3
    (row,) = rows(store)
    assert row["status"] == "error" and row["attempts"] == 3 and row["response_hash"] is None
    res2 = run(TeacherClient(cfg, store).complete(MSG))
    assert res2.status == "ok" and not res2.cached and fake_server.requests == 4
    (row,) = rows(store)
    assert row["status"] == "ok" and row["attempts"] == 4


def test_auth_error_stops_without_retry_and_names_the_fix(fake_server, store, make_cfg):
    fake_server.api_key = "right-key"
    with pytest.raises(TeacherAuthError) as ei:
        run(TeacherClient(make_cfg(fake_server), store).complete(MSG))
    assert "fake" in str(ei.value) and "FAKE_TEACHER_KEY" in str(ei.value)
    assert fake_server.requests == 1
    assert rows(store)[0]["status"] == "error"


def test_missing_key_env_fails_before_any_request(fake_server, store, make_cfg, monkeypatch):
    monkeypatch.delenv("FAKE_TEACHER_KEY")
    with pytest.raises(TeacherAuthError, match="export FAKE_TEACHER_KEY"):
        run(TeacherClient(make_cfg(fake_server), store).complete(MSG))
    assert fake_server.requests == 0


def test_unknown_model_is_a_bad_request_not_retried(fake_server, store, make_cfg):
    with pytest.raises(TeacherBadRequest, match="check the model name 'openai/nope'"):
        run(TeacherClient(make_cfg(fake_server, model="openai/nope"), store).complete(MSG))
    assert fake_server.requests == 1


def test_every_parameter_and_the_template_version_are_in_the_key(fake_server, store, make_cfg, tmp_path):
    t = load_template("rationale")
    vid = record_prompt_version(store, t)
    base = make_cfg(fake_server)
    keys = set()

    def key(cfg, **kw):
        r = run(TeacherClient(cfg, store).complete(MSG, **kw))
        assert r.status == "ok"
        keys.add(r.key)

    key(base, template="rationale", prompt_version=vid)
    key(base, template="rationale", prompt_version=vid)  # same: cached
    assert len(keys) == 1 and fake_server.requests == 1
    key(make_cfg(fake_server, temperature=0.5), template="rationale", prompt_version=vid)
    key(make_cfg(fake_server, max_tokens=65), template="rationale", prompt_version=vid)
    key(make_cfg(fake_server, top_p=0.9), template="rationale", prompt_version=vid)
    key(make_cfg(fake_server, extra={"seed": 3}), template="rationale", prompt_version=vid)
    key(base, template="rationale", prompt_version=vid, sample_index=1)
    key(base, template="refine", prompt_version=vid)
    edited = t.body.replace("Solve the following problem", "Solve this problem")
    (tmp_path / "ws" / "prompts").mkdir(parents=True)
    (tmp_path / "ws" / "prompts" / "rationale.yaml").write_text(edited)
    t2 = load_template("rationale", tmp_path / "ws")
    key(base, template=t2)  # a Template object: its version is recorded and used
    assert len(keys) == 8 and fake_server.requests == 8
    versions = {r[0] for r in store.conn.execute("SELECT id FROM prompt_versions")}
    assert versions == {t.version, t2.version}


def test_api_key_never_reaches_the_database(fake_server, store, make_cfg, monkeypatch, tmp_path):
    secret = planted_secret()
    monkeypatch.setenv("FAKE_TEACHER_KEY", secret)
    fake_server.api_key = secret
    fake_server.queue_faults(["500"])  # an error row too
    res = run(TeacherClient(make_cfg(fake_server), store).complete(MSG))
    assert res.status == "ok"
    assert fake_server.auth_headers[-1] == f"Bearer {secret}"  # the key was used...
    store.conn.execute("PRAGMA wal_checkpoint(FULL)")
    dump = "\n".join(store.conn.iterdump())
    assert secret not in dump  # ...and is nowhere in the database
    for p in tmp_path.glob("distillery.db*"):
        assert secret.encode() not in p.read_bytes()


def test_masked_key_echoed_by_the_provider_is_not_stored(fake_server, store, make_cfg, monkeypatch, tmp_path):
    secret = "sk" + "-" + planted_secret()  # OpenAI's shape, made at run time: what providers echo masked
    monkeypatch.setenv("FAKE_TEACHER_KEY", secret)
    fake_server.api_key = "another-key"  # 401: the server echoes its first 8 and last 4 characters
    head, tail = secret[:8], secret[-4:]
    with pytest.raises(TeacherAuthError) as ei:
        run(TeacherClient(make_cfg(fake_server), store).complete(MSG))
    assert head not in str(ei.value) and tail not in str(ei.value)
    assert "FAKE_TEACHER_KEY" in str(ei.value)
    store.conn.execute("PRAGMA wal_checkpoint(FULL)")
    dump = "\n".join(store.conn.iterdump())
    rows_ = [r for r in dump.splitlines() if head in r]
    assert not rows_, rows_[:1]
    assert "Incorrect API key provided" in dump


def test_local_server_without_key_env_gets_a_dummy_key(fake_server, store, make_cfg, monkeypatch):
    real = planted_secret()
    monkeypatch.setenv("OPENAI_API_KEY", real)
    res = run(TeacherClient(make_cfg(fake_server, api_key_env=None), store).complete(MSG))
    assert res.status == "ok"
    assert real not in fake_server.auth_headers[-1]


def test_concurrency_cap_is_respected(fake_server, store, make_cfg):
    fake_server.latency = 0.05
    pool = TeacherPool([make_cfg(fake_server, max_concurrency=3)], store)
    reqs = [TeacherRequest("fake", [{"role": "user", "content": f"q{i}"}]) for i in range(12)]
    results = run(pool.run(reqs))
    assert all(r.status == "ok" for r in results)
    assert fake_server.peak_in_flight == 3


def test_requests_per_minute_bucket_spaces_requests(fake_server, store, make_cfg):
    pool = TeacherPool([make_cfg(fake_server, rpm=600)], store)  # 10/s, burst 10
    reqs = [TeacherRequest("fake", [{"role": "user", "content": f"q{i}"}]) for i in range(15)]
    t0 = time.perf_counter()
    assert all(r.status == "ok" for r in run(pool.run(reqs)))
    assert time.perf_counter() - t0 >= 0.45  # 10 at once, then 5 more at 10/s


def test_budget_exactly_the_calls_that_fit_then_stop(fake_server, store, make_cfg):
    # Each call costs exactly 10 output tokens x $0.001: the server reports max_tokens
    # completion tokens, so the reserved worst case equals the actual cost.
    fake_server.completion_tokens = lambda body, text: body["max_tokens"]
    cfg = make_cfg(fake_server, max_tokens=10, input_cost_per_token=0.0, output_cost_per_token=0.001)
    from teachers import BudgetExceeded

    pool = TeacherPool([cfg], store, budget_usd=0.05)
    reqs = [TeacherRequest("fake", [{"role": "user", "content": f"q{i}"}], tag=i) for i in range(12)]
    with pytest.raises(BudgetExceeded, match="budget_usd 0.05") as ei:
        run(pool.run(reqs))
    results = ei.value.results
    assert [r.tag for r in results] == list(range(12))
    assert sum(r.status == "ok" for r in results) == 5
    assert sum(r.status == "skipped" for r in results) == 7
    assert fake_server.requests == 5 and fake_server.completions == 5
    assert pool.budget.spent_usd == pytest.approx(0.05)
    assert store.conn.execute("SELECT SUM(cost_usd) FROM teacher_calls").fetchone()[0] == pytest.approx(0.05)
    # A new pool over the same store starts from what was spent: nothing more fits.
    pool2 = TeacherPool([cfg], store, budget_usd=0.05)
    with pytest.raises(BudgetExceeded):
        run(pool2.run(reqs[5:6]))
    # ...but cached answers are free and still returned.
    done = [r for r in results if r.status == "ok"]
    again = run(pool2.run([reqs[r.tag] for r in done]))
    assert all(r.cached for r in again) and fake_server.requests == 5


def test_budget_reserve_is_checked_before_the_call():
    b = Budget(1.0)
    r1 = b.reserve(0.6)
    from teachers import BudgetExceeded

    with pytest.raises(BudgetExceeded):
        b.reserve(0.6)  # 0.6 in flight + 0.6 > 1.0
    b.settle(r1, 0.1)
    b.reserve(0.6)  # actual cost was lower: room again
    assert b.spent_usd == pytest.approx(0.1) and b.reserved_usd == pytest.approx(0.6)


def test_auth_error_in_a_pool_stops_the_rest(fake_server, store, make_cfg):
    fake_server.api_key = "right-key"
    pool = TeacherPool([make_cfg(fake_server, max_concurrency=2)], store)
    reqs = [TeacherRequest("fake", [{"role": "user", "content": f"q{i}"}]) for i in range(20)]
    with pytest.raises(TeacherAuthError) as ei:
        run(pool.run(reqs))
    assert fake_server.requests <= 2
    assert sum(r.status == "skipped" for r in ei.value.results) >= 18
