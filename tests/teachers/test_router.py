"""Routed teachers (teachers/router.py): one teacher over several deployments
through litellm.Router, tested with two real local servers, one of them
failing: every request still succeeds, the failing deployment gets requests
and is then cooled down, and the cache keys are the teacher's, equal to those
of a single-endpoint teacher with the same model string."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from store.db import Store
from teachers import (TeacherAuthError, TeacherCallsFailed, TeacherClient, TeacherConfig, TeacherPool, TeacherRequest,
                      redact)
from tests.fakeserver import FakeOpenAIServer, planted_secret


@pytest.fixture
def servers():
    with FakeOpenAIServer(fault_rate=1.0, fault_kinds=("500",)) as bad, FakeOpenAIServer() as good:
        yield bad, good


def routed(*srvs, **kw) -> TeacherConfig:
    base = dict(name="fake", model="openai/fake", temperature=0.0, max_tokens=64, timeout_s=5.0, max_retries=3,
                backoff_initial_s=0.001, backoff_max_s=0.01, retry_after_max_s=0.05, max_concurrency=1,
                deployments=[{"api_base": s.base_url} for s in srvs], allowed_fails=1, cooldown_s=60.0)
    base.update(kw)
    return TeacherConfig(**base)


def reqs(n: int, prefix: str = "q") -> list[TeacherRequest]:
    return [TeacherRequest("fake", [{"role": "user", "content": f"{prefix} {i}: what is {i} + 1?"}], tag=i)
            for i in range(n)]


def test_a_failing_deployment_is_cooled_down_and_every_request_succeeds(servers, store):
    bad, good = servers
    pool = TeacherPool([routed(bad, good)], store)
    results = pool.run_sync(reqs(20))
    assert [r.status for r in results] == ["ok"] * 20
    # one request at a time: it fails allowed_fails + 1 times, then Router leaves it out
    assert bad.requests == 2 and bad.faults == {"500": 2}
    assert good.completions == 20
    more = pool.run_sync(reqs(10, "r"))  # a new event loop, the same Router and its cooldown
    assert [r.status for r in more] == ["ok"] * 10 and bad.requests == 2
    # each failover is an attempt of the call that went on to the healthy deployment
    assert pool.http_attempts == 32
    answered = {store.get_teacher_call(r.key)["response"]["deployment"] for r in results + more}
    assert answered == {"fake/1"}


def test_cache_keys_are_the_teachers_whichever_deployment_answers(servers, store, tmp_path):
    bad, good = servers
    routed_results = TeacherPool([routed(bad, good)], store).run_sync(reqs(6))
    with Store.open(tmp_path / "single.db") as single:
        one = TeacherConfig(name="fake", model="openai/fake", api_base=good.base_url, temperature=0.0, max_tokens=64)
        single_results = TeacherPool([one], single).run_sync(reqs(6))
    assert [r.key for r in routed_results] == [r.key for r in single_results]
    before = good.requests + bad.requests
    again = TeacherPool([routed(good, bad)], store).run_sync(reqs(6))  # other order, same teacher: all cached
    assert all(r.cached for r in again) and good.requests + bad.requests == before


def test_when_every_deployment_fails_the_calls_fail_and_are_recorded(store):
    with FakeOpenAIServer(fault_rate=1.0, fault_kinds=("503",)) as a, FakeOpenAIServer(fault_rate=1.0) as b:
        with pytest.raises(TeacherCallsFailed) as e:
            TeacherPool([routed(a, b, allowed_fails=0)], store).run_sync(reqs(2))
    assert [r.status for r in e.value.results] == ["error", "error"]
    kinds = {store.get_teacher_call(r.key)["error_type"] for r in e.value.results}
    assert kinds <= {"TeacherUnavailable", "TeacherRateLimited", "TeacherTimeout", "TeacherBadResponse"}


def test_each_deployment_gets_its_own_key_and_no_key_is_stored(store, monkeypatch, tmp_path):
    key_a, key_b = planted_secret(), planted_secret()
    monkeypatch.setenv("KEY_A", key_a)
    monkeypatch.setenv("KEY_B", key_b)
    with FakeOpenAIServer(api_key=key_a) as a, FakeOpenAIServer(api_key=key_b) as b:
        cfg = routed(a, b, deployments=[{"api_base": a.base_url, "api_key_env": "KEY_A"},
                                        {"api_base": b.base_url, "api_key_env": "KEY_B"}])
        results = TeacherPool([cfg], store).run_sync(reqs(8))
        assert [r.status for r in results] == ["ok"] * 8
        assert set(a.auth_headers) <= {f"Bearer {key_a}"} and set(b.auth_headers) <= {f"Bearer {key_b}"}
    assert TeacherClient(cfg, store).secrets() == (key_a, key_b)
    # the config names the variables, and redact masks their values wherever they turn up
    shown = json.dumps(redact({"teachers": [cfg.model_dump()], "log": f"sent {key_a} and {key_b}"}))
    assert key_a not in shown and key_b not in shown and "KEY_A" in shown
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("distillery.db"))
    assert key_a.encode() not in raw and key_b.encode() not in raw


def test_a_deployments_missing_key_is_an_auth_error_naming_it(servers, store, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    bad, good = servers
    cfg = routed(bad, good, deployments=[{"api_base": good.base_url, "api_key_env": "NO_SUCH_KEY"}])
    with pytest.raises(TeacherAuthError, match="NO_SUCH_KEY"):
        asyncio.run(TeacherClient(cfg, store).complete([{"role": "user", "content": "q"}]))
    assert good.requests == 0


@pytest.mark.parametrize("kw, says", [
    (dict(deployments=[{"api_base": "http://127.0.0.1:1/v1"}, {"api_base": "http://127.0.0.1:1/v1"}]),
     "deployments[1] is the same endpoint as deployments[0]"),
    (dict(api_base="http://127.0.0.1:1/v1", deployments=[{"api_base": "http://127.0.0.1:2/v1"}]),
     "in each [[teachers.deployments]]"),
    (dict(model="self", deployments=[{"api_base": "http://127.0.0.1:2/v1"}]), "the 'self' teacher has none"),
    (dict(cooldown_s=5), "cooldown_s applies only to a teacher with [[teachers.deployments]]"),
    (dict(deployments=[{"api_base": "http://user:pw@127.0.0.1:2/v1"}]), "user name or password"),
    (dict(deployments=[{"api_base": "http://127.0.0.1:2/v1", "api_key": "x"}]), "Extra inputs are not permitted"),
])
def test_deployment_settings_that_cannot_work_are_refused_with_the_fix(kw, says):
    with pytest.raises(ValidationError) as e:
        TeacherConfig(**{"name": "t", "model": "openai/fake", **kw})
    assert says in str(e.value)


def test_two_models_behind_one_api_base_are_two_deployments():
    cfg = TeacherConfig(name="t", model="azure/gpt-4o", deployments=[
        {"model": "azure/gpt-4o-eu", "api_base": "https://x.example/v1"},
        {"model": "azure/gpt-4o-us", "api_base": "https://x.example/v1"}])
    assert [d.model for d in cfg.endpoints()] == ["azure/gpt-4o-eu", "azure/gpt-4o-us"]
