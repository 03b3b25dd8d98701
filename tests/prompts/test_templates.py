"""Prompt templates: defaults, workspace copies, versions, and every way a
template can be broken, each refused with file and line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import prompts
from prompts import SAMPLE_VARIABLES, Template, TemplateError, copy_defaults, load_template, record_prompt_version

GOOD = """\
name: t
description: test
variables: [question]
optional: [gold]
system: |
  You are a teacher.
user: |
  Question: {{ question }}
  {% if gold is not none %}Gold: {{ gold }}{% endif %}
"""


def write(tmp_path: Path, body: str, name: str = "t") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(body)
    return p


def test_defaults_exist_and_render_with_sample_values():
    assert set(prompts.list_templates()) >= {"rationale", "refine", "student", "demonstration", "verify"}
    for name in ("rationale", "refine", "student", "demonstration"):
        t = load_template(name)
        vars_ = {k: v for k, v in SAMPLE_VARIABLES.items() if k in t.variables + t.optional}
        msgs = t.render(**vars_)
        assert msgs[-1]["role"] == "user" and SAMPLE_VARIABLES["question"] in msgs[-1]["content"]
        assert all(m["content"] == m["content"].strip() for m in msgs)


def test_refine_template_carries_the_undo_inputs():
    t = load_template("refine")
    assert set(t.variables) == {"question", "previous", "student_output"} and "gold" in t.optional
    with_gold = t.render(question="Q?", previous="old demo", student_output="wrong #### 3", gold="7")
    text = "\n".join(m["content"] for m in with_gold)
    assert "old demo" in text and "wrong #### 3" in text and "the correct final answer is 7" in text
    # the gold is a hint for the teacher only: the text it writes must not refer to it
    assert "do not just" in text and "talk about other answers" in text
    assert "student" not in text.lower()  # small teachers echo the words they see
    assert "####" in with_gold[-1]["content"].splitlines()[-1]  # asks for the same final-answer format
    no_gold = t.render(question="Q?", previous="old demo", student_output="wrong")
    assert "correct final answer" not in no_gold[-1]["content"]


def test_rationale_and_student_ask_for_the_final_answer_line():
    for name in ("rationale", "student", "demonstration"):
        t = load_template(name)
        msgs = t.render(**{k: SAMPLE_VARIABLES[k] for k in t.variables})
        assert "####" in msgs[-1]["content"]
    demo = load_template("demonstration").render(question="Q1?", demonstration="D1 #### 5")[-1]["content"]
    assert demo.index("D1 #### 5") < demo.index("Q1?")  # d is placed before the question


def test_version_is_sha256_of_the_body():
    t = load_template("rationale")
    assert t.version == hashlib.sha256(t.body.encode()).hexdigest()
    assert t.body == (prompts.DEFAULTS_DIR / "rationale.yaml").read_text()


def test_copy_defaults_keeps_user_edits_and_workspace_copy_wins(tmp_path):
    ws = tmp_path / "ws"
    written = copy_defaults(ws / "prompts")
    assert {p.name for p in written} == {"rationale.yaml", "refine.yaml", "student.yaml", "demonstration.yaml",
                                         "verify.yaml"}
    edited = (ws / "prompts" / "student.yaml").read_text().replace("Think step by step", "Reason carefully")
    (ws / "prompts" / "student.yaml").write_text(edited)
    assert copy_defaults(ws / "prompts") == []  # nothing overwritten
    t = load_template("student", ws)
    assert "Reason carefully" in t.render(question="q")[-1]["content"]
    assert t.version != load_template("student").version
    assert not list((ws / "prompts").glob("*.tmp"))


def test_record_prompt_version_is_idempotent(tmp_path):
    from store.db import Store

    with Store.open(tmp_path / "d.db") as s:
        t = load_template("refine")
        assert record_prompt_version(s, t) == t.version == record_prompt_version(s, t)
        rows = s.conn.execute("SELECT id, name, body FROM prompt_versions").fetchall()
        assert rows == [(t.version, "refine", t.body)]


def test_missing_variable_is_refused(tmp_path):
    t = Template.from_file(write(tmp_path, GOOD))
    with pytest.raises(TemplateError, match=r"t\.yaml: missing variable 'question'"):
        t.render(gold="1")


def test_unknown_variable_passed_is_refused(tmp_path):
    t = Template.from_file(write(tmp_path, GOOD))
    with pytest.raises(TemplateError, match="unknown variable 'answr'"):
        t.render(question="q", answr="1")


def test_variable_used_but_not_declared_is_refused_with_line(tmp_path):
    body = GOOD.replace("Question: {{ question }}", "Question: {{ question }} {{ hint }}")
    with pytest.raises(TemplateError) as ei:
        Template.from_file(write(tmp_path, body))
    msg = str(ei.value)
    assert f"{tmp_path / 't.yaml'}:8:" in msg and "'hint'" in msg and "not declared" in msg


def test_syntax_error_is_refused_with_line(tmp_path):
    body = GOOD.replace("{% endif %}", "{% endfi %}")
    with pytest.raises(TemplateError) as ei:
        Template.from_file(write(tmp_path, body))
    assert ei.value.line == 9 and "syntax error" in str(ei.value) and str(ei.value).startswith(str(tmp_path))


def test_syntax_error_in_system_is_reported_on_its_line(tmp_path):
    body = GOOD.replace("You are a teacher.", "You are a teacher.\n  {{ question ")
    with pytest.raises(TemplateError) as ei:
        Template.from_file(write(tmp_path, body))
    assert ei.value.line == 7


def test_sandbox_escape_is_refused(tmp_path):
    body = GOOD.replace("Question: {{ question }}", "Question: {{ ''.__class__.__mro__ }}")
    with pytest.raises(TemplateError, match="__mro__|__class__") as ei:
        Template.from_file(write(tmp_path, body))
    assert ei.value.line == 8 and "sandbox" in str(ei.value)


def test_sandbox_escape_through_attr_filter_is_refused_at_render(tmp_path):
    body = GOOD.replace("Question: {{ question }}", "Question: {{ question|attr('__class__')|attr('__mro__') }}")
    t = Template.from_file(write(tmp_path, body))
    with pytest.raises(TemplateError, match="sandbox|unsafe") as ei:
        t.render(question="q")
    assert ei.value.line == 8


def test_invalid_yaml_is_refused_with_line(tmp_path):
    body = GOOD.replace("description: test", "description: [unclosed")
    with pytest.raises(TemplateError, match="invalid YAML") as ei:
        Template.from_file(write(tmp_path, body))
    assert ei.value.line is not None


def test_structural_mistakes_are_named(tmp_path):
    with pytest.raises(TemplateError, match="unknown key 'sytem'"):
        Template.from_file(write(tmp_path, GOOD.replace("system:", "sytem:")))
    with pytest.raises(TemplateError, match="missing key 'variables'"):
        Template.from_file(write(tmp_path, GOOD.replace("variables: [question]\n", "")))
    with pytest.raises(TemplateError, match="list of variable names"):
        Template.from_file(write(tmp_path, GOOD.replace("[question]", "question")))


def test_name_must_match_file(tmp_path):
    ws = tmp_path / "ws"
    (ws / "prompts").mkdir(parents=True)
    (ws / "prompts" / "student.yaml").write_text(GOOD)
    with pytest.raises(TemplateError, match="declares name 't'"):
        load_template("student", ws)


def test_unknown_template_name():
    with pytest.raises(TemplateError, match="no template named 'nope'.*rationale"):
        load_template("nope")


def _user_template(user: str):
    from prompts.template import Template

    return Template.from_text(f"name: t\ndescription: d\nsystem: ''\nuser: |\n  {user}\nvariables: [q]\n", path="t.yaml")


@pytest.mark.parametrize("user,message", [
    # nested loops that print nothing still hit the time limit (the trace sees their lines)
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}{{ q }}", "within 2 s"),
    ("{% for i in range(99999) %}{{ 'y' * 99999 }}{% endfor %}{{ q }}", "more than 1,000,000 characters"),
    ("{{ 'x' * 10**9 }}{{ q }}", "would hold 1,000,000,000 items"),
    ("{{ 2 ** 99999999 }}{{ q }}", "exponent 99999999 is over the limit"),
])
def test_render_limits(user, message):
    import time

    from prompts.template import TemplateError

    t0 = time.monotonic()
    with pytest.raises(TemplateError, match=message) as e:
        _user_template(user).render(q="a")
    assert str(e.value).startswith("t.yaml:")
    assert time.monotonic() - t0 < 10


def test_limits_leave_normal_templates_alone():
    assert _user_template("{% for i in range(3) %}{{ q }}{% endfor %}").render(q="ab") == [
        {"role": "user", "content": "ababab"}]
