"""Derived views: the diff of two iterations and the lineage of one example.

Each view reads inside one snapshot (`Store.snapshot()`), so a writer
committing an iteration meanwhile is seen either wholly or not at all.
"""

from __future__ import annotations

from typing import Any

from .errors import NotFound

# Which predictions decide "became correct" / "regressed": the greedy answer
# (sample 0) at the `evaluate` step.
EVAL_PHASE = "eval"


class ViewsMixin:
    def _owner(self, run_id: int, k: int) -> int:
        """The run that holds iteration k's own rows (a replay inherits k <= parent_k)."""
        row = self.conn.execute("SELECT parent_run, parent_k FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run with id {run_id}")
        if row[0] is not None and k <= row[1]:
            return self._owner(row[0], k)
        return run_id

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
            # the calls that wrote each rationale, and the judge calls that rejected one
            keys = [key for r in rats for key in (r["teacher_call"], r["verify_call"]) if key]
            calls = []
            for key in dict.fromkeys(keys):
                c = self.conn.execute(
                    "SELECT key, teacher, model, template, prompt_version, status, error_type, error, attempts,"
                    " latency_s, prompt_tokens, completion_tokens, cost_usd, run_id, k, created"
                    " FROM teacher_calls WHERE key = ?",
                    (key,),
                ).fetchone()
                if c:
                    cols = (
                        "key", "teacher", "model", "template", "prompt_version", "status", "error_type", "error",
                        "attempts", "latency_s", "prompt_tokens", "completion_tokens", "cost_usd", "run_id", "k",
                        "created",
                    )
                    calls.append(dict(zip(cols, c)))
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
