"""Crash safety: SIGKILL at ten moments, SIGTERM at a safe point.

The loop runs as a real, separate process: `distillery run` (the entry point,
loop.cli.main.main) in a child forked from a fork server that imported torch,
transformers and LiteLLM once (tests/loop/helpers.py: Forked).  So every kill
is a real SIGKILL -- no `finally` runs: run.pid and status.json keep the dead
pid, only the kernel drops the flock, the database is left mid-write -- and
none pays the interpreter start-up.  Five kills are injected at exact points
through $DISTILLERY_CRASH_AT (inside a step's commit transaction, between
steps, right after a commit); after each, the database shows that step's
writes rolled back (inside) or committed (after).  Five more land at random
moments while a given step is running (teach, train, evaluate), found by
watching the heartbeat file.  After every kill `run` is started again; the
finished run must equal an uninterrupted one (run once, in a forked process
too), with no teacher request billed twice (counted by the server) and no row
duplicated.

The one window where a request can be paid twice is a SIGKILL while it is in
flight: the server has answered, the client died before writing the answer to
the cache.  No client can close that window without provider-side idempotency
keys.  So the test checks what can be guaranteed, from the server's count:
a request is asked again only if its answer was not in the cache when the
process died (snapshots taken after every kill), and at most max_concurrency
requests per kill are asked twice.

SIGTERM during training stops the process at a safe point (exit 0, run
"stopped" after iteration 0); `run` then resumes and finishes the same run as
an uninterrupted one."""

from __future__ import annotations

import itertools
import json
import random
import signal
import sqlite3
import time
from collections import Counter

import pytest

from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import Forked, cli_json, datasets, make_workspace, start_forkserver, stop_forkserver, teacher_answer

INJECTED = ["baseline:0:inside", "teach:0:inside", "version:0:inside", "commit:0:inside", "mine:1:after"]
# 1:train twice: the second kill lands in training resumed from the first one's
# checkpoint.  Not 2:train: at k = 2 no refinement is accepted, so the dataset does
# not change, train is skipped (loop.on_unchanged) and evaluate reuses k = 1's
# answers: both last milliseconds, too short to be caught from the heartbeat.
RANDOM_STEPS = [(1, "teach"), (1, "train"), (1, "train"), (1, "evaluate"), (2, "teach")]

# What each `inside` kill must have rolled back: the step's own rows (0 left).
ROLLED_BACK = {
    "baseline:0:inside": "SELECT COUNT(*) FROM predictions WHERE k = 0 AND phase = 'baseline'",
    "teach:0:inside": "SELECT COUNT(*) FROM rationales WHERE k = 0 AND source != 'gold'",
    "version:0:inside": "SELECT COUNT(*) FROM dataset_entries WHERE k = 0",
    "commit:0:inside": "SELECT COUNT(*) FROM iterations WHERE k = 0 AND status = 'done'",
}


@pytest.fixture(scope="module")
def forked(tmp_path_factory):
    """Start `distillery ARGS` as a forked process: forked(*args, env_extra=...)."""
    start_forkserver()
    logs = tmp_path_factory.mktemp("forked")
    n = itertools.count()

    def start(*args, env_extra=None) -> Forked:
        return Forked(*args, env_extra=env_extra, log=logs / f"{next(n)}.log")

    yield start
    stop_forkserver()


@pytest.fixture(scope="module")
def reference(forked, tmp_path_factory):
    """The uninterrupted run, in a forked process like the crashed ones:
    (its datasets, the server's count of completions by request)."""
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path_factory.mktemp("ref") / "ws", srv.base_url)
        p = forked("run", "-w", str(ws))
        assert p.wait(timeout=300) == 0, p.output()[-6000:]
        data = datasets(ws)
        assert sorted(data) == [0, 1, 2]
        assert _duplicates(ws) == {"dataset_entries": 0, "predictions": 0, "iterations": 0, "examples": 0}
        return data, Counter(srv.billed)


def _status(ws):
    try:
        return json.loads((ws / ".distillery" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _kill_during(p: Forked, ws, k: int, step: str, rng: random.Random) -> str:
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
        assert p.wait(timeout=30) == -signal.SIGKILL
        return f"killed in {k}:{step}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def _query(ws, sql: str):
    con = sqlite3.connect(ws / "distillery.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _cached(ws) -> set[str]:
    """The requests (messages) whose answers are in the cache now."""
    rows = _query(ws, "SELECT request FROM teacher_calls WHERE status = 'ok'")
    return {json.dumps(json.loads(r[0])["messages"], sort_keys=True) for r in rows}


def _done_steps(ws) -> set[tuple[int, str]]:
    return set(_query(ws, "SELECT k, step FROM iteration_steps WHERE status = 'done'"))


def _duplicates(ws) -> dict:
    q = {
        "dataset_entries": "SELECT COUNT(*) FROM (SELECT run_id, k, example_id, rationale_id, COUNT(*) c"
                           " FROM dataset_entries GROUP BY 1, 2, 3, 4 HAVING c > 1)",
        "predictions": "SELECT COUNT(*) FROM (SELECT run_id, k, phase, example_id, sample, COUNT(*) c"
                       " FROM predictions GROUP BY 1, 2, 3, 4, 5 HAVING c > 1)",
        "iterations": "SELECT COUNT(*) FROM (SELECT run_id, k, COUNT(*) c FROM iterations GROUP BY 1, 2 HAVING c > 1)",
        "examples": "SELECT COUNT(*) FROM (SELECT question, COUNT(*) c FROM examples GROUP BY 1 HAVING c > 1)",
    }
    return {t: _query(ws, sql)[0][0] for t, sql in q.items()}


def test_sigkill_at_ten_moments_then_resume_equals_uninterrupted(forked, reference, tmp_path):
    reference, ref_billed = reference

    rng = random.Random(1234)
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path / "crash", srv.base_url)
        log = []
        snapshots = []  # after each kill: (requests billed so far, answers in the cache)
        for point in INJECTED:
            p = forked("run", "-w", str(ws), env_extra={"DISTILLERY_CRASH_AT": point})
            rc = p.wait(timeout=300)
            assert rc == -signal.SIGKILL, (point, rc, p.output()[-3000:])
            log.append(f"killed at {point}")
            snapshots.append((len(srv.bodies), _cached(ws)))
            step, k, where = point.split(":")
            if where == "inside":  # the commit transaction rolled back: the step is not done, its rows are gone
                assert (int(k), step) not in _done_steps(ws), point
                assert _query(ws, ROLLED_BACK[point])[0][0] == 0, point
            else:
                assert (int(k), step) in _done_steps(ws), point
        for k, step in RANDOM_STEPS:
            log.append(_kill_during(forked("run", "-w", str(ws)), ws, k, step, rng))
            snapshots.append((len(srv.bodies), _cached(ws)))
        kills = [x for x in log if x.startswith("killed")]
        assert len(kills) == 10, "; ".join(log)

        p = forked("run", "-w", str(ws))
        assert p.wait(timeout=300) == 0, p.output()[-6000:]
        assert datasets(ws) == reference, log
        assert _duplicates(ws) == {"dataset_entries": 0, "predictions": 0, "iterations": 0, "examples": 0}

        # server side: every distinct request of the uninterrupted run was made, and
        # a request was made again only when its answer had not reached the cache
        # before the kill (it was in flight); never one whose answer was recorded
        assert set(srv.billed) == set(ref_billed)
        msgs = [json.dumps(b["messages"], sort_keys=True) for b in srv.bodies]
        for i, (n_before, cached) in enumerate(snapshots):
            later = set(msgs[n_before:])
            assert not (later & cached), f"kill {i}: a request whose answer was cached was asked again"
        twice = sum(v - 1 for v in srv.billed.values())
        assert twice <= 8 * len(kills), twice  # max_concurrency (8) in flight per kill at most
        log.append(f"requests asked twice (in flight at a kill): {twice}")
        print("\n".join(log))


def test_sigterm_stops_at_a_safe_point_and_run_resumes(forked, reference, ws, capsys):
    p = forked("run", "-w", str(ws))
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
            p.wait(timeout=30)
    doc = cli_json(capsys, ws, "status")
    assert doc["running"] is False and doc["run_status"] == "stopped"
    assert doc["iterations_done"] == 1
    p = forked("run", "-w", str(ws))
    assert p.wait(timeout=300) == 0, p.output()[-2000:]
    doc = cli_json(capsys, ws, "status")
    assert doc["iterations_done"] == 3 and doc["stop_reason"] == "max_iterations"
    assert datasets(ws) == reference[0]  # the stop changed nothing in the result
