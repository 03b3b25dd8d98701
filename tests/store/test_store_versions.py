"""Dataset versions as deltas: every version reconstructs exactly (replace,
accumulate, removals, replay branches); diff and lineage on a hand-built history."""

import random

import pytest

from store.errors import Conflict, NotFound


def _apply(state, changes):
    new = {ex: list(d) for ex, d in state.items()}
    for ex, demos in changes.items():
        if demos:
            new[ex] = list(demos)
        else:
            new.pop(ex, None)
    return new


def _history(store, add_pool, run, start_state, ks, seed, ids):
    """Random changes for iterations ks (replace, accumulate, remove, re-add);
    returns {k: expected dataset}."""
    rng = random.Random(seed)
    state = start_state
    expected = {}
    for k in ks:
        changes = {}
        for ex in rng.sample(ids, 6):
            r = store.add_rationale(ex, f"{ex} at {run}/{k} #{rng.random()}", "1", "self", run_id=run, k=k)
            mode = rng.choice(["replace", "accumulate", "remove"])
            if mode == "replace" or ex not in state:
                changes[ex] = [(r, 1.0)]
            elif mode == "accumulate":
                changes[ex] = state[ex] + [(r, 0.5)]
            else:
                changes[ex] = None
        if k == ks[-1] and state:
            ex = next(iter(state))
            changes[ex] = list(state[ex])  # a no-op change is dropped, not stored
        store.write_dataset_version(run, k, changes)
        state = _apply(state, changes)
        expected[k] = state
    return expected


def test_reconstruct_every_version_after_five_iterations(store, add_pool):
    ids = add_pool(store, 20)
    run = store.create_run("main", {})
    seed = {ex: [(store.add_rationale(ex, f"seed {ex}", "1", "self", run_id=run, k=0), 1.0)] for ex in ids[:15]}
    store.write_dataset_version(run, 0, seed)
    expected = {0: _apply({}, seed)}
    expected |= _history(store, add_pool, run, expected[0], [1, 2, 3, 4, 5], 1, ids)
    for k, want in expected.items():
        assert store.dataset(run, k) == dict(sorted(want.items())), k
        assert store.dataset_size(run, k) == len(want)
    # versions after the last write equal the last one
    assert store.dataset(run, 9) == store.dataset(run, 5)
    assert store.dataset(run, -1) == {}
    # the delta is small: only changed examples have rows at k
    assert len(store.changed_examples(run, 3)) <= 6


def test_rewriting_a_version_replaces_it(store, add_pool):
    ids = add_pool(store, 3)
    run = store.create_run("main", {})
    r = [store.add_rationale(ex, f"r {ex}", "1", "self") for ex in ids]
    store.write_dataset_version(run, 0, {ids[0]: [(r[0], 1.0)], ids[1]: [(r[1], 1.0)]})
    store.write_dataset_version(run, 1, {ids[2]: [(r[2], 1.0)]})
    store.write_dataset_version(run, 1, {ids[2]: [(r[2], 2.0)]})  # resumed step writes again
    assert store.dataset(run, 1) == {ids[0]: [(r[0], 1.0)], ids[1]: [(r[1], 1.0)], ids[2]: [(r[2], 2.0)]}
    assert store.conn.execute("SELECT COUNT(*) FROM dataset_entries WHERE k = 1").fetchone()[0] == 1
    # removing an example that is not there writes nothing
    assert store.write_dataset_version(run, 2, {"e-none": None}) == 0


def test_replay_branch_inherits_and_diverges(store, add_pool):
    ids = add_pool(store, 20)
    run = store.create_run("main", {"teacher": "a"})
    seed = {ex: [(store.add_rationale(ex, f"seed {ex}", "1", "self", run_id=run, k=0), 1.0)] for ex in ids}
    store.write_dataset_version(run, 0, seed)
    for k in range(6):
        store.finish_iteration(run, k, {"dev_accuracy": k / 10}, None, None)
    exp_main = {0: _apply({}, seed)} | _history(store, add_pool, run, _apply({}, seed), [1, 2, 3, 4, 5], 2, ids)

    branch = store.branch_run(run, 2, "replay", {"teacher": "b"})
    b = store.get_run("replay")
    assert (b["parent_run"], b["parent_k"], b["config"]) == (run, 2, {"teacher": "b"})
    exp_b = _history(store, add_pool, branch, exp_main[2], [3, 4], 3, ids)
    store.finish_iteration(branch, 3, {"dev_accuracy": 0.9}, None, None)
    for k in (0, 1, 2):
        assert store.dataset(branch, k) == store.dataset(run, k) == dict(sorted(exp_main[k].items()))
    for k in (3, 4):
        assert store.dataset(branch, k) == dict(sorted(exp_b[k].items()))
        assert store.dataset_size(branch, k) == len(exp_b[k])
    # the parent is untouched by the branch
    for k in (3, 4, 5):
        assert store.dataset(run, k) == dict(sorted(exp_main[k].items()))
    # a replay of a replay
    b2 = store.branch_run(branch, 3, "replay2", {})
    exp_b2 = _history(store, add_pool, b2, exp_b[3], [4], 4, ids)
    assert store.dataset(b2, 4) == dict(sorted(exp_b2[4].items()))
    assert store.dataset(b2, 1) == store.dataset(run, 1)
    # inherited iterations resolve to the parent's
    assert store.get_iteration(branch, 1)["metrics"] == {"dev_accuracy": 0.1}
    assert store.get_iteration(branch, 1)["inherited_from"] == run
    assert store.get_iteration(b2, 3)["metrics"] == {"dev_accuracy": 0.9}
    assert store.get_iteration(b2, 1)["inherited_from"] == run
    with pytest.raises(Conflict):
        store.write_dataset_version(branch, 2, {})
    with pytest.raises(NotFound):
        store.branch_run(run, 42, "nope", {})
    assert store.find_run("nope") is None


@pytest.fixture
def history(store, add_pool):
    """A hand-built history of 4 examples over iterations 0 and 1.

    k=0: a, b, c seeded (ra0, rb0, rc0); d not in the dataset.
    k=1: a's demo replaced by ra1 (refines ra0, answers a's wrong prediction),
         b accumulates rb1, c removed, d added; eval: a wrong->right, b right->wrong.
    """
    a, b, c, d = add_pool(store, 4)
    run = store.create_run("main", {})
    ra0 = store.add_rationale(a, "a v0", "1", "self", run_id=run, k=0)
    rb0 = store.add_rationale(b, "b v0", "2", "self", run_id=run, k=0)
    rc0 = store.add_rationale(c, "c v0", "3", "self", run_id=run, k=0)
    store.write_dataset_version(run, 0, {a: [(ra0, 1.0)], b: [(rb0, 1.0)], c: [(rc0, 1.0)]})
    store.record_predictions(run, 0, "eval", [
        {"example_id": a, "output": "5", "answer": "5", "correct": False},
        {"example_id": b, "output": "2", "answer": "2", "correct": True},
    ])
    store.finish_iteration(run, 0, {"dev_accuracy": 0.5, "note": "x"}, None, None)
    [pa] = store.record_predictions(run, 1, "mine", [{"example_id": a, "output": "so 5", "answer": "5", "correct": False}])
    store.record_teacher_call("call-a1", teacher="gpt", model="openai/gpt-4o-mini", status="ok", text="a v1",
                              run_id=run, k=1, cost_usd=0.01)
    ra1 = store.add_rationale(a, "a v1", "1", "gpt", teacher_call="call-a1", parent_id=ra0,
                              error_prediction=pa, run_id=run, k=1)
    store.set_accepted(ra1, True, 1.0)
    rb1 = store.add_rationale(b, "b v1", "2", "self", run_id=run, k=1)
    rd1 = store.add_rationale(d, "d v1", "4", "self", run_id=run, k=1)
    store.write_dataset_version(run, 1, {a: [(ra1, 1.0)], b: [(rb0, 1.0), (rb1, 0.5)], c: None, d: [(rd1, 1.0)]})
    store.record_predictions(run, 1, "eval", [
        {"example_id": a, "output": "1", "answer": "1", "correct": True},
        {"example_id": b, "output": "9", "answer": "9", "correct": False},
    ])
    store.finish_iteration(run, 1, {"dev_accuracy": 0.5 + 0.25}, None, None)
    return dict(run=run, a=a, b=b, c=c, d=d, ra0=ra0, ra1=ra1, rb0=rb0, rb1=rb1, rd1=rd1, pa=pa)


def test_diff_on_hand_built_history(store, history):
    h = history
    diff = store.diff_iterations(h["run"], 0, h["run"], 1)
    ds = diff["dataset"]
    assert (ds["size_a"], ds["size_b"]) == (3, 3)
    assert ds["added"] == [h["d"]] and ds["removed"] == [h["c"]]
    assert ds["changed"] == sorted([
        {"example_id": h["a"], "before": [{"rationale_id": h["ra0"], "weight": 1.0}],
         "after": [{"rationale_id": h["ra1"], "weight": 1.0}]},
        {"example_id": h["b"], "before": [{"rationale_id": h["rb0"], "weight": 1.0}],
         "after": [{"rationale_id": h["rb0"], "weight": 1.0}, {"rationale_id": h["rb1"], "weight": 0.5}]},
    ], key=lambda x: x["example_id"])
    assert diff["became_correct"] == [h["a"]] and diff["regressed"] == [h["b"]]
    assert diff["metrics"]["delta"] == {"dev_accuracy": pytest.approx(0.25)}
    # reversed direction and the cross-run (replay) path agree
    back = store.diff_iterations(h["run"], 1, h["run"], 0)
    assert back["dataset"]["added"] == [h["c"]] and back["regressed"] == [h["a"]]
    br = store.branch_run(h["run"], 0, "replay", {})
    x = store.diff_iterations(br, 0, h["run"], 1)
    assert x["dataset"]["added"] == ds["added"] and x["dataset"]["changed"] == ds["changed"]
    assert x["became_correct"] == [h["a"]]
    same = store.diff_iterations(h["run"], 1, h["run"], 1)
    assert same["dataset"]["changed"] == [] and same["became_correct"] == [] and same["regressed"] == []


def test_lineage_on_hand_built_history(store, history):
    h = history
    lin = store.lineage(h["a"])
    assert lin["example"]["id"] == h["a"]
    assert [(p["k"], p["phase"], p["correct"]) for p in lin["predictions"]] == [
        (0, "eval", False), (1, "eval", True), (1, "mine", False)
    ]
    assert all(p["run"] == "main" for p in lin["predictions"])
    rats = {r["id"]: r for r in lin["rationales"]}
    assert set(rats) == {h["ra0"], h["ra1"]}
    assert rats[h["ra1"]]["parent_id"] == h["ra0"] and rats[h["ra1"]]["error_prediction"] == h["pa"]
    assert rats[h["ra1"]]["teacher_call"] == "call-a1" and rats[h["ra1"]]["accepted"] is True
    assert [c["key"] for c in lin["teacher_calls"]] == ["call-a1"]
    assert lin["teacher_calls"][0]["model"] == "openai/gpt-4o-mini"
    assert [(v["k"], [x["rationale_id"] for x in v["demonstrations"]]) for v in lin["dataset"]] == [
        (0, [h["ra0"]]), (1, [h["ra1"]])
    ]
    lc = store.lineage(h["c"])
    assert [(v["k"], v["removed"]) for v in lc["dataset"]] == [(0, False), (1, True)]
    with pytest.raises(NotFound):
        store.lineage("nope")
