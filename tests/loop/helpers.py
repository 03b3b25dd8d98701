"""Helpers of the loop tests: a tiny-model workspace whose teacher is a
real OpenAI-compatible HTTP server on 127.0.0.1 (tests/fakeserver.py).

The fake teacher answers from the generated task's gold rationales, so what it
says is checkable: at iteration 0 it gets every other question wrong on
purpose (so those rationales are rejected and the examples become refinement
targets), and it always answers `refine` prompts correctly, naming the mistake.
Torch runs on one thread: the tiny model is faster that way, and the test
machine's cores are shared."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loop.data.task import generate_task  # noqa: E402
from tests.fakeserver import FakeOpenAIServer  # noqa: E402

torch.set_num_threads(1)

POOL, DEV = 12, 8


def task_rows():
    return generate_task(0, POOL, DEV, 1, 20)


def _quoted_after(text: str, label: str) -> str | None:
    """The text between the triple quotes that follow `label` in a prompt."""
    m = re.search(re.escape(label) + r'\s*"""\n(.*?)\n"""', text, re.S)
    return m.group(1) if m else None


REFINE_KINDS = ("derivation", "parrot", "copy_previous", "copy_student")


def refine_kind(i: int) -> str:
    """What the scripted teacher writes for the refine prompt of pool question i."""
    return REFINE_KINDS[i % 4]


def teacher_answer(messages):
    """The scripted teacher: find the question in the prompt, answer from gold.

    seed (`rationale`): the gold derivation, except every other question gets a
    careless answer with no computation (rejected by verify).  `refine`: by
    question, a real derivation, parroting of the gold answer, a copy of the
    demonstration the student studied, or a copy of the student's wrong output;
    only the derivation may be accepted.  `verify` (the judge): PASS."""
    pool, dev = task_rows()
    text = "\n".join(m["content"] for m in messages)
    if "Solution to check:" in text:  # the verify template
        return "VERDICT: PASS\nREASON: it computes the answer from the question's numbers."
    for i, row in enumerate(pool + dev):
        if row["question"] in text:
            if "A wrong answer to it:" in text:  # the refine template
                kind = refine_kind(i)
                if kind == "parrot":
                    return f"The student's answer is: {row['answer']}"
                if kind == "copy_previous":
                    return _quoted_after(text, "An earlier solution:")
                if kind == "copy_student":  # a blank output has nothing to copy: say so (no answer line)
                    return _quoted_after(text, "A wrong answer to it:").strip() or "(nothing to copy)"
                return "Keep a running total after every step.\n" + row["rationale"]
            if i % 2 == 1:  # seed: deliberately careless for every other question
                return "A careless solution.\n#### " + str(int(row["answer"]) + 1)
            return row["rationale"]
    return "I could not find the question.\n#### 0"


def config_toml(base_url: str, **loop_overrides) -> str:
    loop = {"max_iterations": 3, "patience": 5, "combine": "replace", "privileged_gold": True}
    loop.update(loop_overrides)
    loop_lines = "\n".join(f"{k} = {_toml(v)}" for k, v in loop.items())
    return f"""
preset = "tiny"
run_name = "main"

[task]
kind = "arithmetic"
pool_size = {POOL}
dev_size = {DEV}
difficulty = 1
max_number = 20
seed = 0

[student]
name = "tiny"
device = "cpu"
dtype = "float32"
max_length = 512

[lora]
r = 4
alpha = 8.0

[loss]
sft = 1.0
kd = 0.5
contrastive = 0.1
num_contexts = 2

[train]
max_steps = 3
batch_size = 4
lr = 1e-3
checkpoint_every = 1

[generation]
batch_size = 16
max_new_tokens = 8
n_samples = 0

[[teachers]]
name = "fake"
model = "openai/fake"
api_base = "{base_url}"
temperature = 0.0
max_tokens = 64
max_retries = 2

[loop]
{loop_lines}
"""


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def make_workspace(path: Path, base_url: str, **loop_overrides) -> Path:
    from loop.config.workspace import init_workspace

    init_workspace(path, "tiny")
    (path / "distillery.toml").write_text(config_toml(base_url, **loop_overrides))
    return path


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    e.pop("DISTILLERY_WORKSPACE", None)
    return e


def cli(*args, env_extra=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    """`distillery ARGS` in a subprocess (the real entry point)."""
    e = env()
    e.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "loop", *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=str(ROOT), **kw)


def popen(*args, env_extra=None, **kw) -> subprocess.Popen:
    e = env()
    e.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "loop", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=e, cwd=str(ROOT), **kw)


# --------------------------------------------------------------------------- forked CLI processes
# `python -m loop` spends seconds importing torch, transformers and LiteLLM
# before it does anything.  Tests that need many real processes (to SIGKILL or
# SIGTERM them) fork them instead from a multiprocessing fork server that
# imported those modules once (`start_forkserver`): each child is a fresh,
# separate process running the same entry point, `loop.cli.main.main(argv)`,
# with helpers' env(); it starts in milliseconds.  The server is a clean
# interpreter (no threads, no sockets, no model loaded), so a child shares no
# state with the test process or with other children.

FORK_PRELOAD = ("tests.loop.helpers", "loop.cli.main", "loop.core.orchestrator", "loop.core.steps",
                "loop.core.train_job", "loop.daemon.service", "student.model", "teachers.pool",
                "litellm", "transformers", "peft")


def start_forkserver() -> None:
    """Start the fork server (idempotent); it imports FORK_PRELOAD in the
    background, so call it early.  Its environment is env(), read at import
    time by torch (threads) and the libraries (offline mode)."""
    import multiprocessing
    import multiprocessing.forkserver as fs

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORK_PRELOAD))
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env())
        fs.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def stop_forkserver() -> None:
    """Stop the fork server now (it would exit with the test process anyway).
    SIGKILL, by its pid: a clean exit spends seconds unloading torch."""
    import multiprocessing.forkserver as fs

    server = fs._forkserver  # private, but stable since 3.4 (_stop since 3.8)
    if getattr(server, "_forkserver_pid", None) is None or not hasattr(server, "_stop"):
        return
    try:
        os.kill(server._forkserver_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server._stop()


def _forked_main(argv: list[str], env_extra: dict, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env_extra)
    os.chdir(ROOT)
    sys.argv = [sys.executable, "-m", "loop", *argv]
    from loop.cli.main import main

    try:
        rc = main(argv)
    finally:
        import atexit

        atexit._run_exitfuncs()  # as the interpreter's exit would (multiprocessing's does not)
        sys.stdout.flush()
        sys.stderr.flush()
    raise SystemExit(rc)


class Forked:
    """`distillery ARGS` in a forked process (see start_forkserver), with the
    part of subprocess.Popen's interface the tests use: pid, poll, wait,
    send_signal, kill, returncode (-N when killed by signal N), communicate
    (stdout and stderr together, as popen gives them)."""

    def __init__(self, *args: str, env_extra: dict | None = None, log: Path) -> None:
        import multiprocessing

        self.log = Path(log)
        self.log.write_text("")
        ctx = multiprocessing.get_context("forkserver")
        self._p = ctx.Process(target=_forked_main, args=(list(args), dict(env_extra or {}), str(self.log)))
        self._p.start()
        self.pid = self._p.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._p.is_alive():
            self.returncode = self._p.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._p.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["distillery", "(forked)"], timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        self.wait(timeout)
        return self.output(), None


def run_inprocess(ws: Path, command: str, *args) -> int:
    """`distillery COMMAND -w WS ARGS` in this process (saves the interpreter start-up)."""
    from loop.cli.main import main

    return main([command, "-w", str(ws), *args])


def cli_json(capsys, ws: Path, *args):
    """`distillery ARGS -w WS --json` in this process: its JSON document (exit 0 asserted)."""
    import json

    capsys.readouterr()
    rc = run_inprocess(ws, *args, "--json")
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def db_rows(ws: Path) -> dict:
    """Row counts of every table: 'nothing written' means these do not change."""
    import sqlite3

    con = sqlite3.connect(ws / "distillery.db")
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: con.execute(f"SELECT COUNT(*) FROM {n}").fetchone()[0] for n in names}
    finally:
        con.close()


def datasets(ws: Path, run: str = "main") -> dict:
    """{k: {example_id: [(rationale text, weight)]}} of every iteration of a run."""
    from store import Store

    st = Store.open(ws)
    try:
        r = st.get_run(run)
        out = {}
        k = 0
        while True:
            try:
                it = st.get_iteration(r["id"], k)
            except LookupError:
                break
            if it["status"] != "done":
                break
            data = st.dataset(r["id"], k)
            rats = st.get_rationales({rid for d in data.values() for rid, _ in d})
            out[k] = {e: [(rats[rid]["text"], w) for rid, w in d] for e, d in data.items()}
            k += 1
        return out
    finally:
        st.close()


def strip_ansi(s: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", s)
