"""Teacher calls: the cache (`teacher_calls`) and the batch jobs of batch
teachers (`teacher_batches`, `teacher_batch_lines`).

One row per cache key (teachers/cache.py computes the key; DESIGN §4) holds
that request's latest outcome.  A success is written once and never
overwritten, so a cached answer is never requested or paid again; an error row
is replaced by the next attempt's outcome, with the attempts and the cost of
every try added up (a flaky teacher stays visible, and spend counts what was
paid).  The row keeps what its first write said about the request (template,
prompt version, request, created).

A mixin of `Store`.  Redacting credentials is the caller's job (teachers/
cache.py masks the request and the error before they reach this module).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .util import compact_json, now

_CALL_COLUMNS = (
    "key", "teacher", "model", "template", "prompt_version", "request", "response", "response_hash", "status",
    "error_type", "error", "attempts", "latency_s", "prompt_tokens", "completion_tokens", "cost_usd", "run_id", "k",
    "created", "updated",
)

# Insert a new key; on a known key, replace the outcome of a row that is not a
# success (attempts and cost add up) and leave a success exactly as it is.
_UPSERT = f"""
    INSERT INTO teacher_calls ({', '.join(_CALL_COLUMNS)})
    VALUES ({', '.join('?' * len(_CALL_COLUMNS))})
    ON CONFLICT(key) DO UPDATE SET
        teacher = excluded.teacher, model = excluded.model, response = excluded.response,
        response_hash = excluded.response_hash, status = excluded.status,
        error_type = excluded.error_type, error = excluded.error,
        attempts = teacher_calls.attempts + excluded.attempts, latency_s = excluded.latency_s,
        prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens,
        cost_usd = teacher_calls.cost_usd + excluded.cost_usd,
        run_id = excluded.run_id, k = excluded.k, updated = excluded.updated
    WHERE teacher_calls.status != 'ok'
"""


class CallsMixin:
    # --------------------------------------------------- teacher calls (cache)
    def get_teacher_call(self, key: str) -> dict | None:
        """The row of a cache key (None: never asked): every column of
        teacher_calls, `request` and `response` decoded from JSON, and `text`,
        the completion (None for an error)."""
        cur = self.conn.execute(
            "SELECT c.*, t.body FROM teacher_calls c LEFT JOIN texts t ON t.hash = c.response_hash WHERE c.key = ?",
            (key,),
        )
        r = cur.fetchone()
        if r is None:
            return None
        d = dict(zip([col[0] for col in cur.description[:-1]], r[:-1]))
        for f in ("request", "response"):
            try:
                d[f] = json.loads(d[f])
            except (TypeError, json.JSONDecodeError):
                pass  # NULL, or a value that is not JSON, stays as stored
        d["text"] = r[-1]
        return d

    def record_teacher_call(
        self, key: str, *, teacher: str, model: str, status: str, request: dict | None = None,
        template: str | None = None, prompt_version: str | None = None, text: str | None = None,
        response: Any = None, error_type: str | None = None, error: str | None = None, attempts: int = 1,
        latency_s: float | None = None, prompt_tokens: int | None = None, completion_tokens: int | None = None,
        cost_usd: float = 0.0, run_id: int | None = None, k: int | None = None,
    ) -> None:
        """Record one outcome of the call `key` ("ok" with its `text`, or "error"),
        in one transaction.  A new key gets a row.  A key whose row is a
        success is left exactly as it is: the cache never pays twice nor
        changes an answer already used.  A key whose row is an error gets this
        outcome instead (teacher, model, response, text, status, error,
        latency, tokens, run_id, k), with `attempts` and `cost_usd` added to
        the row's; template, prompt_version, request and created stay those of
        the first write.  `request` and `response` are stored as compact,
        key-sorted JSON, the text once by hash (texts)."""
        t = now()
        with self.transaction() as c:
            text_hash = self.put_text(text) if text is not None else None
            c.execute(_UPSERT, (
                key, teacher, model, template, prompt_version, compact_json(request if request is not None else {}),
                compact_json(response) if response is not None else None, text_hash, status, error_type, error,
                attempts, latency_s, prompt_tokens, completion_tokens, cost_usd, run_id, k, t, t,
            ))

    def spend(self, run_id: int | None = None) -> float:
        """USD paid for teacher calls: all of them, or those recorded by one run."""
        if run_id is None:
            v = self.conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM teacher_calls").fetchone()[0]
        else:
            v = self.conn.execute(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM teacher_calls WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
        return float(v)

    # ------------------------------------------------------- teacher batches
    # Batch jobs of batch teachers (m004; teachers/batch.py): one row per job,
    # its lines by cache key.  Open = not finished: its results are not all in
    # teacher_calls yet (status shows these, with their request counts).
    _BATCH_COLS = ("id", "batch_id", "teacher", "model", "api_base", "input_file_id", "status", "total",
                   "completed", "failed", "output_file_id", "error_file_id", "run_id", "k", "created", "updated",
                   "finished")
    _BATCH_UPDATABLE = {"batch_id", "status", "completed", "failed", "output_file_id", "error_file_id"}

    def add_teacher_batch(self, *, teacher: str, model: str, api_base: str | None, input_file_id: str,
                          keys: Iterable[str], run_id: int | None = None, k: int | None = None) -> int:
        """A job about to be created at the provider (status 'submitting'), with its
        lines; returns the row id."""
        keys = list(dict.fromkeys(keys))
        t = now()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO teacher_batches (teacher, model, api_base, input_file_id, status, total, run_id, k,"
                " created, updated) VALUES (?, ?, ?, ?, 'submitting', ?, ?, ?, ?, ?)",
                (teacher, model, api_base, input_file_id, len(keys), run_id, k, t, t))
            row_id = int(cur.lastrowid)
            c.executemany("INSERT INTO teacher_batch_lines (batch, key) VALUES (?, ?)", [(row_id, x) for x in keys])
        return row_id

    def update_teacher_batch(self, row_id: int, *, finish: bool = False, **fields: Any) -> None:
        """Set what the provider last said (batch_id, status, completed, failed,
        output_file_id, error_file_id); `finish` marks its results as harvested."""
        unknown = set(fields) - self._BATCH_UPDATABLE
        if unknown:
            raise TypeError(f"update_teacher_batch: unknown fields {sorted(unknown)}")
        vals = {**fields, "updated": now()}
        if finish:
            vals["finished"] = vals["updated"]
        with self.transaction() as c:
            c.execute(f"UPDATE teacher_batches SET {', '.join(f'{f} = ?' for f in vals)} WHERE id = ?",
                      (*vals.values(), row_id))

    def get_teacher_batch(self, row_id: int) -> dict | None:
        r = self.conn.execute(f"SELECT {', '.join(self._BATCH_COLS)} FROM teacher_batches WHERE id = ?",
                              (row_id,)).fetchone()
        return dict(zip(self._BATCH_COLS, r)) if r else None

    def open_batches(self, *, teacher: str | None = None, run_id: int | None = None) -> list[dict]:
        """Batch jobs whose results are not in yet, oldest first: for `status`
        (status, total / completed / failed as last polled, created, updated)."""
        sql = f"SELECT {', '.join(self._BATCH_COLS)} FROM teacher_batches WHERE finished IS NULL"
        args: list[Any] = []
        for col, v in (("teacher", teacher), ("run_id", run_id)):
            if v is not None:
                sql += f" AND {col} = ?"
                args.append(v)
        return [dict(zip(self._BATCH_COLS, r)) for r in self.conn.execute(sql + " ORDER BY id", args).fetchall()]

    def teacher_batch_keys(self, row_id: int) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT key FROM teacher_batch_lines WHERE batch = ? ORDER BY rowid", (row_id,)).fetchall()]

    def open_batch_lines(self, teacher: str, keys: Iterable[str]) -> dict[str, int]:
        """{key: row id of the oldest open batch of `teacher` holding it} for the given keys."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, int] = {}
        for i in range(0, len(keys), 500):  # under SQLite's limit on bound parameters
            chunk = keys[i:i + 500]
            rows = self.conn.execute(
                "SELECT l.key, MIN(b.id) FROM teacher_batch_lines l JOIN teacher_batches b ON b.id = l.batch"
                f" WHERE b.teacher = ? AND b.finished IS NULL AND l.key IN ({', '.join('?' * len(chunk))})"
                " GROUP BY l.key", (teacher, *chunk)).fetchall()
            out.update({k: int(b) for k, b in rows})
        return out
