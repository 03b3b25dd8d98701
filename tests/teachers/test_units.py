"""Units around the client: error translation, Retry-After parsing, token
buckets, and the import boundary (teachers never imports torch)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import litellm
import pytest

from teachers.errors import (
    RETRYABLE,
    TeacherAuthError,
    TeacherBadRequest,
    TeacherBadResponse,
    TeacherRateLimited,
    TeacherTimeout,
    TeacherUnavailable,
    TeacherUnexpectedError,
    key_env_hint,
    retry_after_seconds,
    translate,
)
from teachers import TeacherPool, TeacherRequest
from teachers.limits import MAX_START_INTERVAL_S, RateLimiter, TokenBucket
from teachers.pool import gc_frozen
from tests.fakeserver import FakeServerProcess


def _resp(code: int, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(code, headers=headers or {}, request=httpx.Request("POST", "http://x/v1/chat/completions"))


def test_translate_maps_litellm_errors_and_names_the_fix():
    kw = dict(teacher="t1", model="openai/gpt-4o-mini", api_key_env=None, timeout_s=5)
    e = translate(litellm.AuthenticationError("bad key", llm_provider="openai", model="gpt-4o-mini"), **kw)
    assert isinstance(e, TeacherAuthError) and "set OPENAI_API_KEY" in str(e) and str(e).startswith("teacher 't1'")
    e = translate(litellm.NotFoundError("no such model", llm_provider="openai", model="gpt-4o-mini"), **kw)
    assert isinstance(e, TeacherBadRequest) and "check the model name" in str(e)
    e = translate(litellm.RateLimitError("slow down", llm_provider="openai", model="m",
                                         response=_resp(429, {"retry-after": "7"})), **kw)
    assert isinstance(e, TeacherRateLimited) and e.retry_after == 7.0
    e = translate(litellm.Timeout("timed out", model="m", llm_provider="openai"), **kw)
    assert isinstance(e, TeacherTimeout) and "5" in str(e)
    e = translate(litellm.ServiceUnavailableError("down", llm_provider="openai", model="m"), **kw)
    assert isinstance(e, TeacherUnavailable)
    e = translate(ConnectionResetError("reset by peer"), **kw)
    assert isinstance(e, TeacherUnavailable)


def _raised(outer: Exception, inner: Exception) -> Exception:
    """`outer` raised while handling `inner`, as LiteLLM wraps what it catches."""
    try:
        try:
            raise inner
        except Exception:
            raise outer
    except Exception as e:
        return e


def test_errors_not_known_to_be_transient_are_not_retried():
    kw = dict(teacher="t1", model="openai/fake", api_key_env=None, timeout_s=5)
    # `extra = {api_key = ...}`: Python refuses the call itself
    e = translate(TypeError("acompletion() got multiple values for keyword argument 'api_key'"), **kw)
    assert isinstance(e, TeacherBadRequest) and "`extra`" in str(e) and "api_key" in str(e)
    # LiteLLM wraps an argument error met while building the request in an APIConnectionError
    wrapped = _raised(litellm.APIConnectionError("OpenAIException - 'int' object is not iterable",
                                                 llm_provider="openai", model="fake"),
                      TypeError("'int' object is not iterable"))
    e = translate(wrapped, **kw)
    assert isinstance(e, TeacherBadRequest) and "TypeError" in str(e)
    assert not isinstance(e, RETRYABLE)
    # ...but a real connection failure under the same class is still transient
    refused = _raised(litellm.APIConnectionError("Connection error.", llm_provider="openai", model="fake"),
                      _raised(httpx.ConnectError("refused"), ConnectionRefusedError(111, "refused")))
    assert isinstance(translate(refused, **kw), TeacherUnavailable)
    # a body that is not JSON is a bad response (JSONDecodeError is a ValueError), retried
    import json

    try:
        json.loads('{"choices": [')
    except json.JSONDecodeError as je:
        bad_body = _raised(litellm.InternalServerError("OpenAIException - Unterminated string",
                                                       llm_provider="openai", model="fake"), je)
    assert isinstance(translate(bad_body, **kw), TeacherBadResponse)
    # anything else we cannot tell to be transient fails the call without a retry
    e = translate(RuntimeError("something odd"), **kw)
    assert isinstance(e, TeacherUnexpectedError) and not isinstance(e, RETRYABLE) and "not retried" in str(e)


def test_retry_after_prefers_milliseconds_and_ignores_dates():
    class E(Exception):
        pass

    e = E()
    e.response = _resp(429, {"retry-after-ms": "250", "retry-after": "1"})
    assert retry_after_seconds(e) == pytest.approx(0.25)
    e.response = _resp(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_seconds(e) is None


def test_key_env_hint():
    assert key_env_hint("anthropic/claude-3-5-haiku", None) == "ANTHROPIC_API_KEY"
    assert key_env_hint("gpt-4o-mini", None) == "OPENAI_API_KEY"
    assert key_env_hint("openai/x", "MY_KEY") == "MY_KEY"


def test_token_bucket_rate():
    async def go() -> float:
        b = TokenBucket(rate_per_min=1200, capacity=5)  # 20/s
        t0 = time.perf_counter()
        for _ in range(15):
            await b.acquire(1)
        return time.perf_counter() - t0

    assert asyncio.run(go()) >= 0.45  # 5 from the burst, then 10 at 20/s


def _start_times(limiter: RateLimiter, n: int) -> list[float]:
    """Start n calls at once through the limiter; the times their slots opened."""
    async def go() -> list[float]:
        starts: list[float] = []

        async def call() -> None:
            async with limiter.slot(10):
                starts.append(time.perf_counter())
                await asyncio.sleep(0.01)

        await asyncio.gather(*(call() for _ in range(n)))
        return starts

    return asyncio.run(go())


def test_pacing_spreads_call_starts_once_a_latency_is_known():
    # no latency seen yet: the first wave starts at once (nothing to pace by)
    fresh = RateLimiter(None, None, 4)
    assert fresh.start_interval == 0.0
    starts = _start_times(fresh, 4)
    assert max(starts) - min(starts) < 0.04
    # a 0.4 s teacher with 4 slots: starts at least 0.4 / (2·4) = 50 ms apart... capped
    paced = RateLimiter(None, None, 4, latency_s=0.4)
    assert paced.start_interval == MAX_START_INTERVAL_S
    starts = sorted(_start_times(paced, 4))
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= MAX_START_INTERVAL_S * 0.9, gaps
    # below the cap the interval is latency / (2 · concurrency), from a running average
    fast = RateLimiter(None, None, 8)
    fast.observe_latency(0.16)
    assert fast.start_interval == pytest.approx(0.01)
    fast.observe_latency(0.36)  # newest weighs 0.2: 0.16 + 0.2 · 0.2 = 0.2
    assert fast.latency_s == pytest.approx(0.2)
    assert fast.start_interval == pytest.approx(0.0125)


def test_gc_frozen_scopes_the_freeze_to_the_batch_and_leaves_an_outer_one_alone():
    import gc

    # (counts are compared > 0, not equal: a frozen object freed by refcount leaves the count)
    assert gc.get_freeze_count() == 0
    with gc_frozen():
        assert gc.get_freeze_count() > 0
        with gc_frozen():  # a nested pool shares the freeze
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() > 0  # the inner exit did not unfreeze the outer batch
    assert gc.get_freeze_count() == 0  # everything handed back to the collector
    gc.freeze()  # the application's own freeze is not ours to undo
    try:
        with gc_frozen():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_pool_runs_its_batch_with_the_gc_frozen(store, fake_server, make_cfg):
    import gc

    seen: list[int] = []
    pool = TeacherPool([make_cfg(fake_server)], store)
    client = pool.clients["fake"]
    real = client.complete

    async def spy(*a, **k):
        seen.append(gc.get_freeze_count())
        return await real(*a, **k)

    client.complete = spy
    out = pool.run_sync([TeacherRequest("fake", [{"role": "user", "content": f"q{i}"}]) for i in range(3)])
    assert [r.status for r in out] == ["ok"] * 3
    assert seen and min(seen) > 0 and gc.get_freeze_count() == 0


def test_teachers_and_prompts_never_import_torch():
    code = ("import sys, teachers, teachers.client, teachers.pool, teachers.agreement, prompts; "
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'litellm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fake_server_in_a_subprocess_counts_requests():
    with FakeServerProcess(latency=0.0) as srv:
        r = httpx.post(srv.base_url + "/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].endswith("#### 42")
        assert httpx.get(srv.base_url + "/models").json()["data"][0]["id"] == "fake"
        assert srv.requests == 2
        srv.reset_counts()
        assert srv.requests == 0


def test_litellm_pricing_only_where_our_cost_does_not_come_from_litellm():
    from teachers.budget import prices
    from teachers.client import litellm_pricing
    from teachers.config import TeacherConfig

    configured = TeacherConfig(name="local", model="openai/local", input_cost_per_token=1e-6)
    got = litellm_pricing(configured, prices(configured))
    assert got["input_cost_per_token"] == 1e-6 and got["output_cost_per_token"] == 0.0
    assert got["litellm_metadata"] == {"model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 0.0}}
    # the metadata dict is a copy: LiteLLM mutating it cannot change the rates we pass
    assert got["litellm_metadata"]["model_info"] is not got

    unknown = TeacherConfig(name="x", model="openai/not-a-real-model-xyz")
    assert prices(unknown) is None
    assert litellm_pricing(unknown, None)["input_cost_per_token"] == 0.0

    # a model in LiteLLM's price table keeps LiteLLM's own pricing
    known = TeacherConfig(name="mini", model="openai/gpt-4o-mini")
    assert prices(known) is not None
    assert litellm_pricing(known, prices(known)) == {}
