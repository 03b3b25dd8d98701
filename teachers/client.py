"""The teacher client: one configured teacher reached through `litellm.acompletion`.

`complete()` does, in order: compute the cache key (teachers/cache.py) and
return a cached success without any request; reserve the worst-case cost in
the shared Budget (waiting for calls in flight to settle when only they keep
it from fitting; BudgetExceeded before the call, never after); then, inside
the teacher's rate limits and concurrency cap, call LiteLLM with tenacity
retries (jittered exponential backoff, Retry-After honoured) on transient
errors.  The outcome is written to the cache in one transaction: a success
once and for all, a failure as `status='error'` to be retried next time.
Auth and validation errors are raised (after being recorded) because every
other call of that teacher would fail the same way.  What is recorded is
redacted (teachers.config.redact), the key read from api_key_env included.

LiteLLM's own retries are turned off (`max_retries=0`, `num_retries=0`) so
that every HTTP attempt is one of ours: counted, backed off, and bounded.

A teacher with deployments sends through its litellm.Router instead
(teachers/router.py): same key, budget, limits and retries around each
Router call, which fails over between deployments inside (each deployment it
gave up on counts as an attempt).  `prepare` names a call (cache key, what is
recorded) for this path and the batch path (teachers/batch.py) alike.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from . import cache
from .budget import Budget, call_cost, estimate_cost, estimate_prompt_tokens, prices
from .config import TeacherConfig, redact
from .errors import FATAL, RETRYABLE, TeacherAuthError, TeacherBadRequest, TeacherBadResponse, TeacherError, translate
from .limits import RateLimiter
from .provider import endpoint_key, import_litellm
from .router import answered_by, build_router, routed_attempts


@dataclass
class TeacherRequest:
    """One call asked of the pool (teachers/pool.py), or of the batch path (teachers/batch.py)."""
    teacher: str  # a configured teacher name
    messages: list[dict]
    template: Any = None  # template name or prompts.Template
    prompt_version: str | None = None
    sample_index: int = 0
    run_id: int | None = None
    k: int | None = None
    tag: Any = field(default=None, compare=False)  # echoed back in CallResult.tag


@dataclass
class CallResult:
    key: str
    text: str | None
    status: str  # "ok" | "error" | "skipped" (not attempted: the run was stopped by a budget/auth error)
    error: str | None = None
    cost_usd: float = 0.0  # cost of the answer (for a cached one: what it cost when it was made)
    cached: bool = False
    teacher: str | None = None
    error_type: str | None = None
    attempts: int = 0  # HTTP attempts made by this call (0 when cached or skipped)
    tag: Any = None  # the request's tag, echoed back for the caller's bookkeeping


@dataclass
class Prepared:
    """A call named but not made: its cache key and what its outcome is recorded with."""
    key: str
    messages: list[dict]
    params: dict[str, Any]
    record: dict[str, Any]  # keyword arguments of cache.record shared by every outcome


def litellm_pricing(cfg: TeacherConfig, p: tuple[float, float] | None) -> dict[str, Any]:
    """Per-call prices handed to LiteLLM so that its own cost bookkeeping (which
    runs on every response, whether we read it or not) prices from them instead
    of searching its model table.  For a model outside the table that search
    fails and is not cached, so it is repeated on every call and costs more CPU
    than the rest of the response handling.  Only where our cost does not come
    from LiteLLM: configured prices (call_cost computes them itself) or a model
    with no price at all (free, cost 0).  A model in the table gets nothing, so
    LiteLLM's own figure (cached-token discounts included) is still the one we
    record.  The same prices also go in as the deployment's `model_info` (the
    way LiteLLM's Router prices a deployment): its zero-cost diagnostic and
    billed-rate lookups then read them instead of searching the table again.
    These are LiteLLM parameters, never sent to the provider."""
    if cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None:
        rates = {"input_cost_per_token": cfg.input_cost_per_token or 0.0,
                 "output_cost_per_token": cfg.output_cost_per_token or 0.0}
    elif p is None:
        rates = {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}
    else:
        return {}
    return {**rates, "litellm_metadata": {"model_info": dict(rates)}}


class TeacherClient:
    def __init__(self, cfg: TeacherConfig, store: Any, budget: Budget | None = None) -> None:
        if cfg.is_self:
            raise TeacherBadRequest("the 'self' teacher is sampled from the student by the loop, not through LiteLLM",
                                    teacher=cfg.name)
        self.cfg = cfg
        self.store = store
        self.budget = budget or Budget(None)
        self._limiter: RateLimiter | None = None
        self._limiter_loop: asyncio.AbstractEventLoop | None = None
        self.http_attempts = 0  # every LiteLLM request this client made
        self.prices = prices(cfg)  # looked up once: LiteLLM's table lookups are slow for unknown models
        self._known_versions: set[str] = set()  # prompt versions seen in the store (rows are never deleted)
        self._router: Any = None  # litellm.Router over cfg.deployments, built on first use

    # -- parameters ---------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Every generation parameter: all of them are part of the cache key."""
        p: dict[str, Any] = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        if self.cfg.top_p is not None:
            p["top_p"] = self.cfg.top_p
        p.update(self.cfg.extra)
        return p

    def secrets(self) -> tuple[str, ...]:
        """Values that must never be stored: the keys in the api_key_env variables
        (the teacher's, or each deployment's)."""
        return tuple(v for d in self.cfg.endpoints() if d.api_key_env and (v := os.environ.get(d.api_key_env)))

    def api_key(self) -> str | None:
        """The key of the teacher's own endpoint, from the environment (never stored)."""
        return endpoint_key(self.cfg.name, self.cfg.api_key_env, self.cfg.api_base)

    @property
    def limiter(self) -> RateLimiter:
        # asyncio primitives belong to one event loop; a new loop gets fresh ones.
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._limiter_loop is not loop:
            # the pacing's latency average carries over to the new loop's limiter
            self._limiter = RateLimiter(self.cfg.rpm, self.cfg.tpm, self.cfg.max_concurrency,
                                        latency_s=self._limiter.latency_s if self._limiter else None)
            self._limiter_loop = loop
        return self._limiter

    def retrying(self) -> AsyncRetrying:
        """Tenacity over the transient kinds, with this teacher's attempts and
        backoff (the batch path's file and batch requests use it too)."""
        return AsyncRetrying(stop=stop_after_attempt(self.cfg.max_retries + 1), wait=self._wait,
                             retry=retry_if_exception_type(RETRYABLE), reraise=True)

    def _wait(self, retry_state) -> float:
        base = wait_exponential_jitter(multiplier=self.cfg.backoff_initial_s, max=self.cfg.backoff_max_s,
                                       jitter=self.cfg.backoff_initial_s)(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        ra = getattr(exc, "retry_after", None)
        if ra is not None:
            return max(base, min(float(ra), self.cfg.retry_after_max_s))
        return base

    # -- the call -------------------------------------------------------------
    def prepare(self, messages: list[dict], *, template: Any = None, prompt_version: str | None = None,
                sample_index: int = 0, run_id: int | None = None, k: int | None = None) -> Prepared:
        """The cache key of a call and what its outcome is recorded with; the
        synchronous and the batch path (teachers/batch.py) share it, so a
        result lands under the same key whichever path fetched it.

        `template` is a template name or a prompts.Template (then its version is
        recorded and used)."""
        cfg = self.cfg
        template_name = template
        # the prompt version must be in the store (teacher_calls refers to it); checked
        # once per version and client, not with a write transaction per request
        if template is not None and not isinstance(template, str):
            prompt_version, template_name = template.version, template.name
            if prompt_version not in self._known_versions:
                from prompts import record_prompt_version

                record_prompt_version(self.store, template)
                self._known_versions.add(prompt_version)
        elif prompt_version is not None and prompt_version not in self._known_versions:
            if not cache.prompt_version_exists(self.store, prompt_version):
                raise ValueError(f"prompt version {prompt_version[:12]} is not in prompt_versions; "
                                 "record it with prompts.record_prompt_version(store, template) first")
            self._known_versions.add(prompt_version)
        params = self.params()
        # cfg.model, never a deployment's: which deployment answers does not change the key
        key = cache.cache_key(model=cfg.model, messages=messages, params=params, template=template_name,
                              prompt_version=prompt_version, sample_index=sample_index)
        request = {"model": cfg.model, "api_base": cfg.api_base, "messages": messages,
                   "params": params, "template": template_name, "prompt_version": prompt_version,
                   "sample_index": sample_index}
        if cfg.deployments:
            request["deployments"] = [d.api_base for d in cfg.endpoints()]
        record = dict(teacher=cfg.name, model=cfg.model, template=template_name, prompt_version=prompt_version,
                      request=request, run_id=run_id, k=k, secrets=self.secrets())
        return Prepared(key, messages, params, record)

    async def complete(self, messages: list[dict], *, template: Any = None, prompt_version: str | None = None,
                       sample_index: int = 0, run_id: int | None = None, k: int | None = None,
                       tag: Any = None, stop_event: asyncio.Event | None = None) -> CallResult:
        """One cached, budgeted, rate-limited, retried completion (arguments as
        `prepare`).  Returns status "ok" or "error" (transient errors
        exhausted); raises TeacherAuthError / TeacherBadRequest / BudgetExceeded."""
        cfg = self.cfg
        prep = self.prepare(messages, template=template, prompt_version=prompt_version, sample_index=sample_index,
                            run_id=run_id, k=k)
        key, params, record = prep.key, prep.params, prep.record
        hit = cache.get(self.store, key)
        if hit is not None and hit.status == "ok":
            return CallResult(key, hit.text, "ok", None, hit.cost_usd, True, cfg.name, None, 0, tag)
        try:
            send = self._sender()
        except TeacherAuthError as e:
            cache.record(self.store, key, status="error", error_type=type(e).__name__, error=str(e), attempts=0, **record)
            raise
        est_tokens = estimate_prompt_tokens(messages) + cfg.max_tokens
        attempts = 0
        # settled on every path below: a reservation left behind would keep waiters waiting
        reservation = await self.budget.acquire(estimate_cost(cfg, messages, self.prices), teacher=cfg.name)
        try:
            async def attempt() -> tuple[Any, str, float]:
                nonlocal attempts
                async with self.limiter.slot(est_tokens):
                    if stop_event is not None and stop_event.is_set():
                        raise _Stopped()
                    attempts += 1
                    self.http_attempts += 1
                    t0 = time.perf_counter()
                    try:
                        resp = await send(messages, params)
                    except Exception as e:  # the boundary: LiteLLM/OpenAI/httpx errors become ours
                        raise translate(e, teacher=cfg.name, model=cfg.model, api_base=redact(cfg.api_base),
                                        api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s) from None
                    latency = time.perf_counter() - t0
                    if self._router is not None:  # the deployments the Router tried besides the one that answered
                        extra = routed_attempts(resp)
                        attempts += extra
                        self.http_attempts += extra
                    self.limiter.observe_latency(latency)
                usage = getattr(resp, "usage", None)
                self.limiter.settle_tokens(est_tokens, getattr(usage, "total_tokens", None))
                try:
                    text = resp.choices[0].message.content
                except (AttributeError, IndexError, TypeError):
                    text = None
                if not text or not text.strip():
                    raise TeacherBadResponse("empty completion (no content)", teacher=cfg.name)
                return resp, text, latency

            resp, text, latency = await self.retrying()(attempt)
        except _Stopped:
            self.budget.settle(reservation, 0.0)
            return CallResult(key, None, "skipped", "run stopped before this call", 0.0, False, cfg.name,
                              "Stopped", attempts, tag)
        except TeacherError as err:  # reraise=True: tenacity raises the last attempt's own error
            self.budget.settle(reservation, 0.0)
            cache.record(self.store, key, status="error", error_type=type(err).__name__, error=str(err),
                         attempts=attempts, **record)
            if isinstance(err, FATAL):
                raise err
            return CallResult(key, None, "error", str(err), 0.0, False, cfg.name, type(err).__name__, attempts, tag)
        except BaseException:
            self.budget.settle(reservation, 0.0)  # cancelled: nothing recorded, retried next time
            raise
        usage = getattr(resp, "usage", None)
        pt = getattr(usage, "prompt_tokens", None)
        ct = getattr(usage, "completion_tokens", None)
        cost = call_cost(cfg, resp, pt, ct, self.prices)
        self.budget.settle(reservation, cost)
        summary = _response_summary(resp)
        if self._router is not None:
            summary["deployment"] = answered_by(resp)
        cache.record(self.store, key, status="ok", text=text, response=summary, attempts=attempts,
                     latency_s=latency, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost, **record)
        return CallResult(key, text, "ok", None, cost, False, cfg.name, None, attempts, tag)

    def _sender(self) -> Callable[[list[dict], dict], Awaitable[Any]]:
        """The coroutine that sends one request: litellm.acompletion on the
        teacher's endpoint, or its Router over the deployments (built on first
        use, as it needs the keys).  TeacherAuthError when a key is missing."""
        cfg = self.cfg
        litellm = import_litellm()
        if cfg.deployments:
            if self._router is None:
                keys = [endpoint_key(cfg.name, d.api_key_env, d.api_base) for d in cfg.endpoints()]
                self._router = build_router(cfg, keys, litellm_pricing(cfg, self.prices))
            router = self._router

            async def routed(messages: list[dict], params: dict) -> Any:
                return await router.acompletion(model=cfg.name, messages=messages, timeout=cfg.timeout_s, **params)
            return routed
        api_key = self.api_key()

        async def direct(messages: list[dict], params: dict) -> Any:
            return await litellm.acompletion(
                model=cfg.model, messages=messages, api_base=cfg.api_base, api_key=api_key,
                timeout=cfg.timeout_s, max_retries=0, num_retries=0,
                # fresh per call (LiteLLM may add to the metadata dict it is given);
                # a key the teacher's `extra` also sets is the teacher's
                **{**litellm_pricing(cfg, self.prices), **params})
        return direct


class _Stopped(Exception):
    pass


def _response_summary(resp: Any) -> dict:
    """What we keep of the provider response: ids, usage and finish reason (the
    text itself is in `texts`)."""
    usage = getattr(resp, "usage", None)
    try:
        finish = resp.choices[0].finish_reason
    except (AttributeError, IndexError, TypeError):
        finish = None
    return {
        "id": getattr(resp, "id", None),
        "model": getattr(resp, "model", None),
        "finish_reason": finish,
        "usage": {
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None),
            "total_tokens": getattr(usage, "total_tokens", None),
        },
    }
