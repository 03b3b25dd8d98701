"""SIGTERM takes effect within 10 s in every long step (tiny preset, real
subprocess, real signal): generation stops between decode steps, a teacher
batch cancels the requests still waiting (here every request takes 60 s),
training stops at its next optimizer step.  (That a stopped run resumes to
the same result is tests/loop/test_crash.py's.)"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import make_workspace, popen, teacher_answer

LIMIT_S = 10.0


def _status(ws):
    try:
        return json.loads((ws / ".distillery" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _slow_workspace(path, base_url, steps: int, **loop):
    ws = make_workspace(path, base_url, max_iterations=2, **loop)
    toml = ws / "distillery.toml"
    toml.write_text(toml.read_text().replace("max_steps = 3\n", f"max_steps = {steps}\n")
                    .replace("max_new_tokens = 8\n", "max_new_tokens = 300\n").replace("max_length = 512\n", "max_length = 1024\n"))
    return ws


@pytest.mark.parametrize("k,step", [(0, "baseline"), (0, "teach"), (0, "train"), (1, "mine"), (0, "evaluate")])
def test_sigterm_stops_each_step_within_10_s(tmp_path, k, step):
    slow = 60.0 if step == "teach" else 0.0
    with FakeOpenAIServer(answer=teacher_answer, latency=slow) as srv:
        # mine generates only when evaluate did not already score the pool with the same adapter
        ws = _slow_workspace(tmp_path / "ws", srv.base_url, 400 if step == "train" else 3,
                             **({"eval_pool": False} if step == "mine" else {}))
        if step in ("mine", "evaluate"):  # get past the slow teach step first
            srv.latency = 0.0
        p = popen("run", "-w", str(ws))
        try:
            deadline = time.time() + 240
            while time.time() < deadline and p.poll() is None:
                doc = _status(ws)
                if doc.get("pid") == p.pid and doc.get("iteration") == k and doc.get("step") == step:
                    break
                time.sleep(0.02)
            assert p.poll() is None, f"the run ended before {k}:{step}: {p.stdout.read()[-2000:]}"
            time.sleep(0.5)  # well inside the step
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=60)
            latency = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, out[-2000:]
        assert "stopped at a safe point" in out
        assert latency < LIMIT_S, f"{k}:{step} took {latency:.1f} s to stop"
