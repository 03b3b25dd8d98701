"""The daemon: `run --detach --follow`, one writer per workspace, `status`,
waking on new pool data, `stop`."""

from __future__ import annotations

import json
import time

from tests.loop.helpers import cli, make_workspace, teacher_answer  # noqa: F401


def _wait(ws, pred, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            doc = json.loads((ws / ".distillery" / "status.json").read_text())
        except (OSError, ValueError):
            doc = {}
        if pred(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"timed out; last status: {doc}")


def test_detach_follow_second_writer_wake_and_stop(tmp_path, teacher_server):
    ws = make_workspace(tmp_path / "ws", teacher_server.base_url, max_iterations=1)
    res = cli("run", "-w", str(ws), "--detach", "--follow")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "running in the background" in res.stdout
    try:
        doc = _wait(ws, lambda d: d.get("state") == "running" and d.get("run") == "main")
        pid = doc["pid"]

        second = cli("run", "-w", str(ws))
        assert second.returncode == 2
        assert f"pid {pid}" in second.stderr and "distillery stop" in second.stderr

        _wait(ws, lambda d: d.get("state") == "idle")  # converged after 1 iteration, now following
        st = json.loads(cli("status", "-w", str(ws), "--json").stdout)
        assert st["running"] is True and st["pid"] == pid and st["iterations_done"] == 1
        assert st["heartbeat_age_s"] is not None and st["heartbeat_age_s"] < 10
        assert st["stop_reason"] == "max_iterations"

        new = tmp_path / "more.jsonl"
        new.write_text(json.dumps({"question": "Zed has 3 pens. Then Zed buys 2 more pens. How many pens does Zed have now?",
                                   "answer": "5"}) + "\n")
        added = cli("data", "add", str(new), "-w", str(ws), "--split", "pool")
        assert added.returncode == 0, added.stderr
        _wait(ws, lambda d: d.get("state") == "running" and d.get("iteration") == 1)  # woke up

        stopped = cli("stop", "-w", str(ws), "--json")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert json.loads(stopped.stdout)["stopped"] is True
        st = json.loads(cli("status", "-w", str(ws), "--json").stdout)
        assert st["running"] is False
        log = (ws / ".distillery" / "run.log").read_text()
        assert "woke up: new pool examples" in log
    finally:
        cli("stop", "-w", str(ws), "--timeout", "30")
