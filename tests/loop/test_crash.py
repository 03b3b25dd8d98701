"""Crash safety: SIGKILL at ten moments, SIGTERM at a safe point.

The loop runs as a real subprocess (`python -m loop run`).  Five kills are
injected at exact points through $DISTILLERY_CRASH_AT (inside a step's commit
transaction, between steps, right after a commit); five more land at random
moments while a given step is running (teach, train, evaluate), found by
watching the heartbeat file.  After every kill `run` is started again; the
finished run must equal an uninterrupted one, with no teacher request billed
twice (counted by the server) and no row duplicated.

The one window where a request can be paid twice is a SIGKILL while it is in
flight: the server has answered, the client died before writing the answer to
the cache.  No client can close that window without provider-side idempotency
keys.  So the test checks what can be guaranteed, from the server's count:
a request is asked again only if its answer was not in the cache when the
process died (snapshots taken after every kill), and at most max_concurrency
requests per kill are asked twice."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time

from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import cli, datasets, make_workspace, popen, run_inprocess, teacher_answer

INJECTED = ["baseline:0:inside", "teach:0:inside", "version:0:inside", "commit:0:inside", "mine:1:after"]
RANDOM_STEPS = [(1, "teach"), (1, "train"), (1, "evaluate"), (2, "teach"), (2, "train")]


def _status(ws):
    try:
        return json.loads((ws / ".distillery" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill_during(ws, k: int, step: str, rng: random.Random) -> str:
    p = popen("run", "-w", str(ws))
    deadline = time.time() + 120
    try:
        while time.time() < deadline and p.poll() is None:
            doc = _status(ws)
            if doc.get("pid") == p.pid and doc.get("iteration") == k and doc.get("step") == step:
                time.sleep(rng.uniform(0.0, 0.15))
                break
            time.sleep(0.01)
        if p.poll() is not None:
            return f"finished before {k}:{step} (rc {p.returncode})"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        return f"killed in {k}:{step}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _cached(ws) -> set[str]:
    """The requests (messages) whose answers are in the cache now."""
    con = sqlite3.connect(ws / "distillery.db")
    try:
        rows = con.execute("SELECT request FROM teacher_calls WHERE status = 'ok'").fetchall()
    finally:
        con.close()
    return {json.dumps(json.loads(r[0])["messages"], sort_keys=True) for r in rows}


def _duplicates(ws) -> dict:
    con = sqlite3.connect(ws / "distillery.db")
    try:
        q = {
            "dataset_entries": "SELECT COUNT(*) FROM (SELECT run_id, k, example_id, rationale_id, COUNT(*) c"
                               " FROM dataset_entries GROUP BY 1, 2, 3, 4 HAVING c > 1)",
            "predictions": "SELECT COUNT(*) FROM (SELECT run_id, k, phase, example_id, sample, COUNT(*) c"
                           " FROM predictions GROUP BY 1, 2, 3, 4, 5 HAVING c > 1)",
            "iterations": "SELECT COUNT(*) FROM (SELECT run_id, k, COUNT(*) c FROM iterations GROUP BY 1, 2 HAVING c > 1)",
            "examples": "SELECT COUNT(*) FROM (SELECT question, COUNT(*) c FROM examples GROUP BY 1 HAVING c > 1)",
        }
        return {t: con.execute(sql).fetchone()[0] for t, sql in q.items()}
    finally:
        con.close()


def test_sigkill_at_ten_moments_then_resume_equals_uninterrupted(tmp_path):
    with FakeOpenAIServer(answer=teacher_answer) as ref_srv:
        ref_ws = make_workspace(tmp_path / "ref", ref_srv.base_url)
        assert run_inprocess(ref_ws, "run") == 0
        reference = datasets(ref_ws)
    assert sorted(reference) == [0, 1, 2]

    rng = random.Random(1234)
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path / "crash", srv.base_url)
        log = []
        snapshots = []  # after each kill: (requests billed so far, answers in the cache)
        for point in INJECTED:
            res = cli("run", "-w", str(ws), env_extra={"DISTILLERY_CRASH_AT": point})
            assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stdout[-2000:], res.stderr[-2000:])
            log.append(f"killed at {point}")
            snapshots.append((len(srv.bodies), _cached(ws)))
        for k, step in RANDOM_STEPS:
            log.append(_kill_during(ws, k, step, rng))
            snapshots.append((len(srv.bodies), _cached(ws)))
        kills = [x for x in log if x.startswith("killed")]
        assert len(kills) == 10, log

        res = cli("run", "-w", str(ws))
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert datasets(ws) == reference, log
        assert _duplicates(ws) == {"dataset_entries": 0, "predictions": 0, "iterations": 0, "examples": 0}

        # server side: every distinct request of the uninterrupted run was made, and
        # a request was made again only when its answer had not reached the cache
        # before the kill (it was in flight); never one whose answer was recorded
        assert set(srv.billed) == set(ref_srv.billed)
        msgs = [json.dumps(b["messages"], sort_keys=True) for b in srv.bodies]
        for i, (n_before, cached) in enumerate(snapshots):
            later = set(msgs[n_before:])
            assert not (later & cached), f"kill {i}: a request whose answer was cached was asked again"
        twice = sum(v - 1 for v in srv.billed.values())
        assert twice <= 8 * len(kills), twice  # max_concurrency (8) in flight per kill at most
        log.append(f"requests asked twice (in flight at a kill): {twice}")
        print("\n".join(log))


def test_sigterm_stops_at_a_safe_point_and_run_resumes(ws):
    p = popen("run", "-w", str(ws))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            doc = _status(ws)
            if doc.get("pid") == p.pid and doc.get("iteration") == 1 and doc.get("step") == "train":
                break
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be stopped"
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        assert time.time() - t0 < 30
        assert p.returncode == 0, out[-2000:]
        assert "safe point" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    st = cli("status", "-w", str(ws), "--json")
    doc = json.loads(st.stdout)
    assert doc["running"] is False and doc["run_status"] == "stopped"
    assert doc["iterations_done"] == 1
    res = cli("run", "-w", str(ws))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads(cli("status", "-w", str(ws), "--json").stdout)
    assert doc["iterations_done"] == 3 and doc["stop_reason"] == "max_iterations"
