"""A writer process commits iterations while reader processes (the API and the
real `distillery` CLI) read: a reader never sees part of an iteration."""

import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time

from store import Store

ITERATIONS = 12
CHANGES = 15


def writer(db: str, ready, done) -> None:
    st = Store.open(db)
    rng = random.Random(0)
    ids = [f"e{i}" for i in range(100)]
    st.add_examples([{"id": e, "question": f"q{e}", "answer": "1"} for e in ids], "pool")
    run = st.create_run("main", {})
    ready.set()
    for k in range(ITERATIONS):
        # one iteration's writes, slowed down so a reader would catch a partial one
        with st.transaction():
            st.start_iteration(run, k)
            changes = {}
            for ex in rng.sample(ids, CHANGES):
                changes[ex] = [(st.add_rationale(ex, f"{ex}@{k}", "1", "self", run_id=run, k=k), 1.0)]
                time.sleep(0.002)
            written = st.write_dataset_version(run, k, changes)
            st.record_predictions(run, k, "eval", [
                {"example_id": ex, "output": "1", "answer": "1", "correct": True} for ex in changes
            ])
            time.sleep(0.02)
            st.finish_iteration(run, k, {"rows": written, "preds": len(changes)}, None, None)
        time.sleep(0.01)
    st.close()
    done.set()


def reader(db: str, ready, done, out) -> None:
    ready.wait(30)
    st = Store.open(db)
    seen, checks, bad = set(), 0, []
    while True:
        finished = done.is_set()
        with st.snapshot():
            run = st.get_run("main")["id"]
            its = st.list_iterations(run)
            done_ks = [d["k"] for d in its if d["status"] == "done"]
            if any(d["status"] != "done" for d in its):
                bad.append(f"saw a running iteration: {[d['k'] for d in its]}")
            max_entry = st.conn.execute("SELECT MAX(k) FROM dataset_entries").fetchone()[0]
            if max_entry is not None and (not done_ks or max_entry > max(done_ks)):
                bad.append(f"dataset rows at k={max_entry} before the iteration is done")
            for d in its:
                rows = st.conn.execute("SELECT COUNT(*) FROM dataset_entries WHERE run_id = ? AND k = ?", (run, d["k"])).fetchone()[0]
                preds = len(st.list_predictions(run, d["k"], "eval"))
                if rows != d["metrics"]["rows"] or preds != d["metrics"]["preds"]:
                    bad.append(f"k={d['k']}: {rows} rows/{preds} preds vs {d['metrics']}")
                checks += 1
            if done_ks:
                st.dataset(run, max(done_ks))
            seen.add(len(done_ks))
        if finished:
            break
    st.close()
    out.put({"seen": sorted(seen), "checks": checks, "bad": bad[:5]})


def test_concurrent_reader_and_writer_processes(tmp_path):
    from loop.config.workspace import init_workspace

    init_workspace(tmp_path, "tiny")
    db = str(tmp_path / "distillery.db")
    ctx = mp.get_context("spawn")
    ready, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    w = ctx.Process(target=writer, args=(db, ready, done))
    r = ctx.Process(target=reader, args=(db, ready, done, out))
    w.start()
    r.start()
    assert ready.wait(60)
    # the real CLI, in its own processes, while the writer writes
    env = dict(os.environ, DISTILLERY_WORKSPACE=str(tmp_path))
    cli_runs = 0
    while not done.is_set() and cli_runs < 4:
        p = subprocess.run([sys.executable, "-m", "loop", "iterations", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        for it in doc["iterations"]:
            assert it["status"] == "done"
            assert it["dataset_changed"] == it["metrics"]["preds"]
        cli_runs += 1
    w.join(120)
    res = out.get(timeout=120)
    r.join(30)
    assert w.exitcode == 0 and r.exitcode == 0
    assert res["bad"] == [], res["bad"]
    assert res["checks"] > 0 and len(res["seen"]) > 2, res  # it did read while the writer wrote
    assert res["seen"][-1] == ITERATIONS
