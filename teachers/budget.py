"""Cost per call and the hard budget.

Cost: the configured per-token prices when the teacher has them (local or
unknown models), otherwise LiteLLM's price table (`litellm.completion_cost`,
bundled copy: LITELLM_LOCAL_MODEL_COST_MAP).  A model with neither is free
(a local server): cost 0, and the budget never stops it.  A batch teacher's
lines cost `batch_prices`: the table's batch prices, else half.

Budget: a call reserves its worst case (prompt tokens + max_tokens at the
model's prices) when it starts, and `settle` replaces the reservation by the
actual cost when it ends (0 for a failed call).  The cap is never passed:
settled + in flight + this estimate must fit.  When it does not fit only
because of calls in flight, `acquire` waits for them to settle instead of
refusing: a reservation is a worst case, and actual costs are usually far
below it (a 0.003 cap with 0.0012 reservations would otherwise stop after two
concurrent calls that cost almost nothing).  A call is refused
(BudgetExceeded) only when settled spend + its estimate passes the cap: spend
only grows, so it could never fit.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from .config import TeacherConfig
from .errors import BudgetExceeded
from .provider import import_litellm

# Floating-point slack: N calls of cost c must fit in a budget of exactly N*c.
_EPS = 1e-9


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """A cheap upper-ish estimate: one token per 3 characters (English text runs
    nearer 4, so this errs high, as a reservation should), plus 4 tokens per
    message and 2 for the reply's start.  Used for token buckets and budget
    reservations, never for billing."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 3 + 4 * len(messages) + 2


def prices(cfg: TeacherConfig) -> tuple[float, float] | None:
    """(input, output) USD per token, or None when unknown (treated as free)."""
    if cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None:
        return (cfg.input_cost_per_token or 0.0, cfg.output_cost_per_token or 0.0)
    litellm = import_litellm()
    try:
        info = litellm.get_model_info(cfg.model)
    except Exception:
        return None
    inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if inp is None and out is None:
        return None
    return (float(inp or 0.0), float(out or 0.0))


def batch_prices(cfg: TeacherConfig, p: tuple[float, float] | None) -> tuple[float, float] | None:
    """(input, output) USD per token at the batch price, `p` = prices(cfg): the
    price table's `input/output_cost_per_token_batches` where it has them, else
    half of `p` (configured prices are always halved).  The rule of LiteLLM's
    cost_calculator.batch_cost_calculator for text tokens, looked up once per
    teacher instead of once per line."""
    if p is None:
        return None
    if cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None:
        return (p[0] / 2, p[1] / 2)
    litellm = import_litellm()
    try:
        info = litellm.get_model_info(cfg.model)
    except Exception:
        info = {}
    inp, out = info.get("input_cost_per_token_batches"), info.get("output_cost_per_token_batches")
    return (p[0] / 2 if inp is None else float(inp), p[1] / 2 if out is None else float(out))


def estimate_cost(cfg: TeacherConfig, messages: list[dict], p: tuple[float, float] | None) -> float:
    """Worst-case cost of one call at prices `p` (= prices(cfg), which callers look up once)."""
    if p is None:
        return 0.0
    return estimate_prompt_tokens(messages) * p[0] + cfg.max_tokens * p[1]


def call_cost(cfg: TeacherConfig, response: Any, prompt_tokens: int | None, completion_tokens: int | None,
              p: tuple[float, float] | None) -> float:
    """Actual cost of a finished call at prices `p` (= prices(cfg)): configured
    prices first; else the cost LiteLLM already computed for the response (its
    price table, including cached-token discounts); else the table's per-token
    prices; else 0 (an unknown model without configured prices: a local/free server)."""
    if p is None:
        return 0.0
    configured = cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None
    if not configured:
        hidden = getattr(response, "_hidden_params", None) or {}
        stamped = hidden.get("response_cost") if isinstance(hidden, dict) else getattr(hidden, "response_cost", None)
        if stamped is not None:
            return float(stamped)
    return (prompt_tokens or 0) * p[0] + (completion_tokens or 0) * p[1]


@dataclass
class Reservation:
    amount: float
    settled: bool = False


class Budget:
    """A hard cap in USD shared by every teacher of a run (thread-safe; callers
    may wait on it from any event loop)."""

    def __init__(self, budget_usd: float | None, spent_usd: float = 0.0) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = float(spent_usd)  # settled: the actual cost of finished calls
        self.reserved_usd = 0.0  # in flight: the worst cases of calls not settled yet
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def _over(self, amount: float) -> bool:
        assert self.budget_usd is not None
        return amount > self.budget_usd * (1 + _EPS) + _EPS

    def _fits(self, estimate: float, teacher: str | None) -> bool:
        """Under the lock: True when the call fits now, False when it fits once
        calls in flight settle; BudgetExceeded when it never can."""
        if self.budget_usd is None or estimate <= 0:
            return True
        if self._over(self.spent_usd + estimate):
            raise self._exceeded(estimate, teacher)
        return not self._over(self.spent_usd + self.reserved_usd + estimate)

    def _exceeded(self, estimate: float, teacher: str | None) -> BudgetExceeded:
        total = self.spent_usd + self.reserved_usd + estimate
        return BudgetExceeded(
            f"budget_usd {self.budget_usd:g} reached: settled ${self.spent_usd:.6f} + in flight"
            f" ${self.reserved_usd:.6f} + this call's estimate ${estimate:.6f} (prompt + max_tokens at the"
            f" teacher's prices) = ${total:.6f} > cap ${self.budget_usd:g}; raise loop.budget_usd in"
            " distillery.toml and run `distillery run` again to continue (answers already paid for are cached)",
            teacher=teacher, spent_usd=self.spent_usd, reserved_usd=self.reserved_usd, estimate_usd=estimate,
            budget_usd=self.budget_usd or 0.0,
        )

    def _take(self, estimate: float) -> Reservation:
        self.reserved_usd += estimate
        return Reservation(estimate)

    def reserve(self, estimate: float, *, teacher: str | None = None) -> Reservation:
        """Reserve now or raise BudgetExceeded (synchronous code cannot wait for
        calls in flight, so what does not fit now is refused)."""
        with self._lock:
            if not self._fits(estimate, teacher):
                raise self._exceeded(estimate, teacher)
            return self._take(estimate)

    async def acquire(self, estimate: float, *, teacher: str | None = None) -> Reservation:
        """Reserve `estimate`, waiting while only calls in flight keep it from
        fitting; BudgetExceeded when settled spend alone leaves no room."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._fits(estimate, teacher):
                    return self._take(estimate)
                # something is in flight (else it would fit or have raised), so a settle will wake us
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                await waiter[1]
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def settle(self, r: Reservation, actual: float) -> None:
        with self._lock:
            if r.settled:
                return
            r.settled = True
            self.reserved_usd = max(0.0, self.reserved_usd - r.amount)
            self.spent_usd += actual
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:  # each re-checks: the room may now be enough for some
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # its loop is closed: nobody is waiting there any more
                pass


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
