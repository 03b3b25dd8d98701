"""Per-teacher rate limits: async token buckets for requests/min and tokens/min,
plus a concurrency cap.

A bucket holds up to `capacity` units and refills at `rate_per_min / 60` units
per second.  `acquire(n)` waits until n units are available, then takes them;
waiters are served in arrival order (one lock), so a large request is not
starved by a stream of small ones.  A request larger than the capacity is
allowed once the bucket is full (otherwise it could never run).

Pacing: a teacher's call starts are spread at least
min(latency / (2 · max_concurrency), 25 ms) apart, latency being a running
average of its successful calls.  Without it, C calls that start together
finish together, and LiteLLM's few milliseconds of CPU per call (building the
request, parsing the response, its cost bookkeeping) pile up on the one event
loop for every wave, so each call waits for the others' CPU work: measured
0.87 of the ideal C/L against a 200 ms server, 0.91-0.93 with pacing
(bench/teacher_bench.py).  Half the latency spread over the concurrency cap
never binds in steady state (which needs one start per latency / C), and the
cap keeps a slow model's first wave from being spread over seconds.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator


class TokenBucket:
    def __init__(self, rate_per_min: float, capacity: float | None = None) -> None:
        if rate_per_min <= 0:
            raise ValueError("rate_per_min must be > 0")
        self.rate = rate_per_min / 60.0  # units per second
        # Default burst: one second's worth, at least one request.
        self.capacity = float(capacity if capacity is not None else max(1.0, self.rate))
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, n: float = 1.0) -> float:
        """Take n units, waiting as needed; returns the seconds waited."""
        need = min(float(n), self.capacity)
        waited = 0.0
        async with self._lock:
            while True:
                self._refill()
                if self._level >= need:
                    self._level -= float(n)  # may go negative for n > capacity: repaid by waiting later
                    return waited
                delay = (need - self._level) / self.rate
                waited += delay
                await asyncio.sleep(delay)

    def adjust(self, delta: float) -> None:
        """Give back (delta < 0) or charge (delta > 0) units after the fact,
        e.g. when a response used fewer tokens than estimated."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)


MAX_START_INTERVAL_S = 0.025  # pacing never spaces starts further apart than this
LATENCY_EWMA = 0.2  # weight of the newest latency in the running average


class RateLimiter:
    """requests/min + tokens/min + max concurrency (+ start pacing) for one teacher."""

    def __init__(self, rpm: float | None, tpm: float | None, max_concurrency: int, *,
                 latency_s: float | None = None) -> None:
        # the default burst: one second's worth (at least one request; a larger one
        # waits for a full bucket)
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None
        self.max_concurrency = max_concurrency
        self._sem = asyncio.Semaphore(max_concurrency)
        self.latency_s = latency_s  # running average of successful calls; None until one is seen
        self._next_start = 0.0

    def observe_latency(self, seconds: float) -> None:
        """Feed one successful call's latency into the pacing average."""
        if self.latency_s is None:
            self.latency_s = seconds
        else:
            self.latency_s += LATENCY_EWMA * (seconds - self.latency_s)

    @property
    def start_interval(self) -> float:
        """Minimum seconds between two call starts (0 until a latency is known)."""
        if self.latency_s is None:
            return 0.0
        return min(self.latency_s / (2 * self.max_concurrency), MAX_START_INTERVAL_S)

    @asynccontextmanager
    async def slot(self, est_tokens: int) -> AsyncIterator[None]:
        """Hold one concurrency slot after both buckets allow the request."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(est_tokens)
        async with self._sem:
            interval = self.start_interval
            if interval > 0:  # reserve the next start time in arrival order
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + interval
                if start > now:
                    await asyncio.sleep(start - now)
            yield

    def settle_tokens(self, estimated: int, actual: int | None) -> None:
        if self.tokens is not None and actual is not None:
            self.tokens.adjust(actual - estimated)
