"""Domain records: runs, examples, prompt versions, iterations and their steps,
predictions, rationales with lineage, events.  (Teacher calls, the cache, and
their batch jobs are in store/calls.py.)

A mixin of `Store`: every method uses `self.conn` and `self.transaction()`.
Every write is idempotent where the loop may repeat it after a crash
(examples, predictions, rationales, prompt versions, steps), so a resumed
step never duplicates a row.
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import Ambiguous, NotFound
from .util import content_id, dumps, loads, now, sha256_text

SPLITS = ("pool", "dev")


def example_id(question: str, answer: str | None) -> str:
    """The content id of an example: hash of (question, answer)."""
    return content_id(question, "" if answer is None else answer)


def rationale_id(example: str, text: str) -> str:
    return content_id(example, text)


class RecordsMixin:
    # ------------------------------------------------------------------ runs
    def create_run(
        self, name: str, config: dict, parent_run: int | None = None, parent_k: int | None = None
    ) -> int:
        cfg = dumps(config) or "{}"
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO runs (name, parent_run, parent_k, config_json, config_hash, status, created)"
                " VALUES (?, ?, ?, ?, ?, 'created', ?)",
                (name, parent_run, parent_k, cfg, sha256_text(cfg), now()),
            )
            return int(cur.lastrowid)

    def _run_row(self, row) -> dict:
        keys = ("id", "name", "parent_run", "parent_k", "config_json", "config_hash", "status", "created")
        d = dict(zip(keys, row))
        d["config"] = loads(d.pop("config_json"))
        return d

    def get_run(self, name_or_id: str | int) -> dict:
        sql = "SELECT id, name, parent_run, parent_k, config_json, config_hash, status, created FROM runs"
        row = self.conn.execute(sql + " WHERE name = ?", (str(name_or_id),)).fetchone()
        if row is None and str(name_or_id).isdigit():
            row = self.conn.execute(sql + " WHERE id = ?", (int(name_or_id),)).fetchone()
        if row is None:
            raise NotFound(f"no run named {name_or_id!r}")
        return self._run_row(row)

    def find_run(self, name_or_id: str | int) -> dict | None:
        try:
            return self.get_run(name_or_id)
        except NotFound:
            return None

    def list_runs(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT id, name, parent_run, parent_k, config_json, config_hash, status, created FROM runs ORDER BY id"
        ).fetchall()
        return [self._run_row(r) for r in rows]

    def set_run_status(self, run_id: int, status: str) -> None:
        with self.transaction() as c:
            cur = c.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))
            if cur.rowcount == 0:
                raise NotFound(f"no run with id {run_id}")

    # -------------------------------------------------------------- examples
    def add_examples(self, rows: Iterable[dict], split: str, *, restore: bool = False) -> tuple[int, int]:
        """Insert examples; rows whose id is already stored are skipped, or,
        with `restore` (`distillery data add`), a removed one takes part again
        (the built-in task re-adds its rows at every run and must not undo a
        removal).  A row: {"question", "answer", "rationale"?, "id"?, "meta"?}."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        added = skipped = 0
        with self.transaction() as c:
            for row in rows:
                q = row["question"]
                a = row.get("answer")
                a = None if a is None else str(a)
                eid = row.get("id") or example_id(q, a)
                if restore and c.execute("DELETE FROM example_removals WHERE example_id = ?", (eid,)).rowcount:
                    c.execute("INSERT INTO events (run_id, k, step, kind, message, data, created)"
                              " VALUES (NULL, NULL, NULL, 'data', ?, ?, ?)",
                              (f"example {eid} added again (restored)", dumps({"restored": eid}), now()))
                    added += 1
                    continue
                rat = row.get("rationale")
                rh = self.put_text(rat) if rat else None
                cur = c.execute(
                    "INSERT OR IGNORE INTO examples (id, split, question, answer, rationale_hash, meta, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (eid, split, q, a, rh, dumps(row.get("meta")), now()),
                )
                if cur.rowcount:
                    added += 1
                else:
                    skipped += 1
        return added, skipped

    _EXAMPLE_SQL = (
        "SELECT e.id, e.split, e.question, e.answer, t.body, e.meta, e.created"
        " FROM examples e LEFT JOIN texts t ON t.hash = e.rationale_hash"
    )

    @staticmethod
    def _example_row(r) -> dict:
        return {
            "id": r[0], "split": r[1], "question": r[2], "answer": r[3],
            "rationale": r[4], "meta": loads(r[5]), "created": r[6],
        }

    _ACTIVE = "e.id NOT IN (SELECT example_id FROM example_removals)"

    def list_examples(self, split: str | None = None, *, state: str = "active") -> list[dict]:
        """Examples in import order: those that take part ("active"), the
        removed ones ("removed"), or every stored one ("all": for lookups by id
        of what older iterations refer to)."""
        where = {"active": [self._ACTIVE], "removed": ["NOT " + self._ACTIVE], "all": ["1"]}[state]
        args: list[Any] = []
        if split is not None:
            where.append("e.split = ?")
            args.append(split)
        rows = self.conn.execute(self._EXAMPLE_SQL + " WHERE " + " AND ".join(where) + " ORDER BY e.rowid", args)
        return [self._example_row(r) for r in rows.fetchall()]

    def count_examples(self, split: str | None = None) -> int:
        """Examples that take part (removed ones are not counted)."""
        sql = "SELECT COUNT(*) FROM examples e WHERE " + self._ACTIVE
        if split is None:
            return self.conn.execute(sql).fetchone()[0]
        return self.conn.execute(sql + " AND e.split = ?", (split,)).fetchone()[0]

    def examples_by_question(self, questions: Iterable[str]) -> dict[str, dict]:
        """{question: stored example} for the stored questions among `questions` (removed ones too)."""
        out: dict[str, dict] = {}
        qs = list(dict.fromkeys(questions))
        for i in range(0, len(qs), 500):  # SQLite's bound-parameter limit
            part = qs[i : i + 500]
            sql = self._EXAMPLE_SQL + f" WHERE e.question IN ({', '.join('?' * len(part))})"
            for r in self.conn.execute(sql, part).fetchall():
                out.setdefault(r[2], self._example_row(r))
        return out

    def removed_examples(self) -> dict[str, dict]:
        """{example id: {"reason", "created"}} of every removed example."""
        rows = self.conn.execute("SELECT example_id, reason, created FROM example_removals ORDER BY created")
        return {r[0]: {"reason": r[1], "created": r[2]} for r in rows.fetchall()}

    def remove_examples(self, ids: Iterable[str], reason: str | None = None) -> list[str]:
        """Take examples out of the pool/dev sets (an event; nothing is deleted).
        Returns the ids newly removed; unknown ids raise NotFound before any write."""
        ids = list(dict.fromkeys(ids))
        missing = [i for i in ids if self.conn.execute("SELECT 1 FROM examples WHERE id = ?", (i,)).fetchone() is None]
        if missing:
            raise NotFound(f"no example with id {missing[0]!r}")
        done = []
        with self.transaction() as c:
            for eid in ids:
                cur = c.execute("INSERT OR IGNORE INTO example_removals (example_id, reason, created) VALUES (?, ?, ?)",
                                (eid, reason, now()))
                if cur.rowcount:
                    done.append(eid)
            if done:
                c.execute("INSERT INTO events (run_id, k, step, kind, message, data, created)"
                          " VALUES (NULL, NULL, NULL, 'data', ?, ?, ?)",
                          (f"{len(done)} example(s) removed" + (f": {reason}" if reason else ""),
                           dumps({"removed": done, "reason": reason}), now()))
        return done

    def get_example(self, id: str) -> dict | None:
        r = self.conn.execute(self._EXAMPLE_SQL + " WHERE e.id = ?", (id,)).fetchone()
        return self._example_row(r) if r else None

    def resolve_example(self, prefix: str) -> str:
        """The full id of the example whose id is `prefix` or starts with it."""
        if self.conn.execute("SELECT 1 FROM examples WHERE id = ?", (prefix,)).fetchone():
            return prefix
        esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.conn.execute(
            "SELECT id FROM examples WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 6", (esc + "%",)
        ).fetchall()
        if not rows:
            raise NotFound(f"no example id starts with {prefix!r}")
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:5])
            raise Ambiguous(f"{prefix!r} matches several examples ({shown}{', ...' if len(rows) > 5 else ''})")
        return rows[0][0]

    # --------------------------------------------------------------- prompts
    def record_prompt_version(self, name: str, body: str) -> str:
        vid = sha256_text(body)
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO prompt_versions (id, name, body, created) VALUES (?, ?, ?, ?)",
                (vid, name, body, now()),
            )
        return vid

    def prompt_versions(self, name: str | None = None) -> list[dict]:
        sql = "SELECT id, name, body, created FROM prompt_versions"
        rows = (
            self.conn.execute(sql + " WHERE name = ? ORDER BY created, rowid", (name,)).fetchall()
            if name
            else self.conn.execute(sql + " ORDER BY created, rowid").fetchall()
        )
        return [dict(zip(("id", "name", "body", "created"), r)) for r in rows]

    def has_prompt_version(self, version_id: str) -> bool:
        """Whether a template version (its id, the hash of its body) is stored."""
        return self.conn.execute("SELECT 1 FROM prompt_versions WHERE id = ?", (version_id,)).fetchone() is not None

    # ------------------------------------------------------------ iterations
    def start_iteration(self, run_id: int, k: int) -> None:
        """Create iteration k (status running); a no-op if it exists."""
        with self.transaction() as c:
            if not c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise NotFound(f"no run with id {run_id}")
            c.execute(
                "INSERT OR IGNORE INTO iterations (run_id, k, status, started) VALUES (?, ?, 'running', ?)",
                (run_id, k, now()),
            )

    def begin_step(self, run_id: int, k: int, step: str) -> None:
        with self.transaction() as c:
            self.start_iteration(run_id, k)
            c.execute(
                "INSERT INTO iteration_steps (run_id, k, step, status, started) VALUES (?, ?, ?, 'started', ?)"
                " ON CONFLICT (run_id, k, step) DO UPDATE SET status = 'started', started = excluded.started,"
                " finished = NULL WHERE iteration_steps.status != 'done'",
                (run_id, k, step, now()),
            )

    def finish_step(self, run_id: int, k: int, step: str, info: dict | None = None) -> None:
        with self.transaction() as c:
            self.start_iteration(run_id, k)
            t = now()
            c.execute(
                "INSERT INTO iteration_steps (run_id, k, step, status, started, finished, info)"
                " VALUES (?, ?, ?, 'done', ?, ?, ?)"
                " ON CONFLICT (run_id, k, step) DO UPDATE SET status = 'done', finished = excluded.finished,"
                " info = excluded.info",
                (run_id, k, step, t, t, dumps(info or {})),
            )

    def steps(self, run_id: int, k: int) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT step, status FROM iteration_steps WHERE run_id = ? AND k = ? ORDER BY started, rowid",
            (run_id, k),
        ).fetchall()
        return {s: st for s, st in rows}

    def step_details(self, run_id: int, k: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT step, status, started, finished, info FROM iteration_steps"
            " WHERE run_id = ? AND k = ? ORDER BY started, rowid",
            (run_id, k),
        ).fetchall()
        return [
            {"step": s, "status": st, "started": a, "finished": b, "info": loads(i)}
            for s, st, a, b, i in rows
        ]

    def finish_iteration(
        self,
        run_id: int,
        k: int,
        metrics: dict,
        adapter_path: str | None,
        adapter_sha256: str | None,
        stop_reason: str | None = None,
    ) -> None:
        with self.transaction() as c:
            self.start_iteration(run_id, k)
            c.execute(
                "UPDATE iterations SET status = 'done', finished = ?, metrics = ?, adapter_path = ?,"
                " adapter_sha256 = ?, stop_reason = ? WHERE run_id = ? AND k = ?",
                (now(), dumps(metrics or {}), adapter_path, adapter_sha256, stop_reason, run_id, k),
            )

    _ITER_COLS = ("run_id", "k", "status", "started", "finished", "adapter_path", "adapter_sha256", "metrics", "stop_reason")

    def _iter_row(self, r) -> dict:
        d = dict(zip(self._ITER_COLS, r))
        d["metrics"] = loads(d["metrics"]) or {}
        return d

    def list_iterations(self, run_id: int) -> list[dict]:
        rows = self.conn.execute(
            f"SELECT {', '.join(self._ITER_COLS)} FROM iterations WHERE run_id = ? ORDER BY k", (run_id,)
        ).fetchall()
        out = [self._iter_row(r) for r in rows]
        for d in out:
            d["steps"] = self.steps(run_id, d["k"])
        return out

    def get_iteration(self, run_id: int, k: int) -> dict:
        """Iteration k of a run; for a replayed run, k <= parent_k is the parent's
        (inherited) iteration, reported with `inherited_from`."""
        run = self.get_run(run_id)
        if run["parent_run"] is not None and k <= run["parent_k"]:
            d = self.get_iteration(run["parent_run"], k)
            d.setdefault("inherited_from", d["run_id"])
            return d
        r = self.conn.execute(
            f"SELECT {', '.join(self._ITER_COLS)} FROM iterations WHERE run_id = ? AND k = ?", (run_id, k)
        ).fetchone()
        if r is None:
            raise NotFound(f"run {run['name']!r} has no iteration {k}")
        d = self._iter_row(r)
        d["steps"] = self.steps(run_id, k)
        return d

    # ----------------------------------------------------------- predictions
    def record_predictions(self, run_id: int, k: int, phase: str, rows: Iterable[dict]) -> list[int]:
        """Store predictions (idempotent on (run, k, phase, example, sample));
        returns their ids in the order given."""
        ids: list[int] = []
        with self.transaction() as c:
            for row in rows:
                h = self.put_text(row["output"])
                corr = row.get("correct")
                key = (run_id, k, phase, row["example_id"], int(row.get("sample", 0)))
                cur = c.execute(
                    "INSERT OR IGNORE INTO predictions (run_id, k, phase, example_id, sample, output_hash, answer, correct)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    key + (h, row.get("answer"), None if corr is None else int(bool(corr))),
                )
                ids.append(
                    cur.lastrowid
                    if cur.rowcount
                    else c.execute(
                        "SELECT id FROM predictions WHERE run_id = ? AND k = ? AND phase = ? AND example_id = ? AND sample = ?",
                        key,
                    ).fetchone()[0]
                )
        return ids

    _PRED_SQL = (
        "SELECT p.id, p.run_id, p.k, p.phase, p.example_id, p.sample, t.body, p.answer, p.correct"
        " FROM predictions p JOIN texts t ON t.hash = p.output_hash"
    )

    @staticmethod
    def _pred_row(r) -> dict:
        d = dict(zip(("id", "run_id", "k", "phase", "example_id", "sample", "output", "answer", "correct"), r))
        d["correct"] = None if d["correct"] is None else bool(d["correct"])
        return d

    def list_predictions(self, run_id: int, k: int, phase: str) -> list[dict]:
        rows = self.conn.execute(
            self._PRED_SQL + " WHERE p.run_id = ? AND p.k = ? AND p.phase = ? ORDER BY p.id", (run_id, k, phase)
        ).fetchall()
        return [self._pred_row(r) for r in rows]

    def get_prediction(self, prediction_id: int) -> dict | None:
        r = self.conn.execute(self._PRED_SQL + " WHERE p.id = ?", (prediction_id,)).fetchone()
        return self._pred_row(r) if r else None

    # ------------------------------------------------------------ rationales
    def add_rationale(
        self,
        example_id: str,
        text: str,
        answer: str | None,
        source: str,
        teacher_call: str | None = None,
        parent_id: str | None = None,
        error_prediction: int | None = None,
        run_id: int | None = None,
        k: int | None = None,
    ) -> str:
        """Store a rationale (id = hash(example, text)); adding the same text for
        the same example again returns the existing id and changes nothing."""
        rid = rationale_id(example_id, text)
        with self.transaction() as c:
            h = self.put_text(text)
            c.execute(
                "INSERT OR IGNORE INTO rationales (id, example_id, text_hash, answer, source, teacher_call,"
                " parent_id, error_prediction, run_id, k, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rid, example_id, h, answer, source, teacher_call, parent_id, error_prediction, run_id, k, now()),
            )
        return rid

    def set_accepted(
        self, rationale_id: str, accepted: bool, agreement: float | None, *,
        rejected_reason: str | None = None, verify_call: str | None = None,
        run_id: int | None = None, k: int | None = None,
    ) -> None:
        """Record the verdict on a rationale: accepted or not, the agreement
        fraction, and for a rejection its reason code (teachers/verify.py REASONS,
        or agree's `wrong_answer` / `no_majority`) and the judge call, if any.
        With (run_id, k) the verdict is also kept in `verdicts`, where a later
        iteration's verdict on the same text does not overwrite this one."""
        if accepted:
            rejected_reason = None
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE rationales SET accepted = ?, agreement = ?, rejected_reason = ?, verify_call = ? WHERE id = ?",
                (int(bool(accepted)), agreement, rejected_reason, verify_call, rationale_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no rationale with id {rationale_id!r}")
            if run_id is not None and k is not None:
                c.execute(
                    "INSERT OR REPLACE INTO verdicts (run_id, k, rationale_id, accepted, agreement, rejected_reason,"
                    " verify_call, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, k, rationale_id, int(bool(accepted)), agreement, rejected_reason, verify_call, now()),
                )

    def verdicts(self, *, run_id: int | None = None, k: int | None = None,
                 rationale_ids: Iterable[str] | None = None) -> list[dict]:
        """Per-iteration verdicts (run_id, k, rationale_id, accepted, agreement,
        rejected_reason, verify_call), oldest first."""
        where, args = [], []
        for col, v in (("run_id", run_id), ("k", k)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        if rationale_ids is not None:
            name = self._temp_ids("_vd_ids", rationale_ids)
            where.append(f"rationale_id IN (SELECT id FROM {name})")
        rows = self.conn.execute(
            "SELECT run_id, k, rationale_id, accepted, agreement, rejected_reason, verify_call FROM verdicts"
            + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY run_id, k, rowid", args
        ).fetchall()
        cols = ("run_id", "k", "rationale_id", "accepted", "agreement", "rejected_reason", "verify_call")
        return [dict(zip(cols, r)) | {"accepted": bool(r[3])} for r in rows]

    _RAT_COLS = (
        "id", "example_id", "text", "answer", "source", "teacher_call", "parent_id",
        "error_prediction", "accepted", "agreement", "run_id", "k", "created", "rejected_reason", "verify_call",
    )
    _RAT_SQL = (
        "SELECT r.id, r.example_id, t.body, r.answer, r.source, r.teacher_call, r.parent_id,"
        " r.error_prediction, r.accepted, r.agreement, r.run_id, r.k, r.created, r.rejected_reason, r.verify_call"
        " FROM rationales r JOIN texts t ON t.hash = r.text_hash"
    )

    def _rat_row(self, r) -> dict:
        d = dict(zip(self._RAT_COLS, r))
        d["accepted"] = None if d["accepted"] is None else bool(d["accepted"])
        return d

    def get_rationale(self, rationale_id: str) -> dict | None:
        r = self.conn.execute(self._RAT_SQL + " WHERE r.id = ?", (rationale_id,)).fetchone()
        return self._rat_row(r) if r else None

    def get_rationales(self, ids: Iterable[str]) -> dict[str, dict]:
        """Many rationales at once (text included), keyed by id."""
        name = self._temp_ids("_gr_ids", ids)
        rows = self.conn.execute(self._RAT_SQL + f" WHERE r.id IN (SELECT id FROM {name})").fetchall()
        return {r[0]: self._rat_row(r) for r in rows}

    def list_rationales(
        self, *, example_id: str | None = None, run_id: int | None = None, k: int | None = None
    ) -> list[dict]:
        where, args = [], []
        for col, v in (("r.example_id", example_id), ("r.run_id", run_id), ("r.k", k)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        sql = self._RAT_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY r.rowid"
        return [self._rat_row(r) for r in self.conn.execute(sql, args).fetchall()]

    # ---------------------------------------------------------------- events
    def log_event(
        self, run_id: int | None, k: int | None, step: str | None, kind: str, message: str, data: dict | None = None
    ) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO events (run_id, k, step, kind, message, data, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, k, step, kind, message, dumps(data), now()),
            )
            return int(cur.lastrowid)

    def list_events(self, run_id: int | None = None, since_id: int = 0, limit: int | None = None) -> list[dict]:
        sql = "SELECT id, run_id, k, step, kind, message, data, created FROM events WHERE id > ?"
        args: list[Any] = [since_id]
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        keys = ("id", "run_id", "k", "step", "kind", "message", "data", "created")
        out = []
        for r in self.conn.execute(sql, args).fetchall():
            d = dict(zip(keys, r))
            d["data"] = loads(d["data"])
            out.append(d)
        return out
