"""Dataset versions stored as deltas, and replay branches.

Version k of a run is, per example, the `dataset_entries` rows at the largest
k' <= k (a row with rationale_id NULL removes the example).  Only the changed
examples are written per iteration, so the database grows with the changes,
not with the dataset.

A replayed run R' branched from (R, k0) stores `parent_run = R, parent_k = k0`:
its versions k <= k0 are R's, and its own rows (k > k0) overlay R's version
k0.  Chains of replays follow the same rule recursively.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from .errors import Conflict, NotFound

Demo = tuple[str, float]  # (rationale_id, weight)
Changes = dict[str, "list[Demo] | None"]


class VersionsMixin:
    # ------------------------------------------------------------- helpers
    def _chain(self, run_id: int, k: int) -> list[tuple[int, int, int]]:
        """Segments (run_id, k_lo_exclusive, k_hi) from the root run down to
        `run_id` whose overlay gives version k of `run_id`."""
        row = self.conn.execute("SELECT parent_run, parent_k FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run with id {run_id}")
        parent, pk = row
        if parent is None:
            return [(run_id, -1, k)]
        if k <= pk:
            return self._chain(parent, k)
        return self._chain(parent, pk) + [(run_id, pk, k)]

    def _owner(self, run_id: int, k: int) -> int:
        """The run that holds iteration k's own rows (a replay inherits k <= parent_k)."""
        row = self.conn.execute("SELECT parent_run, parent_k FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run with id {run_id}")
        if row[0] is not None and k <= row[1]:
            return self._owner(row[0], k)
        return run_id

    def _latest(self, run_id: int, lo: int, hi: int, only: str | None = None) -> Iterator[tuple[str, list[Demo]]]:
        """(example_id, demonstrations) of the latest version in (lo, hi] of
        each example of one run, by example id; [] means removed.  `only`
        restricts to the examples in the temp table of that name.

        One ordered scan of the (run_id, example_id, k) index, keeping per
        example the rows of its largest k: cheaper than a MAX() subquery per row."""
        restrict = f" AND example_id IN (SELECT id FROM {only})" if only else ""
        cur = self.conn.execute(
            # INDEXED BY: the planner would pick the (run_id, k) index and sort.
            "SELECT example_id, k, rationale_id, weight FROM dataset_entries INDEXED BY dataset_entries_lookup"
            " WHERE run_id = ? AND k > ? AND k <= ?" + restrict + " ORDER BY example_id, k, rowid",
            (run_id, lo, hi),
        )
        ex_cur, k_cur, demos = None, None, []
        for ex, k, rid, w in cur:
            if ex != ex_cur:
                if ex_cur is not None:
                    yield ex_cur, demos
                ex_cur, k_cur, demos = ex, k, []
            elif k != k_cur:
                k_cur, demos = k, []  # a later version of the same example replaces it
            if rid is not None:
                demos.append((rid, w))
        if ex_cur is not None:
            yield ex_cur, demos

    def _overlay(self, run_id: int, k: int, only: str | None = None) -> dict[str, list[Demo]]:
        chain = self._chain(run_id, k)
        out: dict[str, list[Demo]] = {}
        for seg_run, lo, hi in chain:
            for ex, demos in self._latest(seg_run, lo, hi, only):
                if demos:
                    out[ex] = demos
                else:
                    out.pop(ex, None)
        if len(chain) > 1:  # examples a replay added came last; keep id order
            out = dict(sorted(out.items()))
        return out

    def _temp_ids(self, name: str, ids: Iterable[str]) -> str:
        self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (id TEXT PRIMARY KEY)")
        self.conn.execute(f"DELETE FROM {name}")
        self.conn.executemany(f"INSERT OR IGNORE INTO {name} (id) VALUES (?)", ((i,) for i in ids))
        return name

    # ----------------------------------------------------------------- API
    def write_dataset_version(self, run_id: int, k: int, changes: Changes) -> int:
        """Write version k of a run as the delta `changes` against version k-1:
        {example_id: [(rationale_id, weight), ...]} replaces that example's
        demonstrations, None removes the example.  Writing version k again
        replaces what was written for k (idempotent).  Changes equal to the
        previous version are dropped.  Returns the number of rows written."""
        run = self.conn.execute("SELECT parent_run, parent_k FROM runs WHERE id = ?", (run_id,)).fetchone()
        if run is None:
            raise NotFound(f"no run with id {run_id}")
        if run[0] is not None and k <= run[1]:
            raise Conflict(
                f"run {run_id} is replayed from iteration {run[1]} of run {run[0]};"
                f" it cannot write version {k} (it inherits versions up to {run[1]})"
            )
        norm: dict[str, list[Demo] | None] = {}
        for ex, demos in changes.items():
            norm[ex] = None if demos is None else [(str(r), float(w)) for r, w in demos]
        with self.transaction() as c:
            c.execute("DELETE FROM dataset_entries WHERE run_id = ? AND k = ?", (run_id, k))
            prev = self._overlay(run_id, k - 1, self._temp_ids("_dv_ids", norm)) if k > 0 else {}
            rows: list[tuple] = []
            for ex, demos in norm.items():
                if demos is None or not demos:
                    if ex in prev:
                        rows.append((run_id, k, ex, None, 1.0))
                elif prev.get(ex) != demos:
                    rows.extend((run_id, k, ex, r, w) for r, w in demos)
            c.executemany(
                "INSERT INTO dataset_entries (run_id, k, example_id, rationale_id, weight) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def dataset(self, run_id: int, k: int) -> dict[str, list[Demo]]:
        """The training set of iteration k: {example_id: [(rationale_id, weight), ...]},
        ordered by example id."""
        with self.snapshot():
            return self._overlay(run_id, k)

    def changed_examples(self, run_id: int, k: int) -> list[str]:
        """Examples whose rows were written at version k of this run (a k that
        a replay inherits: by the run it inherits it from), by id."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT example_id FROM dataset_entries WHERE run_id = ? AND k = ? ORDER BY example_id",
                (self._owner(run_id, k), k),
            )
        ]

    def dataset_for(self, run_id: int, k: int, example_ids: Sequence[str]) -> dict[str, list[Demo]]:
        """Version k restricted to some examples (cheap for a few ids)."""
        with self.snapshot():
            return self._overlay(run_id, k, self._temp_ids("_df_ids", example_ids))

    def branch_run(self, run_id: int, k: int, name: str, config: dict) -> int:
        """A new run that inherits run_id's versions and iterations up to k and
        continues from k+1 with `config`."""
        with self.transaction():
            src = self.get_run(run_id)
            it = self.conn.execute(
                "SELECT status FROM iterations WHERE run_id = ? AND k = ?", (src["id"], k)
            ).fetchone()
            if it is None and not (src["parent_run"] is not None and k <= src["parent_k"]):
                raise NotFound(f"run {src['name']!r} has no iteration {k} to replay from")
            return self.create_run(name, config, parent_run=src["id"], parent_k=k)
