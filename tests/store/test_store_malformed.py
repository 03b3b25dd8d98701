"""Malformed inputs (JSONL data and distillery.toml) through the real CLI: each
gives exit 2, a message naming the place (file:line, key), no traceback, and
nothing written to the database."""

from pathlib import Path

import pytest

from loop.cli.main import main
from loop.config.presets import PRESETS
from store import Store

GOOD = '{"question": "What is 2 + 2?", "answer": "4"}'

# (file content, text the message must contain besides the file name)
BAD_JSONL = {
    "truncated_json": (GOOD + '\n{"question": "a", "answer": 1\n', ":2: malformed JSON"),
    "trailing_garbage": (GOOD + '\n{"question": "a", "answer": "1"} x\n', ":2: malformed JSON"),
    "single_quotes": ("{'question': 'a', 'answer': '1'}\n", ":1: malformed JSON"),
    "array_line": ('[1, 2]\n', ":1: expected a JSON object"),
    "string_line": ('"just text"\n', ":1: expected a JSON object"),
    "missing_question": ('{"answer": "1"}\n', ':1: missing field "question"'),
    "missing_answer": (GOOD + '\n' + GOOD.replace('What', 'Who') + '\n{"question": "a"}\n', ':3: missing field "answer"'),
    "question_number": ('{"question": 3, "answer": "1"}\n', ':1: "question" must be a non-empty string'),
    "question_empty": ('{"question": "  ", "answer": "1"}\n', ':1: "question" must be a non-empty string'),
    "answer_list": ('{"question": "a", "answer": [1]}\n', ':1: "answer" must be a string or a number'),
    "answer_bool": ('{"question": "a", "answer": true}\n', ':1: "answer" must be a string or a number'),
    "answer_object": ('{"question": "a", "answer": {"v": 1}}\n', ':1: "answer" must be a string or a number'),
    "answer_empty": ('{"question": "a", "answer": ""}\n', ':1: "answer" is empty'),
    "rationale_number": ('{"question": "a", "answer": "1", "rationale": 5}\n', ':1: "rationale" must be a non-empty string'),
    "id_with_space": ('{"question": "a", "answer": "1", "id": "my id"}\n', ':1: "id" must be a non-empty string'),
    "id_number": ('{"question": "a", "answer": "1", "id": 12}\n', ':1: "id" must be'),
    "meta_string": ('{"question": "a", "answer": "1", "meta": "x"}\n', ':1: "meta" must be a JSON object'),
    "unknown_field": ('{"qestion": "a", "answer": "1"}\n', ":1: unknown field 'qestion'"),
    "gsm8k_no_final": ('{"question": "a", "answer": "2 + 2 = 4\\n#### "}\n', ":1: \"answer\" has '####' but no final answer"),
    "bad_last_line": (GOOD + '\n' + GOOD.replace('2 + 2', '3 + 3') + '\n{"question": "z"\n', ":3: malformed JSON"),
    "empty_file": ("\n\n", "no examples in the file"),
}


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ws(workspace, capsys):
    assert _run(capsys, "init", str(workspace), "--preset", "tiny")[0] == 0
    return workspace


def _row_counts(ws: Path) -> dict:
    with Store.open(ws) as st:
        return {t: st.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("examples", "texts", "runs", "dataset_entries", "events")}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_malformed_jsonl(ws, capsys, tmp_path, case):
    content, expect = BAD_JSONL[case]
    f = tmp_path / f"{case}.jsonl"
    f.write_text(content)
    before = _row_counts(ws)
    code, out, err = _run(capsys, "data", "add", str(f))
    assert code == 2, err
    assert str(f) in err and expect in err, err
    assert "Traceback" not in err + out
    assert _row_counts(ws) == before == {"examples": 0, "texts": 0, "runs": 0, "dataset_entries": 0, "events": 0}


def test_not_utf8(ws, capsys, tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes((GOOD + "\n").encode() + '{"question": "café", "answer": "1"}\n'.encode("latin-1"))
    code, _, err = _run(capsys, "data", "add", str(f))
    assert code == 2 and f"{f}:2: not UTF-8" in err and "Traceback" not in err
    assert _row_counts(ws)["examples"] == 0


def test_missing_file_and_bad_split(ws, capsys, tmp_path):
    code, _, err = _run(capsys, "data", "add", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl: no such file" in err
    f = tmp_path / "ok.jsonl"
    f.write_text(GOOD + "\n")
    code, _, err = _run(capsys, "data", "add", str(f), "--split", "train")
    assert code == 2 and "--split must be 'pool' or 'dev'" in err
    assert _row_counts(ws)["examples"] == 0


DEMO = PRESETS["demo"]

# (distillery.toml text, the key or problem the message names, line it must name)
BAD_TOML = {
    "syntax_missing_value": (DEMO.replace("pool_size = 24", "pool_size ="), "invalid TOML", "pool_size ="),
    "syntax_duplicate_key": (DEMO.replace("seed = 0\n", "seed = 0\nseed = 1\n", 1), "invalid TOML", "seed = 1"),
    "unknown_table": (DEMO + "\n[bogus]\nx = 1\n", "unknown key 'bogus'", "[bogus]"),
    "unknown_key": (DEMO.replace("[loss]\n", "[loss]\nalphaa = 0.1\n"), "unknown key 'loss.alphaa'; valid keys of [loss]: sft", "alphaa = 0.1"),
    "out_of_range": (DEMO.replace("alpha = 0.5 ", "alpha = 1.5 "), "loss.alpha = 1.5", "alpha = 1.5"),
    "bad_literal": (DEMO.replace('combine = "accumulate"', 'combine = "mix"'), "allowed: 'replace' or 'accumulate'", 'combine = "mix"'),
    "wrong_type": (DEMO.replace("lr = 1e-3", 'lr = "fast"'), "train.lr = 'fast'", 'lr = "fast"'),
    "teacher_missing_model": (DEMO.replace('model = "self"\n', ""), "missing required key 'teachers[0].model'", "[[teachers]]"),
    "teacher_unknown_key": (DEMO.replace("samples = 2", "samples = 2\nkey = 'not-a-key'"), "unknown key 'teachers[0].key'", "key = 'not-a-key'"),
    "teacher_bad_name": (DEMO.replace('name = "self"', 'name = "my teacher"'), "teachers[0].name", 'name = "my teacher"'),
    "device_literal": (DEMO.replace('device = "cpu"', 'device = "tpu"'), "allowed: 'auto' or 'cpu' or 'cuda'", 'device = "tpu"'),
    "difficulty_zero": (DEMO.replace("difficulty = 1", "difficulty = 0"), "allowed: an integer ≥ 1 and ≤ 6", "difficulty = 0"),
    "table_not_table": (DEMO.replace("[loss]\n", "[lossy]\n").replace("preset = \"demo\"", "loss = 3\npreset = \"demo\""), "loss = 3", "loss = 3"),
    "top_p_zero": (DEMO.replace("n_samples = 0", "n_samples = 0\ntop_p = 0"), "generation.top_p", "top_p = 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_malformed_toml(ws, capsys, case):
    text, expect, line_text = BAD_TOML[case]
    cfg = ws / "distillery.toml"
    cfg.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if line_text in l)
    before = _row_counts(ws)
    code, out, err = _run(capsys, "iterations")
    assert code == 2, err
    assert f"{cfg}:{line}:" in err and expect in err, err
    assert "Traceback" not in err + out
    assert _row_counts(ws) == before


def test_every_preset_is_valid_and_commented():
    from loop.config.schema import Config
    import tomllib

    for name, text in PRESETS.items():
        Config.model_validate(tomllib.loads(text))
        assert text.count("#") > 5, name  # the generated file explains itself
    assert "api_key_env" in PRESETS["custom"] and "openai/gpt-4o-mini" in PRESETS["custom"]
