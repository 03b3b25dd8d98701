"""The teacher-call cache: the `teacher_calls` table of the workspace store.

Key (DESIGN §4) = sha256 over the model string, the resolved messages, every
generation parameter, the template name and version hash, and the sample
index.  The api_base and the API key are deliberately *not* in the key: the
same model behind another port (or another key) gives the same answer, and a
key must never be hashed into anything we store.  Every row written goes
through `redact` (request and error): whatever a setting smuggled in, no
credential reaches the table.

A success is written once and never overwritten (`INSERT ... ON CONFLICT ...
WHERE status != 'ok'`), so a cached answer is never requested or paid again;
an error row is replaced by the next attempt's outcome.  All SQL on the cache
lives in this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def get(store: Any, key: str) -> CachedCall | None:
    row = store.conn.execute(
        "SELECT c.status, t.body, c.error_type, c.error, c.cost_usd, c.attempts "
        "FROM teacher_calls c LEFT JOIN texts t ON t.hash = c.response_hash WHERE c.key = ?",
        (key,),
    ).fetchone()
    if row is None:
        return None
    return CachedCall(key, row[0], row[1], row[2], row[3], float(row[4] or 0.0), int(row[5] or 0))


def prompt_version_exists(store: Any, version: str) -> bool:
    return store.conn.execute("SELECT 1 FROM prompt_versions WHERE id = ?", (version,)).fetchone() is not None


def record(store: Any, key: str, *, teacher: str, model: str, template: str | None, prompt_version: str | None,
           request: dict, status: str, text: str | None = None, response: dict | None = None,
           error_type: str | None = None, error: str | None = None, attempts: int = 1,
           latency_s: float | None = None, prompt_tokens: int | None = None,
           completion_tokens: int | None = None, cost_usd: float = 0.0,
           run_id: int | None = None, k: int | None = None, secrets: tuple[str, ...] = ()) -> None:
    """Upsert one call's outcome in one transaction.  A stored success is kept
    as is; attempts accumulate across runs so flaky teachers are visible.
    `secrets` (the key the call used) are masked wherever they appear."""
    now = _now()
    request, error = redact(request, secrets), redact(error, secrets)
    with store.transaction() as conn:
        text_hash = store.put_text(text) if text is not None else None
        conn.execute(
            """
            INSERT INTO teacher_calls (key, teacher, model, template, prompt_version, request, response,
                response_hash, status, error_type, error, attempts, latency_s, prompt_tokens,
                completion_tokens, cost_usd, run_id, k, created, updated)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(key) DO UPDATE SET
                teacher = excluded.teacher, model = excluded.model, response = excluded.response,
                response_hash = excluded.response_hash, status = excluded.status,
                error_type = excluded.error_type, error = excluded.error,
                attempts = teacher_calls.attempts + excluded.attempts, latency_s = excluded.latency_s,
                prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
                cost_usd = teacher_calls.cost_usd + excluded.cost_usd,
                run_id = excluded.run_id, k = excluded.k, updated = excluded.updated
            WHERE teacher_calls.status != 'ok'
            """,
            (key, teacher, model, template, prompt_version, canonical_json(request),
             canonical_json(response) if response is not None else None, text_hash, status, error_type, error,
             attempts, latency_s, prompt_tokens, completion_tokens, cost_usd, run_id, k, now, now),
        )


def spend(store: Any, run_id: int | None = None) -> float:
    if run_id is None:
        row = store.conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM teacher_calls").fetchone()
    else:
        row = store.conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM teacher_calls WHERE run_id = ?", (run_id,)).fetchone()
    return float(row[0])
