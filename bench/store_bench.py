"""Store benchmark: dataset versions as deltas vs a naive copy per iteration.

N pool examples, iteration 0 gives each a rationale, then 10 iterations each
replace the demonstrations of 5% of the examples.  Side by side, in two
SQLite files:

  ours   Distillery's store (texts by hash, rationales, dataset_entries deltas)
  naive  one table of (k, example, rationale text) rows, the whole dataset
         copied at every iteration

Measures: database growth per iteration, time to write an iteration, time to
reconstruct iteration 10, time to diff iterations 9 and 10.

    python bench/store_bench.py            # 100,000 examples (the goals' scale)
    python bench/store_bench.py --quick    # 20,000 examples, under a minute
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import Store  # noqa: E402

ITERATIONS = 10
CHANGE = 0.05


def rationale_text(rng: random.Random, i: int, k: int) -> str:
    a, b, c = rng.randint(2, 999), rng.randint(2, 999), rng.randint(2, 99)
    return (
        f"Step 1: the first quantity is {a} and the second is {b}, so together they make {a + b}. "
        f"Step 2: each of the {c} groups gets the total, so {a + b} times {c} is {(a + b) * c}. "
        f"Step 3: checking the units of problem {i} (revision {k}) gives the same result. "
        f"The answer is {(a + b) * c}."
    )


def db_size(path: Path) -> int:
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.stat().st_size + (Path(str(path) + "-wal").stat().st_size if Path(str(path) + "-wal").exists() else 0)


def run_ours(root: Path, n: int, plan: list[list[int]], texts: dict) -> dict:
    path = root / "ours.db"
    st = Store.open(path)
    ids = [f"ex{i:07d}" for i in range(n)]
    with st.transaction():
        st.add_examples(({"id": ids[i], "question": f"Question {i}?", "answer": str(i)} for i in range(n)), "pool")
    run = st.create_run("bench", {"bench": True})
    writes = []
    sizes = []
    for k, changed in enumerate(plan):
        t0 = time.perf_counter()
        with st.transaction():
            st.start_iteration(run, k)
            changes = {}
            for i in changed:
                rid = st.add_rationale(ids[i], texts[(i, k)], None, "bench", run_id=run, k=k)
                changes[ids[i]] = [(rid, 1.0)]
            st.write_dataset_version(run, k, changes)
            st.finish_iteration(run, k, {}, None, None)
        writes.append(time.perf_counter() - t0)
        sizes.append(db_size(path))
    t0 = time.perf_counter()
    data = st.dataset(run, ITERATIONS)
    reconstruct = time.perf_counter() - t0
    assert len(data) == n
    t0 = time.perf_counter()
    diff = st.diff_iterations(run, ITERATIONS - 1, run, ITERATIONS)
    diff_s = time.perf_counter() - t0
    assert len(diff["dataset"]["changed"]) == len(plan[-1])
    st.close()
    return {"sizes": sizes, "writes": writes, "reconstruct": reconstruct, "diff": diff_s}


def run_naive(root: Path, n: int, plan: list[list[int]], texts: dict) -> dict:
    path = root / "naive.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE dataset (k INTEGER, example TEXT, rationale TEXT)")
    con.execute("CREATE INDEX dataset_k ON dataset (k, example)")
    ids = [f"ex{i:07d}" for i in range(n)]
    current: dict[str, str] = {}
    writes, sizes = [], []
    for k, changed in enumerate(plan):
        t0 = time.perf_counter()
        for i in changed:
            current[ids[i]] = texts[(i, k)]
        con.execute("BEGIN")
        con.executemany("INSERT INTO dataset VALUES (?, ?, ?)", ((k, e, t) for e, t in current.items()))
        con.execute("COMMIT")
        writes.append(time.perf_counter() - t0)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(db_size(path))
    t0 = time.perf_counter()
    rows = con.execute("SELECT example, rationale FROM dataset WHERE k = ?", (ITERATIONS,)).fetchall()
    reconstruct = time.perf_counter() - t0
    assert len(rows) == n
    t0 = time.perf_counter()
    changed = con.execute(
        "SELECT b.example FROM dataset a JOIN dataset b ON a.example = b.example"
        " WHERE a.k = ? AND b.k = ? AND a.rationale != b.rationale",
        (ITERATIONS - 1, ITERATIONS),
    ).fetchall()
    diff_s = time.perf_counter() - t0
    assert len(changed) == len(plan[-1])
    con.close()
    return {"sizes": sizes, "writes": writes, "reconstruct": reconstruct, "diff": diff_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20,000 examples instead of 100,000")
    ap.add_argument("--examples", type=int, default=None)
    args = ap.parse_args(argv)
    n = args.examples or (20_000 if args.quick else 100_000)
    rng = random.Random(0)
    per_iter = int(n * CHANGE)
    plan = [list(range(n))] + [sorted(rng.sample(range(n), per_iter)) for _ in range(ITERATIONS)]
    texts = {(i, k): rationale_text(rng, i, k) for k, changed in enumerate(plan) for i in changed}
    print(f"store bench: {n} pool examples, {ITERATIONS} iterations changing {CHANGE:.0%} ({per_iter}) each")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours = run_ours(root, n, plan, texts)
        naive = run_naive(root, n, plan, texts)

    def growth(r: dict) -> float:
        return (r["sizes"][-1] - r["sizes"][0]) / ITERATIONS

    def write_avg(r: dict) -> float:
        return sum(r["writes"][1:]) / ITERATIONS

    rows = [
        ("database size after k=0 (MB)", ours["sizes"][0] / 1e6, naive["sizes"][0] / 1e6),
        (f"database size after k={ITERATIONS} (MB)", ours["sizes"][-1] / 1e6, naive["sizes"][-1] / 1e6),
        ("growth per iteration (MB)", growth(ours) / 1e6, growth(naive) / 1e6),
        ("write one iteration (s)", write_avg(ours), write_avg(naive)),
        (f"reconstruct iteration {ITERATIONS} (s)", ours["reconstruct"], naive["reconstruct"]),
        (f"diff {ITERATIONS - 1} vs {ITERATIONS} (s)", ours["diff"], naive["diff"]),
    ]
    print(f"{'':36} {'ours':>10} {'naive':>10} {'ours/naive':>10}")
    for name, a, b in rows:
        print(f"{name:36} {a:10.3f} {b:10.3f} {a / b if b else float('nan'):10.3f}")
    ratio = growth(ours) / growth(naive)
    scale = "" if n >= 100_000 else f" (at {n} examples; the goals are set at 100000)"
    print(f"size_growth_ratio: {ratio:.3f} (goal: ≤ 0.2)")
    print(f"reconstruct_s: {ours['reconstruct']:.3f} (goal: < 1){scale}")
    print(f"diff_s: {ours['diff']:.3f} (goal: < 1){scale}")
    ok = ratio <= 0.2 and ours["reconstruct"] < 1 and ours["diff"] < 1
    print(
        f"headline: the store grows {ratio:.2f}x as fast as copying the dataset per iteration "
        f"({'all goals met' if ok else 'GOAL MISSED'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
