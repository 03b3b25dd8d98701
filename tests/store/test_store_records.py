"""Every record API round-trips, and the idempotent ones stay idempotent."""

import pytest

from store import sha256_text
from store.errors import Ambiguous, NotFound
from store.records import example_id


def test_texts_stored_once(store):
    h = store.put_text("hello")
    assert h == sha256_text("hello")
    assert store.put_text("hello") == h
    assert store.get_text(h) == "hello"
    assert store.get_text(None) is None
    assert store.conn.execute("SELECT COUNT(*) FROM texts").fetchone()[0] == 1


def test_runs(store):
    rid = store.create_run("main", {"loss": {"alpha": 0.5}})
    run = store.get_run("main")
    assert run["id"] == rid and run["config"] == {"loss": {"alpha": 0.5}} and run["status"] == "created"
    assert store.get_run(rid)["name"] == "main"
    assert store.get_run(str(rid))["name"] == "main"
    assert len(run["config_hash"]) == 64
    store.set_run_status(rid, "running")
    assert store.get_run("main")["status"] == "running"
    assert [r["name"] for r in store.list_runs()] == ["main"]
    with pytest.raises(NotFound):
        store.get_run("nope")
    assert store.find_run("nope") is None
    with pytest.raises(NotFound):
        store.set_run_status(999, "x")


def test_examples(store):
    rows = [
        {"question": "Q1", "answer": "1", "rationale": "because", "meta": {"src": "t"}},
        {"question": "Q2", "answer": "2", "id": "custom-id"},
        {"question": "Q3", "answer": None},
    ]
    assert store.add_examples(rows, "pool") == (3, 0)
    assert store.add_examples(rows, "pool") == (0, 3)
    assert store.add_examples([{"question": "D", "answer": "4"}], "dev") == (1, 0)
    pool = store.list_examples("pool")
    assert [e["question"] for e in pool] == ["Q1", "Q2", "Q3"]
    e1 = store.get_example(example_id("Q1", "1"))
    assert e1["rationale"] == "because" and e1["meta"] == {"src": "t"} and e1["split"] == "pool"
    assert store.get_example("custom-id")["answer"] == "2"
    assert store.get_example(example_id("Q3", None))["answer"] is None
    assert store.get_example("missing") is None
    assert [e["question"] for e in store.list_examples("dev")] == ["D"]
    assert store.count_examples() == 4 and store.count_examples("dev") == 1
    with pytest.raises(ValueError):
        store.add_examples(rows, "train")


def test_resolve_example_prefix(store):
    store.add_examples(
        [{"id": "abc1", "question": "a", "answer": "1"}, {"id": "abc2", "question": "b", "answer": "2"},
         {"id": "x_y", "question": "c", "answer": "3"}],
        "pool",
    )
    assert store.resolve_example("abc1") == "abc1"
    assert store.resolve_example("x_") == "x_y"
    with pytest.raises(Ambiguous):
        store.resolve_example("abc")
    with pytest.raises(NotFound):
        store.resolve_example("zzz")
    with pytest.raises(NotFound):
        store.resolve_example("x%")  # LIKE wildcards are literal


def test_prompt_versions(store):
    v1 = store.record_prompt_version("refine", "body 1")
    assert store.record_prompt_version("refine", "body 1") == v1
    v2 = store.record_prompt_version("refine", "body 2")
    assert [p["id"] for p in store.prompt_versions("refine")] == [v1, v2]
    assert store.prompt_versions()[0]["body"] == "body 1"


def test_iterations_and_steps(store):
    run = store.create_run("main", {})
    store.start_iteration(run, 0)
    store.start_iteration(run, 0)  # idempotent
    store.begin_step(run, 0, "baseline")
    assert store.steps(run, 0) == {"baseline": "started"}
    store.finish_step(run, 0, "baseline", {"dev_accuracy": 0.1})
    store.begin_step(run, 0, "baseline")  # a done step stays done
    store.begin_step(run, 0, "mine")
    assert store.steps(run, 0) == {"baseline": "done", "mine": "started"}
    assert store.step_details(run, 0)[0]["info"] == {"dev_accuracy": 0.1}
    store.finish_iteration(run, 0, {"dev_accuracy": 0.25}, "adapters/0", "ab" * 32, stop_reason=None)
    its = store.list_iterations(run)
    assert len(its) == 1
    it = its[0]
    assert it["status"] == "done" and it["metrics"] == {"dev_accuracy": 0.25}
    assert it["adapter_path"] == "adapters/0" and it["finished"] and it["steps"]["mine"] == "started"
    assert store.get_iteration(run, 0)["metrics"] == {"dev_accuracy": 0.25}
    with pytest.raises(NotFound):
        store.get_iteration(run, 5)
    with pytest.raises(NotFound):
        store.start_iteration(999, 0)


def test_predictions_idempotent(store, add_pool):
    ids = add_pool(store, 2)
    run = store.create_run("main", {})
    rows = [
        {"example_id": ids[0], "sample": 0, "output": "so 2", "answer": "2", "correct": True},
        {"example_id": ids[1], "sample": 0, "output": "so 7", "answer": "7", "correct": False},
        {"example_id": ids[1], "sample": 1, "output": "no idea", "answer": None, "correct": None},
    ]
    pids = store.record_predictions(run, 1, "mine", rows)
    assert store.record_predictions(run, 1, "mine", rows) == pids
    got = store.list_predictions(run, 1, "mine")
    assert [(p["id"], p["output"], p["answer"], p["correct"]) for p in got] == [
        (pids[0], "so 2", "2", True), (pids[1], "so 7", "7", False), (pids[2], "no idea", None, None)
    ]
    assert store.get_prediction(pids[1])["example_id"] == ids[1]
    assert store.list_predictions(run, 1, "eval") == []


def test_teacher_call_cache(store):
    v = store.record_prompt_version("rationale", "tpl")
    assert store.get_teacher_call("k1") is None
    store.record_teacher_call(
        "k1", teacher="gpt", model="openai/gpt-4o-mini", template="rationale", prompt_version=v,
        request={"messages": [{"role": "user", "content": "hi"}]}, status="error",
        error_type="TeacherRateLimited", error="429", attempts=3, run_id=1, k=0,
    )
    c = store.get_teacher_call("k1")
    assert c["status"] == "error" and c["attempts"] == 3 and c["text"] is None
    assert c["request"] == {"messages": [{"role": "user", "content": "hi"}]}
    store.record_teacher_call(
        "k1", teacher="gpt", model="openai/gpt-4o-mini", status="ok", text="The answer is 4.",
        response={"id": "r1"}, cost_usd=0.002, prompt_tokens=10, completion_tokens=5, latency_s=0.3, run_id=1, k=0,
    )
    c = store.get_teacher_call("k1")
    assert c["status"] == "ok" and c["text"] == "The answer is 4." and c["attempts"] == 4
    assert c["response"] == {"id": "r1"} and c["cost_usd"] == pytest.approx(0.002)
    # a stored success is never overwritten
    store.record_teacher_call("k1", teacher="gpt", model="m", status="ok", text="other", cost_usd=9.0)
    assert store.get_teacher_call("k1")["text"] == "The answer is 4."
    assert store.spend() == pytest.approx(0.002)
    assert store.spend(1) == pytest.approx(0.002) and store.spend(2) == 0.0
    with pytest.raises(TypeError):
        store.record_teacher_call("k2", teacher="t", model="m", api_key="not-a-key")


def test_rationales(store, add_pool):
    ids = add_pool(store, 1)
    run = store.create_run("main", {})
    r0 = store.add_rationale(ids[0], "0 + 1 = 1", "1", "self", run_id=run, k=0)
    assert store.add_rationale(ids[0], "0 + 1 = 1", "1", "self", run_id=run, k=0) == r0
    store.record_teacher_call("call", teacher="gpt", model="m", status="ok", text="t")
    [p] = store.record_predictions(run, 1, "mine", [{"example_id": ids[0], "output": "2", "answer": "2", "correct": False}])
    r1 = store.add_rationale(ids[0], "count: 0, then 1", "1", "gpt", teacher_call="call", parent_id=r0,
                             error_prediction=p, run_id=run, k=1)
    store.set_accepted(r1, True, 1.0)
    got = store.get_rationale(r1)
    assert got["text"] == "count: 0, then 1" and got["parent_id"] == r0 and got["error_prediction"] == p
    assert got["teacher_call"] == "call" and got["accepted"] is True and got["agreement"] == 1.0
    assert store.get_rationale(r0)["accepted"] is None
    assert [r["id"] for r in store.list_rationales(example_id=ids[0])] == [r0, r1]
    assert [r["id"] for r in store.list_rationales(run_id=run, k=1)] == [r1]
    assert set(store.get_rationales([r0, r1, "missing"])) == {r0, r1}
    with pytest.raises(NotFound):
        store.set_accepted("missing", True, 1.0)


def test_events(store):
    run = store.create_run("main", {})
    e1 = store.log_event(run, 0, "mine", "started", "mining 10 questions", {"n": 10})
    e2 = store.log_event(None, None, None, "info", "hello")
    evs = store.list_events()
    assert [e["id"] for e in evs] == [e1, e2] and evs[0]["data"] == {"n": 10}
    assert [e["id"] for e in store.list_events(run_id=run)] == [e1]
    assert [e["id"] for e in store.list_events(since_id=e1)] == [e2]


def test_transaction_rolls_back_everything(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_examples([{"question": "q", "answer": "1"}], "pool")
            store.create_run("r", {})
            raise RuntimeError("boom")
    assert store.count_examples() == 0 and store.list_runs() == []
