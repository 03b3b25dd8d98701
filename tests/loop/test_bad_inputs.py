"""Bad inputs, table-driven: every case runs one real command on a fresh tiny
workspace (teacher: the local fake server) and asserts the exit code, a
message that names the place (file, line, key, path) and the fix, no
traceback, and nothing written: no table gains a row, no workspace file
changes, no run directory appears.

A case is (id, setup, argv, exit code, needles): `setup(ws, tmp)` breaks
something, `argv(ws, tmp)` is the command line after `distillery`."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from loop.cli.main import main
from tests.loop.helpers import db_rows

# files SQLite or the lock may touch without writing anything of ours
_VOLATILE = {"distillery.db-wal", "distillery.db-shm"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(ws: Path) -> dict[str, str]:
    out = {}
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws)
        if p.is_file() and p.name not in _VOLATILE and rel.parts[0] != ".distillery":
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- setups


def _toml(ws: Path, old: str, new: str) -> None:
    p = ws / "distillery.toml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))


def _append(ws: Path, text: str) -> None:
    p = ws / "distillery.toml"
    p.write_text(p.read_text() + text)


def _template(ws: Path, name: str, old: str, new: str) -> None:
    p = ws / "prompts" / f"{name}.yaml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))


def _jsonl(tmp: Path, rows: list, name: str = "data.jsonl") -> Path:
    p = tmp / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def _pool_row(ws: Path, tmp: Path) -> None:
    main(["data", "add", str(_jsonl(tmp, [{"id": "q1", "question": "What is 2+2?", "answer": "4"}], "pool.jsonl")),
          "-w", str(ws)])


def _db_bytes(ws: Path, data: bytes) -> None:
    for suffix in ("-wal", "-shm"):
        (ws / f"distillery.db{suffix}").unlink(missing_ok=True)
    (ws / "distillery.db").write_bytes(data)


def _api_base_with_key(ws: Path) -> None:
    p = ws / "distillery.toml"
    p.write_text(re.sub(r'api_base = "http://', 'api_base = "http://user:PLANTED-SECRET-1@', p.read_text()))


def _a_run(ws: Path) -> None:
    from store import Store

    with Store.open(ws) as st:
        st.create_run("main", {})


def _future_migration(ws: Path) -> None:
    import sqlite3

    con = sqlite3.connect(ws / "distillery.db")
    con.execute("INSERT INTO _migrations (name, applied) VALUES ('m999_future', '2030-01-01T00:00:00')")
    con.commit()
    con.close()


@dataclass
class Case:
    id: str
    setup: Callable[[Path, Path], None] | None
    argv: Callable[[Path, Path], list[str]]
    rc: int
    needles: tuple[str, ...]


SLOW = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
BIG_Q = "x" * 20_001
RUN = lambda ws, tmp: ["run"]  # noqa: E731


def _cmd(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda ws, tmp: list(args)


CASES = [
    # ---- distillery.toml (run)
    Case("toml-syntax", lambda ws, t: _append(ws, "\n[loop\nmax = "), RUN, 2, ("distillery.toml:",)),
    Case("value-out-of-range", lambda ws, t: _toml(ws, 'combine = "replace"', 'combine = "sideways"'), RUN, 2,
         ("distillery.toml:", "loop.combine", "replace")),
    Case("unknown-key", lambda ws, t: _toml(ws, "lr = 1e-3", "lr = 1e-3\nlearning_rate = 1"), RUN, 2,
         ("distillery.toml:", "learning_rate")),
    Case("negative-steps", lambda ws, t: _toml(ws, "max_steps = 3", "max_steps = -1"), RUN, 2,
         ("distillery.toml:", "train.max_steps")),
    Case("unknown-student", lambda ws, t: _toml(ws, 'name = "tiny"', 'name = "no-such-model-anywhere"'), RUN, 2,
         ("no-such-model-anywhere", "smollm2")),
    Case("unknown-teacher-provider", lambda ws, t: _toml(ws, 'model = "openai/fake"', 'model = "nosuchprovider/x"'),
         RUN, 2, ("nosuchprovider/x", "LiteLLM model string")),
    Case("unreachable-teacher", lambda ws, t: _unreachable(ws), RUN, 2, ("cannot reach", "api_base")),
    Case("api-key-env-unset", lambda ws, t: _toml(ws, "max_retries = 2", 'max_retries = 2\napi_key_env = "DISTILLERY_NO_SUCH_KEY"'),
         RUN, 2, ("teacher 'fake': environment variable DISTILLERY_NO_SUCH_KEY is not set",
                  "export DISTILLERY_NO_SUCH_KEY=<your key>")),
    Case("judge-unknown", lambda ws, t: _append(ws, '\n[verify]\nteacher = "ghost"\n'), RUN, 2,
         ("verify.teacher = 'ghost'", "add that teacher")),
    Case("max-length-too-small", lambda ws, t: _toml(ws, "max_length = 512", "max_length = 16"), RUN, 2,
         ("student.max_length",)),
    Case("jsonl-task-without-data", lambda ws, t: _toml(ws, 'kind = "arithmetic"', 'kind = "jsonl"'), RUN, 2,
         ("task.kind", "distillery data add")),
    Case("vllm-without-url", lambda ws, t: _toml(ws, "[generation]", '[generation]\nbackend = "vllm"'), RUN, 2,
         ("vllm_base_url",)),
    Case("vllm-server-down", lambda ws, t: _toml(ws, "[generation]", f'[generation]\nbackend = "vllm"\n'
                                                  f'vllm_base_url = "http://127.0.0.1:{_free_port()}/v1"'),
         RUN, 2, ("vllm serve", "--enable-lora")),
    Case("accelerate-config-missing", lambda ws, t: _toml(ws, "max_steps = 3", 'max_steps = 3\nprocesses = 2\n'
                                                           'launcher = "accelerate"\naccelerate_config = "fsdp.yaml"'),
         RUN, 2, ("train.accelerate_config = 'fsdp.yaml'", "no such file", "accelerate config")),
    Case("accelerate-config-wrong-launcher", lambda ws, t: _toml(ws, "max_steps = 3", 'max_steps = 3\naccelerate_config = "f.yaml"'),
         RUN, 2, ("train.accelerate_config", 'launcher = "accelerate"')),
    Case("iterations-zero", None, _cmd("run", "--iterations", "0"), 2, ("--iterations",)),
    # ---- credentials in the config: refused, and the value is never echoed (checked below)
    Case("api-base-userinfo", lambda ws, t: _api_base_with_key(ws), RUN, 2,
         ("api_base contains a user name or password", "api_key_env")),
    Case("extra-api-key", lambda ws, t: _toml(ws, "max_retries = 2", 'max_retries = 2\nextra = {api_key = "PLANTED-SECRET-1"}'),
         RUN, 2, ("extra.api_key looks like a credential", "api_key_env")),
    Case("extra-auth-header", lambda ws, t: _toml(ws, "max_retries = 2", 'max_retries = 2\n'
                                                   'extra = {extra_headers = {Authorization = "Bearer PLANTED-SECRET-1"}}'),
         RUN, 2, ("extra.extra_headers.Authorization looks like a credential",)),
    Case("vllm-url-userinfo", lambda ws, t: _toml(ws, "[generation]", '[generation]\nbackend = "vllm"\n'
                                                   'vllm_base_url = "http://u:PLANTED-SECRET-1@127.0.0.1:1/v1"'),
         RUN, 2, ("vllm_base_url contains a user name or password", "vllm_api_key_env")),
    # ---- templates
    Case("template-syntax", lambda ws, t: _template(ws, "refine", "{{ question }}", "{{ question "), RUN, 2,
         ("refine.yaml:",)),
    Case("template-undeclared-variable", lambda ws, t: _template(ws, "refine", "{{ question }}", "{{ question }}{{ nope }}"),
         RUN, 2, ("refine.yaml", "nope")),
    Case("template-too-slow", lambda ws, t: _template(ws, "student", "{{ question }}", SLOW + "{{ question }}"),
         RUN, 2, ("student.yaml:", "within 2 s", "check its loops")),
    Case("template-render-too-slow", lambda ws, t: _template(ws, "refine", "{{ question }}", SLOW + "{{ question }}"),
         _cmd("prompts", "render", "refine"), 2, ("refine.yaml:", "within 2 s")),
    Case("template-output-too-big", lambda ws, t: _template(ws, "refine", "{{ question }}",
                                                            "{% for i in range(99999) %}{{ 'y' * 999 }}{% endfor %}"),
         _cmd("prompts", "render", "refine"), 2, ("refine.yaml:", "more than 1,000,000 characters")),
    # ---- data add / remove
    Case("data-question-too-long", lambda ws, t: _jsonl(t, [{"question": BIG_Q, "answer": "1"}]),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", '"question"', "20,000")),
    Case("data-line-too-long", lambda ws, t: _jsonl(t, [{"question": "q", "answer": "1", "meta": {"x": "y" * 1_000_001}}]),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", "1,000,000")),
    Case("data-malformed-json", lambda ws, t: _jsonl(t, ['{"question": "q", "answer": 1', ]),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", "malformed JSON")),
    Case("data-not-utf8", lambda ws, t: (t / "data.jsonl").write_bytes(b'{"question": "\xff", "answer": "1"}\n'),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", "UTF-8")),
    Case("data-unknown-field", lambda ws, t: _jsonl(t, [{"question": "q", "answer": "1", "label": 3}]),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", "'label'", "meta")),
    Case("data-missing-answer", lambda ws, t: _jsonl(t, [{"question": "q"}]),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", '"answer"')),
    Case("data-missing-file", None, lambda ws, t: ["data", "add", str(t / "absent.jsonl")], 2,
         ("absent.jsonl", "no such file")),
    Case("data-bad-split", lambda ws, t: _jsonl(t, [{"question": "q", "answer": "1"}]),
         lambda ws, t: ["data", "add", str(t / "data.jsonl"), "--split", "train"], 2, ("--split", "pool", "dev")),
    Case("data-id-names-another-question",
         lambda ws, t: (_pool_row(ws, t), _jsonl(t, [{"id": "q1", "question": "What is 3+3?", "answer": "6"}])),
         lambda ws, t: ["data", "add", str(t / "data.jsonl")], 2, ("data.jsonl:1", "'q1'", "another id")),
    Case("data-dev-copy-of-pool",
         lambda ws, t: (_pool_row(ws, t), _jsonl(t, [{"question": "What is 2+2?", "answer": "4"}])),
         lambda ws, t: ["data", "add", str(t / "data.jsonl"), "--split", "dev"], 2,
         ("data.jsonl:1", "already in the pool split", "leave the line out")),
    Case("data-remove-unknown", None, _cmd("data", "remove", "nope"), 2, ("no example id starts with 'nope'",)),
    # ---- inspection commands
    Case("report-unknown-run", lambda ws, t: _a_run(ws), lambda ws, t: ["report", "--run", "ghost", "-o", str(t / "r.html")],
         2, ("no run named 'ghost'", "main", "distillery runs")),
    Case("export-json-without-output", None, _cmd("export", "0", "--json"), 2, ("-o FILE",)),
    Case("show-unknown-run", None, _cmd("show", "ghost:0"), 2, ("ghost", "distillery runs")),
    # ---- the database
    Case("db-garbage", lambda ws, t: _db_bytes(ws, b"this is not a database at all" * 100), _cmd("runs"), 1,
         ("distillery.db is damaged", ".recover", "backup")),
    Case("db-empty", lambda ws, t: _db_bytes(ws, b""), _cmd("runs"), 2,
         ("distillery.db is empty", "init", "--force")),
    Case("db-newer-migration", lambda ws, t: _future_migration(ws), _cmd("status"), 2,
         ("newer version of Distillery", "m999_future", "Upgrade")),
    Case("db-missing", lambda ws, t: (ws / "distillery.db").unlink(), RUN, 2,
         ("distillery.db is missing", "distillery.toml.bak-")),
]


def _unreachable(ws: Path) -> None:
    p = ws / "distillery.toml"
    p.write_text(re.sub(r'api_base = "[^"]+"', f'api_base = "http://127.0.0.1:{_free_port()}/v1"', p.read_text()))


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ws, tmp_path, capsys):
    if case.setup is not None:
        case.setup(ws, tmp_path)
    before_files = _snapshot(ws)
    before_rows = db_rows(ws) if case.id not in ("db-garbage", "db-empty", "db-missing") else None
    capsys.readouterr()
    rc = main([*case.argv(ws, tmp_path), "-w", str(ws)])
    out, err = capsys.readouterr()
    text = out + err
    assert rc == case.rc, text
    assert "Traceback" not in text
    for needle in case.needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert "PLANTED-SECRET" not in text
    assert _snapshot(ws) == before_files  # nothing written
    if before_rows is not None:
        assert db_rows(ws) == before_rows
    assert not (ws / "runs").exists()


def test_missing_workspace(tmp_path, capsys):
    rc = main(["run", "-w", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "distillery init" in err and "Traceback" not in err
    assert not (tmp_path / "nope").exists()
