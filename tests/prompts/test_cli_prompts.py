"""`distillery prompts ...` and `distillery teachers check`, run in-process
through the real entry point on a real workspace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loop.cli.main import main  # noqa: E402
from loop.config.workspace import init_workspace  # noqa: E402
from store import Store  # noqa: E402
from tests.fakeserver import FakeOpenAIServer  # noqa: E402

EDITOR = """\
import os, sys
p = sys.argv[1]
s = open(p).read()
open(p, "w").write(s.replace(os.environ["EDIT_OLD"], os.environ["EDIT_NEW"]))
"""


@pytest.fixture
def ws(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    init_workspace(ws, "tiny")
    with Store.open(ws) as st:
        st.add_examples([{"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "7",
                          "rationale": "3 + 4 = 7\n#### 7"}], "pool")
    script = tmp_path / "editor.py"
    script.write_text(EDITOR)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    return ws


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def edit(monkeypatch, old, new):
    monkeypatch.setenv("EDIT_OLD", old)
    monkeypatch.setenv("EDIT_NEW", new)


def test_list_show_render(ws, capsys):
    code, out, _ = cli(capsys, "prompts", "list", "-w", str(ws), "--json")
    assert code == 0
    names = {t["name"]: t for t in json.loads(out)["templates"]}
    assert set(names) == {"rationale", "refine", "student", "demonstration", "verify"}
    assert all(t["source"] == "workspace" and t["valid"] and not t["modified"] for t in names.values())
    code, out, _ = cli(capsys, "prompts", "show", "refine", "-w", str(ws))
    assert code == 0 and "name: refine" in out
    code, out, _ = cli(capsys, "prompts", "render", "refine", "-w", str(ws), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["source"].startswith("pool example")
    text = doc["messages"][-1]["content"]
    assert "Tom has 3 apples" in text and "3 + 4 = 7" in text and "the correct final answer is 7" in text
    code, out, _ = cli(capsys, "prompts", "render", "student", "-w", str(ws), "--var", "question=What is 2+2?", "--json")
    assert "What is 2+2?" in json.loads(out)["messages"][-1]["content"]
    code, _, err = cli(capsys, "prompts", "render", "student", "-w", str(ws), "--var", "qestion=x")
    assert code == 2 and "unknown variable 'qestion'" in err and "Traceback" not in err


def test_render_with_an_example_by_id_prefix(ws, capsys):
    """--example takes an id prefix; the student's latest wrong output on it fills student_output."""
    with Store.open(ws) as st:
        st.add_examples([{"id": "abc123", "question": "Ann has 2 pens. How many pens?", "answer": "2"}], "pool")
        run = st.create_run("main", {})
        st.record_predictions(run, 0, "mine", [{"example_id": "abc123", "output": "I think 5", "answer": "5",
                                                "correct": False}])
    code, out, err = cli(capsys, "prompts", "render", "refine", "-w", str(ws), "--example", "abc", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "pool example abc123"
    text = doc["messages"][-1]["content"]
    assert "Ann has 2 pens" in text and "I think 5" in text and "the correct final answer is 2" in text
    code, _, err = cli(capsys, "prompts", "render", "refine", "-w", str(ws), "--example", "zzz")
    assert code == 2 and "example 'zzz' not found" in err and "Traceback" not in err


def test_edit_valid_change_is_saved_diffed_and_versioned(ws, capsys, monkeypatch):
    edit(monkeypatch, "Think step by step", "Reason carefully")
    code, out, err = cli(capsys, "prompts", "edit", "student", "-w", str(ws))
    assert code == 0, err
    assert "-  Think step by step" in out and "+  Reason carefully" in out
    assert "validated with pool example" in out
    assert "Reason carefully" in (ws / "prompts" / "student.yaml").read_text()
    code, out, _ = cli(capsys, "prompts", "history", "student", "-w", str(ws), "--json")
    versions = json.loads(out)["versions"]
    assert len(versions) == 2 and [v["current"] for v in versions].count(True) == 1
    assert any(v["default"] for v in versions)
    code, out, _ = cli(capsys, "prompts", "diff", "student", "-w", str(ws))
    assert code == 0 and "+  Reason carefully" in out
    old, new = versions[0]["id"][:8], versions[1]["id"][:8]
    code, out, _ = cli(capsys, "prompts", "diff", "student", old, new, "-w", str(ws))
    assert code == 0 and "-  Think step by step" in out
    code, out, _ = cli(capsys, "prompts", "list", "-w", str(ws), "--json")
    assert {t["name"]: t["modified"] for t in json.loads(out)["templates"]}["student"] is True


@pytest.mark.parametrize("old,new,expect", [
    ("{{ question }}", "{{ question }", "syntax error"),
    ("{{ question }}", "{{ question }} {{ hint }}", "'hint' is used"),
    ("{{ question }}", "{{ ''.__class__.__mro__ }}", "sandbox"),
    ("{{ question }}", "{{ question + 1 }}", "error in 'user'"),  # fails only when rendered with the example
])
def test_edit_broken_template_is_refused_and_file_untouched(ws, capsys, monkeypatch, old, new, expect):
    path = ws / "prompts" / "student.yaml"
    before = path.read_text()
    edit(monkeypatch, old, new)
    code, out, err = cli(capsys, "prompts", "edit", "student", "-w", str(ws))
    assert code == 2, out
    assert expect in err and f"{path}:" in err and "NOT changed" in err and "Traceback" not in err
    assert path.read_text() == before
    rejected = ws / "prompts" / ".student.yaml.rejected"
    assert new in rejected.read_text()
    assert not (ws / "prompts" / ".student.yaml.edit").exists()


def test_edit_with_failing_editor_changes_nothing(ws, capsys, monkeypatch):
    monkeypatch.setenv("EDITOR", "false")
    before = (ws / "prompts" / "refine.yaml").read_text()
    code, _, err = cli(capsys, "prompts", "edit", "refine", "-w", str(ws))
    assert code == 2 and "unchanged" in err
    assert (ws / "prompts" / "refine.yaml").read_text() == before


def test_unknown_template_is_a_usage_error(ws, capsys):
    code, _, err = cli(capsys, "prompts", "show", "nope", "-w", str(ws))
    assert code == 2 and "no template named 'nope'" in err


def _add_teachers(ws: Path, blocks: str) -> None:
    text = (ws / "distillery.toml").read_text()
    text = text.replace('[[teachers]]\nname = "self"', blocks + '\n[[teachers]]\nname = "self"')
    (ws / "distillery.toml").write_text(text)


def test_teachers_check(ws, capsys, monkeypatch):
    monkeypatch.setenv("CHECK_KEY", "x")
    with FakeOpenAIServer(latency=0.02) as srv:
        _add_teachers(ws, f"""
[[teachers]]
name = "local"
model = "openai/fake"
api_base = "{srv.base_url}"
api_key_env = "CHECK_KEY"
input_cost_per_token = 0.000001
output_cost_per_token = 0.000002
""")
        code, out, err = cli(capsys, "teachers", "check", "-w", str(ws), "--json")
        assert code == 0, err
        rows = {r["name"]: r for r in json.loads(out)["teachers"]}
        local = rows["local"]
        assert local["reachable"] is True and local["latency_s"] >= 0.02
        assert local["usd_per_1k_input"] == pytest.approx(0.001) and local["usd_per_1k_output"] == pytest.approx(0.002)
        assert rows["self"]["reachable"] is None
        assert srv.requests == 1
        code, out, _ = cli(capsys, "teachers", "check", "-w", str(ws))
        assert code == 0 and "openai/fake" in out and "yes" in out


def test_teachers_check_reports_unreachable_and_auth(ws, capsys, monkeypatch):
    from tests.fakeserver import free_port

    monkeypatch.delenv("MISSING_KEY", raising=False)
    _add_teachers(ws, f"""
[[teachers]]
name = "down"
model = "openai/fake"
api_base = "http://127.0.0.1:{free_port()}/v1"
timeout_s = 2
""")
    code, out, err = cli(capsys, "teachers", "check", "-w", str(ws), "--json")
    assert code == 1 and json.loads(out)["teachers"][0]["reachable"] is False
    assert "is the server running" in json.loads(out)["teachers"][0]["note"]
    _add_teachers(ws, """
[[teachers]]
name = "needs-key"
model = "openai/gpt-4o-mini"
api_key_env = "MISSING_KEY"
""")
    code, out, err = cli(capsys, "teachers", "check", "-w", str(ws))
    assert code == 2 and "MISSING_KEY" in out + err and "Traceback" not in err


def test_edit_repairs_a_template_broken_by_hand(ws, capsys, monkeypatch):
    path = ws / "prompts" / "student.yaml"
    good = path.read_text()
    path.write_text(good.replace("{{ question }}", "{{ question }"))
    code, _, err = cli(capsys, "prompts", "render", "student", "-w", str(ws))
    assert code == 2 and f"{path}:" in err and "syntax error" in err
    code, out, _ = cli(capsys, "prompts", "list", "-w", str(ws), "--json")
    assert {t["name"]: t["valid"] for t in json.loads(out)["templates"]}["student"] is False
    edit(monkeypatch, "{{ question }", "{{ question }}")
    code, out, err = cli(capsys, "prompts", "edit", "student", "-w", str(ws))
    assert code == 0, err
    assert path.read_text() == good
