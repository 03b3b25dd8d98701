"""The store's teacher-call cache (store/calls.py) and the queries behind the
CLI's views (store/queries.py): one semantics for the cache, which
teachers/cache.py only wraps."""

import json

import pytest

from store import NotFound, sha256_text
from store.schema import split_statements

CALL = dict(teacher="gpt", model="openai/gpt-4o-mini", template="rationale",
            request={"messages": [{"role": "user", "content": "héllo"}], "params": {"temperature": 0}})


def _row(store, key):
    cur = store.conn.execute("SELECT * FROM teacher_calls WHERE key = ?", (key,))
    return dict(zip([d[0] for d in cur.description], cur.fetchone()))


def test_unknown_key_is_none(store):
    assert store.get_teacher_call("nope") is None


def test_a_success_is_stored_whole(store):
    v = store.record_prompt_version("rationale", "tpl")
    store.record_teacher_call("k", **CALL, prompt_version=v, status="ok", text="The answer is 4.",
                              response={"id": "r1", "usage": {"total_tokens": 15}}, attempts=2, latency_s=0.25,
                              prompt_tokens=10, completion_tokens=5, cost_usd=0.002, run_id=1, k=0)
    c = store.get_teacher_call("k")
    assert c["status"] == "ok" and c["text"] == "The answer is 4." and c["attempts"] == 2
    assert c["request"] == CALL["request"] and c["response"] == {"id": "r1", "usage": {"total_tokens": 15}}
    assert c["response_hash"] == sha256_text("The answer is 4.")
    assert (c["template"], c["prompt_version"], c["run_id"], c["k"]) == ("rationale", v, 1, 0)
    assert (c["latency_s"], c["prompt_tokens"], c["completion_tokens"]) == (0.25, 10, 5)
    assert c["error_type"] is None and c["error"] is None and c["created"] == c["updated"]
    # request and response are stored as compact, key-sorted JSON (what the cache always wrote)
    raw = _row(store, "k")
    assert raw["request"] == json.dumps(CALL["request"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert raw["response"] == '{"id":"r1","usage":{"total_tokens":15}}'


def test_a_success_is_never_overwritten(store):
    store.record_teacher_call("k", **CALL, status="ok", text="first", cost_usd=0.5, attempts=1, run_id=1, k=0)
    before = _row(store, "k")
    store.record_teacher_call("k", teacher="other", model="m", status="ok", text="second", cost_usd=9.0,
                              attempts=3, run_id=2, k=5)
    store.record_teacher_call("k", **CALL, status="error", error_type="TeacherTimeout", error="timed out",
                              attempts=4, cost_usd=1.0)
    assert _row(store, "k") == before  # not even `updated` or the attempts change
    assert store.get_teacher_call("k")["text"] == "first"
    assert store.spend() == pytest.approx(0.5)


def test_an_error_is_replaced_by_the_next_outcome_and_attempts_and_cost_add_up(store):
    v = store.record_prompt_version("rationale", "tpl")
    store.record_teacher_call("k", **CALL, prompt_version=v, status="error", error_type="TeacherRateLimited",
                              error="429", attempts=3, cost_usd=0.01, run_id=1, k=0)
    created = store.get_teacher_call("k")["created"]
    # a try that was refused before any request: nothing added, the newer error is kept
    store.record_teacher_call("k", **CALL, status="error", error_type="BudgetExceeded", error="over budget",
                              attempts=0, run_id=1, k=1)
    c = store.get_teacher_call("k")
    assert (c["status"], c["error_type"], c["attempts"], c["k"]) == ("error", "BudgetExceeded", 3, 1)
    assert c["cost_usd"] == pytest.approx(0.01)
    store.record_teacher_call("k", teacher="gpt-b", model="openai/gpt-4o", template="other", prompt_version=None,
                              request={"changed": True}, status="ok", text="4", response={"id": "r2"},
                              attempts=2, latency_s=0.5, prompt_tokens=7, completion_tokens=1, cost_usd=0.02,
                              run_id=2, k=3)
    c = store.get_teacher_call("k")
    assert (c["status"], c["text"], c["error_type"], c["error"]) == ("ok", "4", None, None)
    assert c["attempts"] == 5 and c["cost_usd"] == pytest.approx(0.03)
    assert (c["teacher"], c["model"], c["run_id"], c["k"], c["latency_s"]) == ("gpt-b", "openai/gpt-4o", 2, 3, 0.5)
    # what the first write said about the request stays
    assert (c["template"], c["prompt_version"], c["request"], c["created"]) == ("rationale", v, CALL["request"], created)
    assert store.spend(1) == 0.0 and store.spend(2) == pytest.approx(0.03)


def test_record_takes_only_known_fields(store):
    with pytest.raises(TypeError):
        store.record_teacher_call("k", teacher="t", model="m", status="ok", api_key="not-a-key")
    assert store.get_teacher_call("k") is None


def test_spend_per_run(store):
    for i, (run, cost) in enumerate([(1, 0.25), (1, 0.5), (2, 1.0), (None, 2.0)]):
        store.record_teacher_call(f"k{i}", **CALL, status="ok", text=str(i), cost_usd=cost, run_id=run)
    assert store.spend() == pytest.approx(3.75)
    assert store.spend(1) == pytest.approx(0.75) and store.spend(2) == pytest.approx(1.0) and store.spend(3) == 0.0


def test_teachers_cache_is_the_store_api(store):
    """teachers/cache.py adds the key, redaction and CachedCall; the rows are the store's."""
    from teachers import cache

    secret = "sk-test-0123456789abcdef"
    cache.record(store, "k", teacher="gpt", model="m", template=None, prompt_version=None,
                 request={"messages": [], "note": f"Bearer {secret}"}, status="error", error_type="TeacherAuth",
                 error=f"bad key {secret}", attempts=2, cost_usd=0.25, secrets=(secret,))
    got = cache.get(store, "k")
    assert (got.status, got.text, got.error_type, got.attempts, got.cost_usd) == ("error", None, "TeacherAuth", 2, 0.25)
    assert secret not in got.error and secret not in json.dumps(store.get_teacher_call("k")["request"])
    cache.record(store, "k", teacher="gpt", model="m", template=None, prompt_version=None, request={}, status="ok",
                 text="fine", attempts=1, cost_usd=0.5)
    got = cache.get(store, "k")
    assert (got.status, got.text, got.error, got.attempts, got.cost_usd) == ("ok", "fine", None, 3, 0.75)
    assert cache.spend(store) == store.spend() == pytest.approx(0.75)
    assert cache.get(store, "other") is None
    v = store.record_prompt_version("rationale", "tpl")
    assert cache.prompt_version_exists(store, v) and not cache.prompt_version_exists(store, "0" * 64)


def test_has_prompt_version(store):
    v = store.record_prompt_version("student", "body")
    assert store.has_prompt_version(v) and not store.has_prompt_version(v[:12])


# ------------------------------------------------------------ CLI queries
def test_first_example_and_latest_wrong_output(store):
    assert store.first_example("pool") is None
    store.add_examples([{"id": "d1", "question": "dev?", "answer": "1"}], "dev")
    store.add_examples([{"id": "p1", "question": "Q1?", "answer": "1", "rationale": "1\n#### 1"},
                        {"id": "p2", "question": "Q2?", "answer": None}], "pool")
    ex = store.first_example("pool")
    assert (ex["id"], ex["question"], ex["answer"], ex["rationale"]) == ("p1", "Q1?", "1", "1\n#### 1")
    assert store.first_example("dev")["id"] == "d1" and store.first_example() == ex
    assert store.latest_wrong_output("p1") is None
    run = store.create_run("main", {})
    store.record_predictions(run, 0, "mine", [
        {"example_id": "p1", "output": "first wrong", "answer": "2", "correct": False},
        {"example_id": "p1", "output": "right", "answer": "1", "correct": True, "sample": 1},
        {"example_id": "p1", "output": "no gold", "answer": None, "correct": None, "sample": 2},
    ])
    store.record_predictions(run, 1, "eval", [{"example_id": "p1", "output": "later wrong", "answer": "3", "correct": False}])
    store.record_predictions(run, 2, "eval", [{"example_id": "p1", "output": "latest right", "answer": "1", "correct": True}])
    assert store.latest_wrong_output("p1") == "later wrong"
    assert store.latest_wrong_output("p2") is None


def test_iteration_counts_and_changed_examples_follow_replays(store, add_pool):
    ids = add_pool(store, 3)
    run = store.create_run("main", {})
    empty = {"predictions": {}, "rationales": {"created": 0, "accepted": 0, "rejected": 0},
             "teacher_calls": {"count": 0, "ok": 0, "error": 0, "cost_usd": 0.0}}
    assert store.iteration_counts(run, 0) == empty
    store.record_predictions(run, 0, "eval", [
        {"example_id": ids[0], "output": "1", "answer": "1", "correct": True},
        {"example_id": ids[1], "output": "5", "answer": "5", "correct": False},
        {"example_id": ids[2], "output": "?", "answer": None, "correct": None},
    ])
    store.record_predictions(run, 0, "mine", [{"example_id": ids[1], "output": "5", "answer": "5", "correct": False}])
    r = [store.add_rationale(ids[i], f"r{i}", str(i + 1), "gpt", run_id=run, k=0) for i in range(3)]
    store.set_accepted(r[0], True, 1.0)
    store.set_accepted(r[1], False, 0.0, rejected_reason="wrong_answer")
    store.record_teacher_call("a", **CALL, status="ok", text="x", cost_usd=0.25, run_id=run, k=0)
    store.record_teacher_call("b", **CALL, status="error", error="boom", cost_usd=0.5, run_id=run, k=0)
    store.record_teacher_call("c", **CALL, status="ok", text="y", cost_usd=4.0, run_id=run, k=1)
    store.write_dataset_version(run, 0, {ids[0]: [(r[0], 1.0)], ids[2]: [(r[2], 1.0)]})
    want = {
        "predictions": {"eval": {"total": 3, "correct": 1, "wrong": 1}, "mine": {"total": 1, "correct": 0, "wrong": 1}},
        "rationales": {"created": 3, "accepted": 1, "rejected": 1},
        "teacher_calls": {"count": 2, "ok": 1, "error": 1, "cost_usd": 0.75},
    }
    assert store.iteration_counts(run, 0) == want
    assert store.changed_examples(run, 0) == sorted([ids[0], ids[2]])
    store.finish_iteration(run, 0, {"dev_acc": 0.5}, None, None)
    alt = store.branch_run(run, 0, "alt", {})
    # k=0 of the replay is its parent's; k=1 is its own (nothing yet)
    assert store.iteration_counts(alt, 0) == want
    assert store.changed_examples(alt, 0) == sorted([ids[0], ids[2]])
    assert store.iteration_counts(alt, 1) == empty and store.changed_examples(alt, 1) == []
    with pytest.raises(NotFound):
        store.iteration_counts(999, 0)


# ------------------------------------------------------------ migrations
def test_split_statements_ends_a_statement_only_where_sqlite_does():
    script = """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT 'a;b');
        /* block; comment */ CREATE TABLE u (y INTEGER);
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            INSERT INTO u VALUES (1);
            INSERT INTO u VALUES (2);
        END;
        CREATE INDEX u_y ON u(y)
    """
    stmts = split_statements(script)
    assert len(stmts) == 4
    assert stmts[0].endswith("CREATE TABLE t (x TEXT DEFAULT 'a;b');")
    assert stmts[2].startswith("CREATE TRIGGER") and stmts[2].endswith("END;")
    assert stmts[3] == "CREATE INDEX u_y ON u(y)"
    assert split_statements("  \n") == [] and split_statements("SELECT 1;\n-- done\n") == ["SELECT 1;", "-- done"]
