"""Derived views: the diff of two iterations, the lineage of one example, and
the teacher calls of an iteration (one row each, and per-teacher numbers).

Each view reads inside one snapshot (`Store.snapshot()`), so a writer
committing an iteration meanwhile is seen either wholly or not at all.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from .errors import NotFound

# Which predictions decide "became correct" / "regressed": the greedy answer
# (sample 0) at the `evaluate` step.
EVAL_PHASE = "eval"

# The columns of a teacher call as views show it (not the request and response
# bodies: `get_teacher_call(key)`, store/calls.py, has those).
CALL_COLUMNS = (
    "key", "teacher", "model", "template", "prompt_version", "status", "error_type", "error", "attempts",
    "latency_s", "prompt_tokens", "completion_tokens", "cost_usd", "run_id", "k", "created", "updated",
)
_CALL_SQL = f"SELECT {', '.join(CALL_COLUMNS)} FROM teacher_calls"


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class ViewsMixin:
    def _correctness(self, run_id: int, k: int) -> dict[str, bool]:
        owner = self._owner(run_id, k)
        rows = self.conn.execute(
            "SELECT example_id, correct FROM predictions WHERE run_id = ? AND k = ? AND phase = ? AND sample = 0"
            " AND correct IS NOT NULL",
            (owner, k, EVAL_PHASE),
        )
        return {ex: bool(c) for ex, c in rows}

    def _metrics(self, run_id: int, k: int) -> dict | None:
        try:
            return self.get_iteration(run_id, k)["metrics"]
        except NotFound:
            return None

    def diff_iterations(self, run_a: int, k_a: int, run_b: int, k_b: int) -> dict[str, Any]:
        """What changed from (run_a, k_a) to (run_b, k_b): examples added to /
        removed from the dataset, examples whose demonstrations changed (before
        and after), examples that became correct or regressed on `evaluate`,
        and the metrics of both with their numeric deltas."""
        with self.snapshot():
            if run_a == run_b:
                # Only examples with rows written between the two versions can differ.
                lo, hi = sorted((k_a, k_b))
                owner_rows = set()
                for seg_run, s_lo, s_hi in self._chain(run_a, hi):
                    a, b = max(s_lo, lo), s_hi
                    if b > a:
                        owner_rows.update(
                            r[0]
                            for r in self.conn.execute(
                                "SELECT DISTINCT example_id FROM dataset_entries WHERE run_id = ? AND k > ? AND k <= ?",
                                (seg_run, a, b),
                            )
                        )
                cand = sorted(owner_rows)
                da = self.dataset_for(run_a, k_a, cand)
                db = self.dataset_for(run_b, k_b, cand)
                # Sizes differ only by the candidates: count version a once.
                size_a = self._size(run_a, k_a)
                size_b = size_a + len(db) - len(da)
            else:
                da = self.dataset(run_a, k_a)
                db = self.dataset(run_b, k_b)
                size_a, size_b = len(da), len(db)
            added = sorted(set(db) - set(da))
            removed = sorted(set(da) - set(db))
            changed = [
                {
                    "example_id": ex,
                    "before": [{"rationale_id": r, "weight": w} for r, w in da[ex]],
                    "after": [{"rationale_id": r, "weight": w} for r, w in db[ex]],
                }
                for ex in sorted(set(da) & set(db))
                if da[ex] != db[ex]
            ]
            ca, cb = self._correctness(run_a, k_a), self._correctness(run_b, k_b)
            both = sorted(set(ca) & set(cb))
            ma, mb = self._metrics(run_a, k_a), self._metrics(run_b, k_b)
            delta = {}
            for key in sorted(set(ma or {}) & set(mb or {})):
                va, vb = ma[key], mb[key]
                if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
                    delta[key] = vb - va
            return {
                "a": {"run_id": run_a, "k": k_a},
                "b": {"run_id": run_b, "k": k_b},
                "dataset": {
                    "size_a": size_a,
                    "size_b": size_b,
                    "added": added,
                    "removed": removed,
                    "changed": changed,
                },
                "became_correct": [ex for ex in both if not ca[ex] and cb[ex]],
                "regressed": [ex for ex in both if ca[ex] and not cb[ex]],
                "metrics": {"a": ma, "b": mb, "delta": delta},
            }

    def _size(self, run_id: int, k: int) -> int:
        """Number of examples in version k, counted in SQL (no rows built)."""
        chain = self._chain(run_id, k)
        if len(chain) > 1:
            return len(self._overlay(run_id, k))
        return self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT example_id, MAX(k) AS mk FROM dataset_entries"
            "   WHERE run_id = ?1 AND k <= ?2 GROUP BY example_id) l"
            " WHERE EXISTS (SELECT 1 FROM dataset_entries d WHERE d.run_id = ?1"
            "   AND d.example_id = l.example_id AND d.k = l.mk AND d.rationale_id IS NOT NULL)",
            (run_id, k),
        ).fetchone()[0]

    def dataset_size(self, run_id: int, k: int) -> int:
        with self.snapshot():
            return self._size(run_id, k)

    def lineage(self, example_id: str) -> dict[str, Any]:
        """Everything about one example across runs and iterations: every
        prediction, rationale (with parent, the error it answers and its
        teacher call), teacher call and dataset version it appears in."""
        with self.snapshot():
            ex = self.get_example(example_id)
            if ex is None:
                raise NotFound(f"no example with id {example_id!r}")
            names = {r[0]: r[1] for r in self.conn.execute("SELECT id, name FROM runs")}
            preds = [
                self._pred_row(r) | {"run": names.get(r[1])}
                for r in self.conn.execute(
                    self._PRED_SQL + " WHERE p.example_id = ? ORDER BY p.run_id, p.k, p.phase, p.sample",
                    (example_id,),
                )
            ]
            rats = [
                self._rat_row(r) | {"run": names.get(r[10])}
                for r in self.conn.execute(
                    self._RAT_SQL + " WHERE r.example_id = ? ORDER BY r.rowid", (example_id,)
                )
            ]
            # the calls that wrote each rationale, the judge calls that rejected one,
            # then the failed calls about it (no rationale came back to refer to them)
            keys = [key for r in rats for key in (r["teacher_call"], r["verify_call"]) if key]
            calls = []
            for key in dict.fromkeys(keys):
                c = self.conn.execute(_CALL_SQL + " WHERE key = ?", (key,)).fetchone()
                if c:
                    calls.append(dict(zip(CALL_COLUMNS, c)))
            seen = set(keys)
            calls += [c for c in self._failed_calls_about(ex["question"]) if c["key"] not in seen]
            versions: dict[tuple[int, int], list] = {}
            for run_id, k, rid, w in self.conn.execute(
                "SELECT run_id, k, rationale_id, weight FROM dataset_entries WHERE example_id = ?"
                " ORDER BY run_id, k, rowid",
                (example_id,),
            ):
                lst = versions.setdefault((run_id, k), [])
                if rid is not None:
                    lst.append({"rationale_id": rid, "weight": w})
            dataset = [
                {"run_id": r, "run": names.get(r), "k": k, "demonstrations": d, "removed": not d}
                for (r, k), d in versions.items()
            ]
            verdicts = [v | {"run": names.get(v["run_id"])}
                        for v in self.verdicts(rationale_ids=[r["id"] for r in rats])]
            return {
                "example": ex,
                "predictions": preds,
                "rationales": rats,
                "verdicts": verdicts,
                "teacher_calls": calls,
                "dataset": dataset,
            }

    # ------------------------------------------------------------------ teacher calls
    def _failed_calls_about(self, question: str) -> list[dict]:
        """The failed calls whose prompt quotes `question`.  A failed call has no
        rationale, so nothing refers to it by key; what ties it to an example is
        its request, which holds the rendered prompt (stored as canonical JSON,
        hence the question is searched JSON-escaped).  A question quoted inside
        another, longer question would match both."""
        quoted = json.dumps(question, ensure_ascii=False)[1:-1]
        rows = self.conn.execute(
            _CALL_SQL + " WHERE status != 'ok' AND instr(request, ?) > 0 ORDER BY created, key", (quoted,)
        )
        return [dict(zip(CALL_COLUMNS, r)) for r in rows]

    def list_teacher_calls(self, run_id: int, k: int, *, teacher: str | None = None,
                           status: str | None = None) -> list[dict]:
        """The calls recorded at iteration k of the run (inherited k: the
        parent's), oldest first; optionally one teacher's, or one status
        ("ok" | "error").  A cached answer reused at k is not a row of k: the
        row belongs to the iteration that made the call."""
        with self.snapshot():
            sql, args = _CALL_SQL + " WHERE run_id = ? AND k = ?", [self._owner(run_id, k), k]
            if teacher is not None:
                sql, args = sql + " AND teacher = ?", args + [teacher]
            if status is not None:
                sql, args = sql + " AND status = ?", args + [status]
            return [dict(zip(CALL_COLUMNS, r)) for r in self.conn.execute(sql + " ORDER BY created, key", args)]

    def teacher_call_stats(self, run_id: int, k: int | None = None) -> dict[str, dict]:
        """Per teacher, the calls of iteration k (None: of all the run's own
        iterations): {teacher: {calls, requests, ok, cached, failed,
        prompt_tokens, completion_tokens, latency_p50_s, latency_p95_s,
        cost_usd}}, teachers by name.

        `ok` / `failed`: the rows recorded at k (answered / failed after its
        retries); `requests`: the HTTP requests they took, retries included
        (what the provider saw); `cached`: answers reused from a call of an
        earlier iteration or run, which make no row (see `_cached`); `calls` =
        ok + failed + cached.  Tokens and cost are those of the rows (a cached
        answer is not paid again); latency is of the answered calls (the
        attempt that succeeded).  One row per cache key holds its latest
        outcome, so a failed call asked again later counts where it was last
        asked, with every attempt it took."""
        with self.snapshot():
            if k is None:
                where, args = "run_id = ?", [run_id]
                ks = [r[0] for r in self.conn.execute("SELECT k FROM iterations WHERE run_id = ?", (run_id,))]
                cached: Counter = Counter()
                for kk in ks:
                    cached.update(self._cached(run_id, kk))
            else:
                owner = self._owner(run_id, k)
                where, args = "run_id = ? AND k = ?", [owner, k]
                cached = self._cached(owner, k)
            out: dict[str, dict] = {}
            latencies: dict[str, list[float]] = {}
            for teacher, status, attempts, latency, pt, ct, cost in self.conn.execute(
                "SELECT teacher, status, attempts, latency_s, prompt_tokens, completion_tokens, cost_usd"
                f" FROM teacher_calls WHERE {where}", args,
            ):
                s = out.setdefault(teacher, _empty_stats())
                s["ok" if status == "ok" else "failed"] += 1
                s["requests"] += attempts or 0
                s["prompt_tokens"] += pt or 0
                s["completion_tokens"] += ct or 0
                s["cost_usd"] += cost or 0.0
                if status == "ok" and latency is not None:
                    latencies.setdefault(teacher, []).append(latency)
            for teacher, n in cached.items():
                out.setdefault(teacher, _empty_stats())["cached"] = n
            for teacher, s in out.items():
                s["calls"] = s["ok"] + s["failed"] + s["cached"]
                s["latency_p50_s"] = percentile(latencies.get(teacher, []), 0.50)
                s["latency_p95_s"] = percentile(latencies.get(teacher, []), 0.95)
            return {t: out[t] for t in sorted(out)}

    def _cached(self, owner: int, k: int) -> Counter:
        """{teacher: answers reused from the cache at (owner, k)}.  A cache hit
        writes no row, so it is counted from what the steps recorded: teach's
        info lists one rationale per answer with its teacher, verify's judge
        info counts its answers, and what is not a row recorded at k came from
        the cache.  An answer from a call that an interrupted attempt of this
        same iteration made counts as new: it was paid for here."""
        infos = {d["step"]: d["info"] or {} for d in self.step_details(owner, k)}
        answered = Counter(r.get("teacher") for r in infos.get("teach", {}).get("rationales", []))
        judge = infos.get("verify", {}).get("judge") or {}
        if judge:
            name = ((self.get_run(owner)["config"] or {}).get("verify") or {}).get("teacher")
            answered[name] += (judge.get("calls") or 0) + (judge.get("cached") or 0)
        new = Counter(dict(self.conn.execute(
            "SELECT teacher, COUNT(*) FROM teacher_calls WHERE run_id = ? AND k = ? AND status = 'ok' GROUP BY teacher",
            (owner, k),
        ).fetchall()))
        return Counter({t: n - new[t] for t, n in answered.items() if t is not None and n > new[t]})


def _empty_stats() -> dict:
    return {"calls": 0, "requests": 0, "ok": 0, "cached": 0, "failed": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "latency_p50_s": None, "latency_p95_s": None, "cost_usd": 0.0}
