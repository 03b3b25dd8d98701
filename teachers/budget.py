"""Cost per call and the hard budget.

Cost: the configured per-token prices when the teacher has them (local or
unknown models), otherwise LiteLLM's price table (`litellm.completion_cost`,
bundled copy: LITELLM_LOCAL_MODEL_COST_MAP).  A model with neither is free
(a local server): cost 0, and the budget never stops it.

Budget: before a call, `reserve(estimate)` sets aside the worst case of that
call (prompt tokens + max_tokens at the model's prices).  A reservation that
would take spent + reserved past `budget_usd` raises BudgetExceeded, so
concurrent calls cannot overshoot together.  After the call `settle` replaces
the reservation by the actual cost (0 for a failed call).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .config import TeacherConfig
from .errors import BudgetExceeded

# Floating-point slack: N calls of cost c must fit in a budget of exactly N*c.
_EPS = 1e-9


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """A cheap upper-ish estimate (about 4 characters per token, plus per-message overhead).
    Used for token buckets and budget reservations, never for billing."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 3 + 4 * len(messages) + 2


def prices(cfg: TeacherConfig) -> tuple[float, float] | None:
    """(input, output) USD per token, or None when unknown (treated as free)."""
    if cfg.input_cost_per_token is not None or cfg.output_cost_per_token is not None:
        return (cfg.input_cost_per_token or 0.0, cfg.output_cost_per_token or 0.0)
    import litellm

    try:
        info = litellm.get_model_info(cfg.model)
    except Exception:
        return None
    inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if inp is None and out is None:
        return None
    return (float(inp or 0.0), float(out or 0.0))


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
    """A hard cap in USD shared by every teacher of a run (thread-safe)."""

    def __init__(self, budget_usd: float | None, spent_usd: float = 0.0) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = float(spent_usd)
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return self.budget_usd - self.spent_usd - self.reserved_usd

    def reserve(self, estimate: float, *, teacher: str | None = None) -> Reservation:
        with self._lock:
            if self.budget_usd is not None and estimate > 0:
                if self.spent_usd + self.reserved_usd + estimate > self.budget_usd * (1 + _EPS) + _EPS:
                    raise BudgetExceeded(
                        f"budget_usd {self.budget_usd:g} reached: spent ${self.spent_usd:.6f}"
                        f" (+${self.reserved_usd:.6f} in flight), the next call may cost up to ${estimate:.6f};"
                        " raise loop.budget_usd in distillery.toml to continue",
                        teacher=teacher, spent_usd=self.spent_usd, budget_usd=self.budget_usd,
                    )
            self.reserved_usd += estimate
            return Reservation(estimate)

    def settle(self, r: Reservation, actual: float) -> None:
        with self._lock:
            if r.settled:
                return
            r.settled = True
            self.reserved_usd = max(0.0, self.reserved_usd - r.amount)
            self.spent_usd += actual
