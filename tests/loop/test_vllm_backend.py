"""generation.backend = "vllm": the loop generates on a vLLM server (here the
vLLM-protocol server of tests/vllm_fakeserver.py on 127.0.0.1) and loads each
iteration's adapter on it.

The equality test runs the tiny preset twice: once with the transformers
backend, then with the vllm backend against a server that answers with the
texts the first run generated, looked up by (the requested adapter's sha256,
the messages).  Every row in the store must come out the same, which checks
the prompts, the adapter each step asks for, the seeds and the scoring."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
from pathlib import Path

from loop.config.schema import load_config
from loop.core.orchestrator import Orchestrator
from store import Store
from tests.loop.helpers import POOL, cli, datasets, db_rows, make_workspace, run_inprocess
from tests.vllm_fakeserver import FakeVLLMServer

SELF_TEACHER = """
[[teachers]]
name = "self"
model = "self"
samples = 2
temperature = 0.8
max_tokens = 8
"""


def vllm_workspace(path: Path, teacher_url: str, vllm_url: str | None, *, n_samples: int = 0, batch_size: int = 16,
                   self_teacher: bool = False, extra: str = "", **loop) -> Path:
    """The loop tests' tiny workspace; with vllm_url, generating on that server."""
    ws = make_workspace(path, teacher_url, **loop)
    toml = (ws / "distillery.toml").read_text()
    backend = f'backend = "vllm"\nvllm_base_url = "{vllm_url}/v1"\n' if vllm_url else ""
    toml = toml.replace("[generation]\nbatch_size = 16\n", f"[generation]\n{backend}{extra}batch_size = {batch_size}\n")
    toml = toml.replace("n_samples = 0", f"n_samples = {n_samples}")
    if self_teacher:  # room for its prompts (the tiny tokenizer spends a token per character)
        toml = toml.replace("max_length = 512", "max_length = 2048")
    (ws / "distillery.toml").write_text(toml + (SELF_TEACHER if self_teacher else ""))
    return ws


def file_sha(adapter_dir: str | Path) -> str:
    return hashlib.sha256((Path(adapter_dir) / "adapter_model.safetensors").read_bytes()).hexdigest()


def _key(messages) -> str:
    return json.dumps(messages, sort_keys=True)


def recorded_answers(ws: Path) -> dict:
    """{(adapter sha256 or "base", messages): {sample index: text}} of every
    text run `main` generated: the student's predictions (baseline and mine
    with the adapter before k, eval with k's) and the self teacher's samples."""
    import prompts

    table: dict = {}

    def add(sha, messages, sample, text):
        entry = table.setdefault((sha, _key(messages)), {})
        assert entry.setdefault(sample, text) == text, "one prompt, one adapter, two greedy texts"

    tpl = prompts.load_template("student", ws)
    st = Store.open(ws)
    try:
        run = st.get_run("main")
        questions = {e["id"]: e["question"] for e in st.list_examples()}
        shas = {it["k"]: it["adapter_sha256"] for it in st.list_iterations(run["id"])}
        for k in sorted(shas):
            for phase, sha in (("baseline", "base"), ("mine", shas.get(k - 1, "base")), ("eval", shas[k])):
                for p in st.list_predictions(run["id"], k, phase):
                    add(sha, tpl.render(question=questions[p["example_id"]], answer_format="number"), p["sample"], p["output"])
    finally:
        st.close()
    con = sqlite3.connect(ws / "distillery.db")
    try:
        calls = con.execute("SELECT c.request, t.body FROM teacher_calls c JOIN texts t ON t.hash = c.response_hash"
                            " WHERE c.model = 'self'").fetchall()
    finally:
        con.close()
    for request, text in calls:
        req = json.loads(request)
        sha = req["model"].split("@", 1)[1]
        add("base" if sha.startswith("init-") else sha, req["messages"], req["sample_index"], text)
    return table


def replaying(table: dict):
    """A server answer: the recorded text(s) of the requested adapter and prompt."""

    def answer(model, adapter_path, body):
        entry = table[("base" if adapter_path is None else file_sha(adapter_path), _key(body["messages"]))]
        if body["temperature"] == 0:
            return [entry[0]]
        return [entry[s] for s in range(1, body["n"] + 1)]

    return answer


def predictions(ws: Path) -> dict:
    st = Store.open(ws)
    try:
        run = st.get_run("main")
        out = {}
        for it in st.list_iterations(run["id"]):
            for phase in ("baseline", "mine", "eval"):
                rows = st.list_predictions(run["id"], it["k"], phase)
                out[(it["k"], phase)] = sorted((p["example_id"], p["sample"], p["output"], p["answer"], p["correct"])
                                               for p in rows)
        return out, {it["k"]: it["adapter_sha256"] for it in st.list_iterations(run["id"])}
    finally:
        st.close()


def test_vllm_rows_equal_the_transformers_rows(tmp_path, teacher_server):
    opts = dict(n_samples=1, batch_size=8, self_teacher=True, max_iterations=2)  # 12 pool questions: 2 chunks
    ref = vllm_workspace(tmp_path / "ref", teacher_server.base_url, None, **opts)
    assert run_inprocess(ref, "run") == 0
    want, ref_shas = predictions(ref)
    assert all(want[(k, "mine")] for k in (0, 1)) and all(want[(k, "eval")] for k in (0, 1))

    with FakeVLLMServer(replaying(recorded_answers(ref)), base="tiny") as srv:
        ws = vllm_workspace(tmp_path / "vllm", teacher_server.base_url, srv.url, **opts)
        assert run_inprocess(ws, "run") == 0
        assert srv.errors == []
        got, shas = predictions(ws)
        assert got == want
        assert shas == ref_shas and datasets(ws) == datasets(ref)

        # one new name per trained adapter, the previous one unloaded
        names = [f"student-k{k}-{shas[k][:8]}" for k in (0, 1)]
        assert srv.loads == names and srv.unloads == names[:1]
        assert srv.adapters == {names[1]: str((ws / "runs/main/iter-1/adapter").resolve())}
        chats = srv.chats()
        assert {b["model"] for b in chats} == {"tiny", *names}  # the untrained adapter is the base model

        # mine at k = 1 asked with iteration 0's adapter; chunk c of 8 is seeded seed(1, 2) + c,
        # and its prompt i samples with that + i
        import prompts

        tpl = prompts.load_template("student", ws)
        st = Store.open(ws)
        try:
            pool = st.list_examples("pool")
        finally:
            st.close()
        index = {_key(tpl.render(question=e["question"], answer_format="number")): i for i, e in enumerate(pool)}
        sampled = {index[_key(b["messages"])]: b["seed"] for b in chats
                   if b["model"] == names[0] and b["temperature"] > 0 and _key(b["messages"]) in index}
        assert sampled == {j: 1 * 101 + 2 + j // 8 + j % 8 for j in range(POOL)}
        # the self teacher sampled on the server too: one request per prompt for its samples 1..
        con = sqlite3.connect(ws / "distillery.db")
        try:
            self_sampled = con.execute("SELECT COUNT(*) FROM teacher_calls WHERE model = 'self'"
                                       " AND json_extract(request, '$.sample_index') = 1").fetchone()[0]
        finally:
            con.close()
        assert self_sampled > POOL  # iteration 0's rationale prompts, then refine prompts
        assert sum(_key(b["messages"]) not in index and b["temperature"] > 0 for b in chats) == self_sampled


def _adapter(ws: Path, k: int, weights: bytes) -> str:
    d = ws / "runs" / "main" / f"iter-{k}" / "adapter"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(weights)
    return f"runs/main/iter-{k}/adapter"


def test_the_server_not_this_process_says_what_is_loaded(tmp_path, teacher_server):
    """answer_questions on the vllm backend, without the student in memory:
    a leftover adapter of this workspace is unloaded at the first use, a name
    the server already holds (same weights) is not loaded again, a server that
    lost the adapter (restarted) gets it again and the chunk is retried."""
    from loop.core.steps.common import answer_questions

    with FakeVLLMServer(base="tiny") as srv:
        ws = vllm_workspace(tmp_path / "ws", teacher_server.base_url, srv.url)
        a0, a1 = _adapter(ws, 0, b"zero"), _adapter(ws, 1, b"one")
        n0, n1 = f"student-k0-{file_sha(ws / a0)[:8]}", f"student-k1-{file_sha(ws / a1)[:8]}"
        srv.adapters = {n0: str((ws / a0).resolve()), "other-workspace": "/elsewhere/adapter"}  # a killed run's leftovers
        o = Orchestrator(ws, load_config(ws / "distillery.toml"), None, quiet=True)
        o.templates = o.load_templates(strict=True)
        examples = [{"question": f"What is {i} + 1?"} for i in range(3)]

        out = answer_questions(o.step_context(0), "evaluate", examples, a1, seed=5)
        assert [len(x) for x in out] == [1, 1, 1] and out[0][0].startswith(n1 + "|")
        assert srv.unloads == [n0] and srv.loads == [n1]  # the other workspace's adapter is left alone
        assert set(srv.adapters) == {"other-workspace", n1}

        srv.adapters.pop(n1)  # the server restarted
        out = answer_questions(o.step_context(0), "evaluate", examples, a1, seed=5)
        assert out[0][0].startswith(n1 + "|") and srv.loads == [n1, n1]

        fresh = Orchestrator(ws, o.cfg, None, quiet=True)  # a new process: the name is held, same weights
        fresh.templates = o.templates
        answer_questions(fresh.step_context(0), "mine", examples, a1, n_samples=2, seed=7)
        assert srv.loads == [n1, n1]
        answer_questions(fresh.step_context(0), "baseline", examples, None)
        assert srv.unloads == [n0, n1] and srv.chats()[-1]["model"] == "tiny"
        assert not o.model.in_memory and not fresh.model.in_memory  # generating loaded no model here
        sampled = [b for b in srv.chats() if b["temperature"] > 0]
        assert sorted(b["seed"] for b in sampled) == [7, 8, 9] and all(b["n"] == 2 for b in sampled)


def test_no_server_or_no_url_is_exit_2_at_preflight(tmp_path, teacher_server, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ws = vllm_workspace(tmp_path / "down", teacher_server.base_url, f"http://127.0.0.1:{port}")
    before = db_rows(ws)
    assert run_inprocess(ws, "run") == 2
    err = capsys.readouterr().err
    assert f"no vLLM server answers at http://127.0.0.1:{port}/v1" in err
    assert f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve tiny --enable-lora --max-lora-rank 8 --port {port}" in err
    assert db_rows(ws) == before and teacher_server.bodies == []  # nothing written, nothing asked

    ws = vllm_workspace(tmp_path / "unset", teacher_server.base_url, None, extra='backend = "vllm"\n')
    assert run_inprocess(ws, "run") == 2
    assert "needs generation.vllm_base_url" in capsys.readouterr().err

    with FakeVLLMServer(base="tiny") as srv:
        ws = vllm_workspace(tmp_path / "full", teacher_server.base_url, srv.url)
        toml = (ws / "distillery.toml").read_text().replace('name = "tiny"\n', 'name = "tiny"\nfull_finetune = true\n')
        (ws / "distillery.toml").write_text(toml)
        assert run_inprocess(ws, "run") == 2
        assert "student.full_finetune = true trains none" in capsys.readouterr().err


def test_a_refused_adapter_is_exit_1_and_the_fixed_server_resumes(tmp_path, teacher_server, capsys):
    with FakeVLLMServer(base="tiny", enable_lora=False) as srv:
        ws = vllm_workspace(tmp_path / "ws", teacher_server.base_url, srv.url, max_iterations=1)
        assert run_inprocess(ws, "run") == 1
        err = capsys.readouterr().err
        assert "the student's evaluate answers" in err and "did not load adapter 'student-k0-" in err
        assert "LoRA is not enabled" in err and "vllm serve tiny --enable-lora --max-lora-rank 8" in err
        assert srv.loads == [] and srv.counts["/v1/load_lora_adapter"] == 1

        srv.enable_lora = True  # restarted with --enable-lora
        assert run_inprocess(ws, "run") == 0
        assert len(srv.loads) == 1 and srv.loads[0].startswith("student-k0-")


def test_sigkill_between_train_and_the_adapter_load_then_resume_loads_it(tmp_path, teacher_server):
    with FakeVLLMServer(base="tiny") as srv:
        ws = vllm_workspace(tmp_path / "ws", teacher_server.base_url, srv.url, max_iterations=1)
        res = cli("run", "-w", str(ws), env_extra={"DISTILLERY_CRASH_AT": "train:0:after"})
        assert res.returncode == -signal.SIGKILL, res.stdout[-2000:] + res.stderr[-2000:]
        assert srv.counts["/v1/chat/completions"] > 0 and srv.loads == []  # baseline and mine: the base model

        res = cli("run", "-w", str(ws))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        name = f"student-k0-{file_sha(ws / 'runs/main/iter-0/adapter')[:8]}"
        assert srv.loads == [name]
        assert any(b["model"] == name for b in srv.chats())
