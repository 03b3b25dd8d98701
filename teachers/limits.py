"""Per-teacher rate limits: async token buckets for requests/min and tokens/min,
plus a concurrency cap.

A bucket holds up to `capacity` units and refills at `rate_per_min / 60` units
per second.  `acquire(n)` waits until n units are available, then takes them;
waiters are served in arrival order (one lock), so a large request is not
starved by a stream of small ones.  A request larger than the capacity is
allowed once the bucket is full (otherwise it could never run).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator


class TokenBucket:
    def __init__(self, rate_per_min: float, capacity: float | None = None, *, clock=time.monotonic) -> None:
        if rate_per_min <= 0:
            raise ValueError("rate_per_min must be > 0")
        self.rate = rate_per_min / 60.0  # units per second
        # Default burst: one second's worth, at least one request.
        self.capacity = float(capacity if capacity is not None else max(1.0, self.rate))
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
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


class RateLimiter:
    """requests/min + tokens/min + max concurrency for one teacher."""

    def __init__(self, rpm: float | None, tpm: float | None, max_concurrency: int) -> None:
        self.requests = TokenBucket(rpm, max(1.0, rpm / 60.0)) if rpm else None
        # tokens/min: allow a burst of one second's tokens, but at least one large request.
        self.tokens = TokenBucket(tpm, max(tpm / 60.0, 1.0)) if tpm else None
        self.max_concurrency = max_concurrency
        self._sem = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.peak_in_flight = 0

    @asynccontextmanager
    async def slot(self, est_tokens: int) -> AsyncIterator[None]:
        """Hold one concurrency slot after both buckets allow the request."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(est_tokens)
        async with self._sem:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1

    def settle_tokens(self, estimated: int, actual: int | None) -> None:
        if self.tokens is not None and actual is not None:
            self.tokens.adjust(actual - estimated)
