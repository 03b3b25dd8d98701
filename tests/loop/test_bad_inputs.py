"""Bad inputs to `run`: exit 2, a message that names the problem and the fix,
no traceback, nothing written to the database and no run directory."""

from __future__ import annotations

import socket

import pytest

from tests.loop.helpers import db_rows, run_inprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(ws, capsys, *needles):
    before = db_rows(ws)
    capsys.readouterr()
    rc = run_inprocess(ws, "run")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    assert db_rows(ws) == before
    assert not (ws / "runs").exists()
    return err


def test_missing_workspace(tmp_path, capsys):
    rc = run_inprocess(tmp_path / "nope", "run")
    err = capsys.readouterr().err
    assert rc == 2 and "distillery init" in err and "Traceback" not in err
    assert not (tmp_path / "nope").exists()


def test_corrupted_config(ws, capsys):
    (ws / "distillery.toml").write_text((ws / "distillery.toml").read_text() + "\n[loop\nmax = ")
    _check(ws, capsys, "distillery.toml")


def test_config_value_out_of_range(ws, capsys):
    text = (ws / "distillery.toml").read_text().replace('combine = "replace"', 'combine = "sideways"')
    (ws / "distillery.toml").write_text(text)
    _check(ws, capsys, "combine")


def test_template_syntax_error(ws, capsys):
    p = ws / "prompts" / "refine.yaml"
    p.write_text(p.read_text().replace("Question: {{ question }}", "Question: {{ question "))
    _check(ws, capsys, "refine.yaml:")


def test_unreachable_teacher(ws, capsys):
    text = (ws / "distillery.toml").read_text()
    import re

    text = re.sub(r'api_base = "[^"]+"', f'api_base = "http://127.0.0.1:{_free_port()}/v1"', text)
    (ws / "distillery.toml").write_text(text)
    _check(ws, capsys, "cannot reach", "api_base")


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_unknown_model_name(ws, capsys, where):
    text = (ws / "distillery.toml").read_text()
    if where == "student":
        text = text.replace('name = "tiny"', 'name = "no-such-model-anywhere"')
    else:
        text = text.replace('model = "openai/fake"', 'model = "nosuchprovider/some-model"')
    (ws / "distillery.toml").write_text(text)
    _check(ws, capsys, "no-such-model-anywhere" if where == "student" else "nosuchprovider/some-model")
