"""End to end: the tiny student, a real OpenAI-compatible HTTP teacher on
127.0.0.1, three iterations, then the inspection commands.

The tiny model cannot learn arithmetic in a few steps, so these tests assert
the lineage chain (first wrong answer -> refine call -> accepted refined
rationale -> dataset version), not that the student ends up correct."""

from __future__ import annotations

import json

from store import Store

from tests.loop.helpers import cli_json, datasets, refine_kind, run_inprocess, task_rows


def test_three_iterations_mine_refine_version_and_lineage(finished, capsys):
    ws, teacher_server = finished
    its = cli_json(capsys, ws, "iterations")
    rows = its["iterations"] if isinstance(its, dict) else its
    assert [r["k"] for r in rows] == [0, 1, 2]
    assert all(r["status"] == "done" for r in rows)

    st = Store.open(ws)
    run = st.get_run("main")
    m = [st.get_iteration(run["id"], k)["metrics"] for k in range(3)]
    assert m[0]["baseline_dev_acc"] is not None
    assert m[0]["rationales"] == 12 and m[0]["accepted"] == 6  # every other seed answer is wrong on purpose
    assert m[0]["dataset_size"] == 6
    assert m[0]["rejected"] == {"no_computation": 6}  # the careless seeds state an answer without computing it
    pool = {row["question"]: i for i, row in enumerate(task_rows()[0])}
    examples = {e["id"]: e for e in st.list_examples("pool")}
    rats = {r["id"]: r for r in st.list_rationales(run_id=run["id"])}
    for k in (1, 2):
        assert m[k]["errors"] > 0  # the tiny student is wrong: errors are mined...
        assert m[k]["refinements_asked"] == m[k]["errors"]  # ...each one refined...
        # ...and only the real derivations among the refinements are accepted
        verdicts = [v for v in st.verdicts(run_id=run["id"], k=k)]
        assert verdicts
        for v in verdicts:
            kind = refine_kind(pool[examples[rats[v["rationale_id"]]["example_id"]]["question"]])
            want = {"derivation": None, "parrot": "meta_talk", "copy_previous": "copy_of_previous",
                    "copy_student": "copy_of_student_output"}[kind]
            if k == 2 and kind == "derivation":
                # the same derivation again: it is now the demonstration the student studied
                want = "copy_of_previous"
            if kind == "copy_student" and rats[v["rationale_id"]]["text"] == "(nothing to copy)":
                want = "no_answer_line"  # the tiny student wrote only whitespace
            assert v["accepted"] is (want is None), (k, kind, v)
            assert v["rejected_reason"] == want, (k, kind, rats[v["rationale_id"]]["text"])
    show1 = cli_json(capsys, ws, "show", "1")
    kinds = [refine_kind(pool[examples[p["example_id"]]["question"]])
             for p in st.list_predictions(run["id"], 1, "mine") if p["sample"] == 0 and p["correct"] is False]
    expected = {"parrot": "meta_talk", "copy_previous": "copy_of_previous", "copy_student": "copy_of_student_output"}
    assert set(show1["rejections"]) == {expected[kd] for kd in kinds if kd in expected}
    assert m[1]["refinements_accepted"] == sum(1 for kd in kinds if kd == "derivation")
    assert st.get_iteration(run["id"], 2)["stop_reason"] == "max_iterations"

    # one example's lineage: seed rationale at k=0 -> wrong answer mined at k=1
    # -> refine call answering that prediction -> accepted -> dataset version 1
    data0, data1 = st.dataset(run["id"], 0), st.dataset(run["id"], 1)
    eid = next(e for e in data0 if e in data1 and data0[e] != data1[e])
    seed_rid = data0[eid][0][0]
    new_rid = data1[eid][0][0]
    trace = cli_json(capsys, ws, "trace", eid)
    text = json.dumps(trace)
    assert seed_rid in text and new_rid in text
    # a rejected refinement shows its reason in trace
    parroted = next(r for r in st.list_rationales(run_id=run["id"], k=1) if r["rejected_reason"] == "meta_talk")
    traced = cli_json(capsys, ws, "trace", parroted["example_id"])
    rows = {r["id"]: r for r in traced["rationales"]}
    assert rows[parroted["id"]]["rejected_reason"] == "meta_talk" and rows[parroted["id"]]["accepted"] is False
    assert {"run": "main", "k": 1, "rationale_id": parroted["id"], "accepted": False,
            "rejected_reason": "meta_talk"}.items() <= next(
        v for v in traced["verdicts"] if v["rationale_id"] == parroted["id"] and v["k"] == 1).items()
    rats = {r["id"]: r for r in st.list_rationales(example_id=eid)}
    refined = rats[new_rid]
    assert refined["parent_id"] == seed_rid and refined["k"] == 1
    by_k = {v["k"]: v for v in st.verdicts(run_id=run["id"], rationale_ids=[new_rid])}
    assert by_k[1]["accepted"] is True  # accepted at k=1; written again at k=2 it is a copy of what it became
    assert by_k[2]["rejected_reason"] == "copy_of_previous" and refined["accepted"] is False
    err = st.get_prediction(refined["error_prediction"])
    assert err["k"] == 1 and err["phase"] == "mine" and err["correct"] is False and err["example_id"] == eid
    call = st.get_teacher_call(refined["teacher_call"])
    assert call["template"] == "refine" and call["status"] == "ok"
    prompt = "\n".join(m["content"] for m in call["request"]["messages"])
    assert err["output"] in prompt  # the refine prompt holds the student's wrong output

    diff = cli_json(capsys, ws, "diff", "0", "1")
    assert eid in json.dumps(diff)
    show = cli_json(capsys, ws, "show", "1")
    assert show  # the iteration is visible with its metrics
    capsys.readouterr()
    assert run_inprocess(ws, "export", "1", "--format", "jsonl") == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(lines) >= len(data1)

    # an odd example: its seed was wrong (rejected), so its first accepted
    # demonstration is a refinement with no parent, answering a mined error
    rejected = [v for v in st.verdicts(run_id=run["id"], k=0) if v["accepted"] is False]
    assert len(rejected) == 6 and {v["rejected_reason"] for v in rejected} == {"no_computation"}
    st.close()

    # nothing duplicated; a second `run` has nothing left to do and asks the teacher nothing
    before = teacher_server.requests
    ds = datasets(ws)
    assert run_inprocess(ws, "run") == 0
    assert teacher_server.requests == before
    assert datasets(ws) == ds
