"""The teacher-call cache: the `teacher_calls` table of the workspace store.

Key (DESIGN §4) = sha256 over the model string, the resolved messages, every
generation parameter, the template name and version hash, and the sample
index.  The api_base and the API key are deliberately *not* in the key: the
same model behind another port (or another key) gives the same answer, and a
key must never be hashed into anything we store.  Every row written goes
through `redact` (request and error): whatever a setting smuggled in, no
credential reaches the table.

The rows live in the store (store/calls.py: `Store.get_teacher_call`,
`Store.record_teacher_call`, `Store.spend`), which keeps their one rule: a
success is written once and never overwritten, so a cached answer is never
requested or paid again; an error row is replaced by the next attempt's
outcome, its attempts and cost added to the row's.  This module computes the
key, masks credentials and gives the rows as `CachedCall`; it runs no SQL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .config import redact


def canonical_json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def cache_key(*, model: str, messages: list[dict], params: dict[str, Any], template: str | None,
              prompt_version: str | None, sample_index: int) -> str:
    doc = {
        "model": model,
        "messages": messages,
        "params": params,
        "template": template,
        "prompt_version": prompt_version,
        "sample_index": sample_index,
    }
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


@dataclass
class CachedCall:
    key: str
    status: str  # ok | error
    text: str | None
    error_type: str | None
    error: str | None
    cost_usd: float
    attempts: int


def get(store: Any, key: str) -> CachedCall | None:
    row = store.get_teacher_call(key)
    if row is None:
        return None
    return CachedCall(key, row["status"], row["text"], row["error_type"], row["error"],
                      float(row["cost_usd"] or 0.0), int(row["attempts"] or 0))


def prompt_version_exists(store: Any, version: str) -> bool:
    return store.has_prompt_version(version)


def record(store: Any, key: str, *, teacher: str, model: str, template: str | None, prompt_version: str | None,
           request: dict, status: str, text: str | None = None, response: dict | None = None,
           error_type: str | None = None, error: str | None = None, attempts: int = 1,
           latency_s: float | None = None, prompt_tokens: int | None = None,
           completion_tokens: int | None = None, cost_usd: float = 0.0,
           run_id: int | None = None, k: int | None = None, secrets: tuple[str, ...] = ()) -> None:
    """Record one call's outcome (Store.record_teacher_call: a stored success
    is kept as is; attempts and cost accumulate across tries, so flaky
    teachers are visible).  `secrets` (the key the call used) are masked
    wherever they appear in the request and the error."""
    store.record_teacher_call(
        key, teacher=teacher, model=model, template=template, prompt_version=prompt_version,
        request=redact(request, secrets), status=status, text=text, response=response, error_type=error_type,
        error=redact(error, secrets), attempts=attempts, latency_s=latency_s, prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens, cost_usd=cost_usd, run_id=run_id, k=k,
    )


def spend(store: Any, run_id: int | None = None) -> float:
    return store.spend(run_id)
