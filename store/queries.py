"""Queries behind the CLI's views: the numbers `distillery show` prints for one
iteration, and the example `distillery prompts render/edit` fills a template
with.  A mixin of `Store`; like every module here it is the only place its
SQL runs (the CLI calls these methods, it has no SQL of its own)."""

from __future__ import annotations

from typing import Any


class QueriesMixin:
    def first_example(self, split: str = "pool") -> dict | None:
        """The earliest stored example of `split` (removed ones too), as
        `get_example` gives it; None when the split is empty."""
        r = self.conn.execute(
            self._EXAMPLE_SQL + " WHERE e.split = ? ORDER BY e.created, e.id LIMIT 1", (split,)
        ).fetchone()
        return self._example_row(r) if r else None

    def latest_wrong_output(self, example_id: str) -> str | None:
        """The student's most recent wrong output on an example (any run,
        iteration and phase), or None when none was recorded."""
        r = self.conn.execute(
            "SELECT t.body FROM predictions p JOIN texts t ON t.hash = p.output_hash"
            " WHERE p.example_id = ? AND p.correct = 0 ORDER BY p.id DESC LIMIT 1",
            (example_id,),
        ).fetchone()
        return r[0] if r else None

    def iteration_counts(self, run_id: int, k: int) -> dict[str, Any]:
        """What iteration k recorded (a k that a replay inherits: its parent's),
        counted in one snapshot: {"predictions": {phase: {total, correct,
        wrong}}, phases by name; "rationales": {created, accepted, rejected};
        "teacher_calls": {count, ok, error, cost_usd}} (the calls made at k:
        a cached answer reused at k makes no row)."""
        with self.snapshot() as c:
            owner = self._owner(run_id, k)
            preds = {
                phase: {"total": total, "correct": correct or 0, "wrong": wrong or 0}
                for phase, total, correct, wrong in c.execute(
                    "SELECT phase, COUNT(*), SUM(correct = 1), SUM(correct = 0) FROM predictions"
                    " WHERE run_id = ? AND k = ? GROUP BY phase ORDER BY phase",
                    (owner, k),
                )
            }
            created, acc, rej = c.execute(
                "SELECT COUNT(*), SUM(accepted = 1), SUM(accepted = 0) FROM rationales WHERE run_id = ? AND k = ?",
                (owner, k),
            ).fetchone()
            n, ok, err, cost = c.execute(
                "SELECT COUNT(*), SUM(status = 'ok'), SUM(status != 'ok'), COALESCE(SUM(cost_usd), 0)"
                " FROM teacher_calls WHERE run_id = ? AND k = ?",
                (owner, k),
            ).fetchone()
        return {
            "predictions": preds,
            "rationales": {"created": created, "accepted": acc or 0, "rejected": rej or 0},
            "teacher_calls": {"count": n, "ok": ok or 0, "error": err or 0, "cost_usd": float(cost)},
        }
