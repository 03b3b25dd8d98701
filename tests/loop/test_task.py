"""The built-in arithmetic task, the replay argument parsing, the stop rules."""

from __future__ import annotations

import re

import pytest

from loop.errors import UserError
from loop.core.replay import apply_sets, parse_target, parse_value
from loop.data.task import ensure_task, generate_task
from prompts.answers import extract_answer


def _recompute(rationale: str) -> int:
    """Check every line 'a op b = c' and return the final value."""
    value = None
    for a, op, b, c in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", rationale):
        a, b, c = int(a), int(b), int(c)
        assert {"+": a + b, "-": a - b, "*": a * b}[op] == c, rationale
        assert value is None or value == a, rationale  # each step starts from the running total
        value = c
    return value


@pytest.mark.parametrize("difficulty", [1, 2, 4])
def test_problems_are_exact_deterministic_and_disjoint(difficulty):
    pool, dev = generate_task(7, 40, 20, difficulty)
    again_pool, again_dev = generate_task(7, 40, 20, difficulty)
    assert pool == again_pool and dev == again_dev
    assert generate_task(8, 40, 20, difficulty)[0] != pool
    assert not {p["question"] for p in pool} & {d["question"] for d in dev}
    assert len({p["question"] for p in pool}) == 40
    for row in pool + dev:
        assert row["rationale"].endswith(f"#### {row['answer']}")
        assert extract_answer(row["rationale"]) == row["answer"]
        assert _recompute(row["rationale"]) == int(row["answer"]) >= 0
        assert row["meta"]["difficulty"] == difficulty == len(row["meta"]["ops"])
        assert row["question"].count("Then ") == difficulty


def test_ensure_task_is_idempotent(tmp_path):
    from store import Store

    from loop.config.schema import TaskConfig

    st = Store.open(tmp_path / "d.db")
    cfg = TaskConfig(pool_size=10, dev_size=5, difficulty=2)
    assert ensure_task(st, cfg) == {"pool_added": 10, "dev_added": 5}
    assert ensure_task(st, cfg) == {"pool_added": 0, "dev_added": 0}
    assert st.count_examples("pool") == 10 and st.count_examples("dev") == 5
    assert ensure_task(st, TaskConfig(kind="jsonl")) == {"pool_added": 0, "dev_added": 0}


def test_replay_arguments():
    assert parse_target("3") == (None, 3)
    assert parse_target("main:2") == ("main", 2)
    assert parse_target("a:b:1") == ("a:b", 1)
    for bad in ("x", ":1", "main:-1", "main:"):
        with pytest.raises(UserError):
            parse_target(bad)
    assert parse_value("0.5") == 0.5 and parse_value("true") is True and parse_value("openai/x") == "openai/x"
    cfg = {"loop": {"combine": "replace"}, "teachers": [{"name": "t", "temperature": 0.7}]}
    out = apply_sets(cfg, ["loop.combine=accumulate", "teachers.0.temperature=0.2"])
    assert out == {"loop": {"combine": "accumulate"}, "teachers": [{"name": "t", "temperature": 0.2}]}
    assert cfg["loop"]["combine"] == "replace"  # the parent's config is untouched
    for bad in (["nokey"], ["nosection.x=1"], ["teachers.5.temperature=1"]):
        with pytest.raises(UserError):
            apply_sets(cfg, bad)


def test_stop_rules(tmp_path):
    """patience, max_iterations, no_errors and budget on a hand-built history."""
    from store import Store

    from loop.config.schema import Config
    from loop.core.orchestrator import Orchestrator

    st = Store.open(tmp_path / "d.db")
    cfg = Config.model_validate({"loop": {"max_iterations": 10, "patience": 2, "budget_usd": 1.0}})
    o = Orchestrator(tmp_path, cfg, st, quiet=True)
    o.run_id = st.create_run("main", {})
    o.run = st.get_run(o.run_id)
    st.finish_step(o.run_id, 0, "baseline", {"dev_acc": 0.2})
    accs = [0.3, 0.5, 0.4, 0.45]
    for k, a in enumerate(accs):
        st.finish_iteration(o.run_id, k, {"dev_acc": a, "pool_errors": 3}, None, None)
    assert o.stop_reason(1, {"pool_errors": 3, "dev_acc": 0.5}) is None
    assert o.stop_reason(3, {"pool_errors": 3, "dev_acc": 0.45}) == "patience"  # 0.4, 0.45 <= best 0.5
    assert o.stop_reason(1, {"pool_errors": 0, "dev_acc": 0.5}) == "no_errors"
    assert o.stop_reason(1, {"pool_errors": 3, "budget_hit": "spent"}) == "budget"
    o.max_iterations = 2
    assert o.stop_reason(1, {"pool_errors": 3, "dev_acc": 0.5}) == "max_iterations"
