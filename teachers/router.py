"""Routed teachers: one teacher served by several deployments through litellm.Router.

The teacher's deployments (`[[teachers.deployments]]`) form one Router model
group named after the teacher, and the client sends each request to that
group instead of to one api_base.  The cache key stays the teacher's
(teachers/cache.py over cfg.model), so which deployment answered changes
nothing that is stored but the response summary.

Router settings, and why:

- routing: "simple-shuffle" (random, the default), or "usage-based-routing-v2"
  when a deployment sets rpm or tpm, because simple-shuffle only uses those as
  weights while usage-based routing keeps each deployment under them;
- fallbacks: `enable_weighted_failover` with `max_fallbacks` = deployments - 1:
  a retryable failure on one deployment re-picks another one at once, inside
  the same call.  Every deployment is in the teacher's own group, so there is
  no other group for Router's cross-group `fallbacks` to name;
- cooldowns: a deployment that fails more than `allowed_fails` times within a
  minute is left out for `cooldown_s` (cooldown_time); when all are cooling
  down, Router raises a 429 that the client waits out (errors.translate reads
  its cooldown_time as Retry-After);
- retries: none in Router (`num_retries=0`, each deployment `max_retries=0`):
  retries with backoff stay the client's, around the whole Router call, so
  max_retries and backoff_* mean the same as for a single endpoint.

Keys are read from each deployment's api_key_env when the Router is built and
live only in the Router's memory; the client masks them in everything stored.
"""

from __future__ import annotations

from typing import Any

from .config import TeacherConfig
from .provider import import_litellm

_PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")


def build_router(cfg: TeacherConfig, keys: list[str | None], pricing: dict[str, Any]) -> Any:
    """A litellm.Router over cfg.endpoints(), with `keys[i]` for endpoint i and the
    per-token prices of `pricing` (client.litellm_pricing: empty for a model
    LiteLLM prices itself) on every deployment, as Router prices a deployment."""
    litellm = import_litellm()

    rates = {k: pricing[k] for k in _PRICE_KEYS if k in pricing}
    model_list = []
    for i, (d, key) in enumerate(zip(cfg.endpoints(), keys)):
        params: dict[str, Any] = {"model": d.model, "api_key": key, "max_retries": 0, **rates}
        params.update({k: v for k, v in (("api_base", d.api_base), ("rpm", d.rpm), ("tpm", d.tpm)) if v is not None})
        model_list.append({"model_name": cfg.name, "litellm_params": params,
                           "model_info": {"id": f"{cfg.name}/{i}", **rates}})
    limited = any(d.rpm is not None or d.tpm is not None for d in cfg.deployments)
    return litellm.Router(
        model_list=model_list,
        routing_strategy="usage-based-routing-v2" if limited else "simple-shuffle",
        num_retries=0, retry_after=0,
        enable_weighted_failover=True, max_fallbacks=max(len(model_list) - 1, 0),
        allowed_fails=cfg.allowed_fails, cooldown_time=cfg.cooldown_s,
        timeout=cfg.timeout_s,
    )


def routed_attempts(resp: Any) -> int:
    """How many deployments Router tried and gave up on before the one that
    answered (its x-litellm-attempted-* response headers)."""
    hidden = getattr(resp, "_hidden_params", None) or {}
    headers = (hidden.get("additional_headers") or {}) if isinstance(hidden, dict) else {}
    n = 0
    for name in ("x-litellm-attempted-retries", "x-litellm-attempted-fallbacks"):
        try:
            n += int(headers.get(name) or 0)
        except (TypeError, ValueError):
            pass
    return n


def answered_by(resp: Any) -> str | None:
    """The deployment id ("teacher/i") that answered, for the response summary."""
    hidden = getattr(resp, "_hidden_params", None) or {}
    return hidden.get("model_id") if isinstance(hidden, dict) else None
