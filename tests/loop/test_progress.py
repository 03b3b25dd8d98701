"""Long steps report done/total as they go in `status --json` (the heartbeat):
teach counts teacher requests as they complete, train counts optimizer steps
of a known total."""

from __future__ import annotations

import json
import time

from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import make_workspace, popen, teacher_answer


def test_status_shows_teach_and_train_progress_while_they_run(tmp_path):
    with FakeOpenAIServer(answer=teacher_answer, latency=0.4) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url, max_iterations=1)
        toml = ws / "distillery.toml"
        toml.write_text(toml.read_text().replace("max_retries = 2\n", "max_retries = 2\nmax_concurrency = 2\n")
                        .replace("max_steps = 3\n", "max_steps = 40\n"))
        seen: dict[str, set] = {"teach": set(), "train": set()}
        p = popen("run", "-w", str(ws))
        try:
            while p.poll() is None:
                try:
                    doc = json.loads((ws / ".distillery" / "status.json").read_text())
                except (OSError, ValueError):
                    doc = {}
                prog = doc.get("progress") or {}
                if doc.get("step") in seen and prog.get("total"):
                    seen[doc["step"]].add((prog["done"], prog["total"]))
                time.sleep(0.05)
            out = p.stdout.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, out[-2000:]
    teach_total = {t for _, t in seen["teach"]}
    assert teach_total == {12}, seen["teach"]  # every pool question once at k = 0
    assert any(0 < d < 12 for d, _ in seen["teach"]), seen["teach"]  # seen mid-step, not only at the end
    assert {t for _, t in seen["train"]} == {40}, seen["train"]
    assert any(0 < d < 40 for d, _ in seen["train"]), seen["train"]
