"""The run's result and its stopping: an unchanged dataset version is not
trained again and counts towards patience; `best` names the iteration with
the highest dev accuracy (the earlier on ties) in show, export, replay,
iterations and the closing table, also after a resume."""

from __future__ import annotations

import json
import sqlite3

from store import Store

from tests.fakeserver import FakeOpenAIServer
from tests.loop.helpers import cli_json, make_workspace, run_inprocess, task_rows, teacher_answer


def _parroting_teacher(messages):
    """Seeds like the scripted teacher; every refinement only restates the gold answer."""
    text = "\n".join(m["content"] for m in messages)
    if "A wrong answer to it:" in text:
        pool, _ = task_rows()
        answer = next(row["answer"] for row in pool if row["question"] in text)
        return f"The correct final answer is given as {answer}.\n#### {answer}"
    return teacher_answer(messages)


def test_unchanged_version_is_not_retrained_and_counts_towards_patience(tmp_path, capsys):
    with FakeOpenAIServer(answer=_parroting_teacher) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url, max_iterations=5, patience=1)
        assert run_inprocess(ws, "run") == 0
    st = Store.open(ws)
    try:
        run = st.get_run("main")
        its = [st.get_iteration(run["id"], k) for k in range(2)]
        with_k2 = [it["k"] for it in st.list_iterations(run["id"])]
    finally:
        st.close()
    assert with_k2 == [0, 1]  # patience 1: the unchanged k=1 (no dev gain) stopped the run
    assert its[1]["stop_reason"] == "patience"
    m1 = its[1]["metrics"]
    assert m1["changed"] == 0 and m1["train_skipped"] == "unchanged" and m1["train_steps"] == 0
    assert m1["rejected"] == {"meta_talk": m1["refinements_asked"]}  # every parroted refinement was rejected
    assert its[1]["adapter_sha256"] == its[0]["adapter_sha256"]  # k=0's adapter, not a retrained one
    assert not (ws / "runs" / "main" / "iter-1" / "adapter").exists()
    show = cli_json(capsys, ws, "show", "1")
    assert show["train_skipped"] == "unchanged" and "skipped" in show["training"]
    assert show["rejections"] == {"meta_talk": m1["refinements_asked"]}


def test_on_unchanged_train_trains_again(tmp_path):
    with FakeOpenAIServer(answer=_parroting_teacher) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url, max_iterations=2, on_unchanged="train")
        assert run_inprocess(ws, "run") == 0
    st = Store.open(ws)
    try:
        run = st.get_run("main")
        m1 = st.get_iteration(run["id"], 1)["metrics"]
    finally:
        st.close()
    assert m1["changed"] == 0 and m1["train_skipped"] is None and m1["train_steps"] == 3


def _set_dev_acc(ws, accs: dict[int, float]) -> None:
    """The tiny student scores 0% everywhere; give the finished iterations
    distinct dev accuracies so `best` has something to choose."""
    con = sqlite3.connect(ws / "distillery.db")
    try:
        for k, acc in accs.items():
            (raw,) = con.execute("SELECT metrics FROM iterations WHERE run_id = 1 AND k = ?", (k,)).fetchone()
            m = json.loads(raw)
            m["dev_acc"] = acc
            con.execute("UPDATE iterations SET metrics = ? WHERE run_id = 1 AND k = ?", (json.dumps(m), k))
        con.commit()
    finally:
        con.close()


def test_best_names_the_highest_dev_iteration_also_after_a_resume(tmp_path, capsys):
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url, max_iterations=3, patience=5)
        assert run_inprocess(ws, "run", "--iterations", "2") == 0
        _set_dev_acc(ws, {0: 0.25, 1: 0.5})
        assert cli_json(capsys, ws, "show", "best")["k"] == 1
        assert run_inprocess(ws, "run", "--iterations", "3") == 0  # resume: k = 2 runs
        _set_dev_acc(ws, {2: 0.5})  # a tie with k = 1: the earlier iteration stays the result
        show = cli_json(capsys, ws, "show", "best")
        assert show["k"] == 1 and show["best"] is True and show["best_k"] == 1
        assert cli_json(capsys, ws, "show", "main:best")["k"] == 1
        assert cli_json(capsys, ws, "show", "2")["best"] is False

        its = cli_json(capsys, ws, "iterations")["iterations"]
        assert [d["best"] for d in its] == [False, True, False]

        capsys.readouterr()
        assert run_inprocess(ws, "export", "best") == 0
        best_rows = capsys.readouterr().out
        assert run_inprocess(ws, "export", "1") == 0
        assert capsys.readouterr().out == best_rows

        out = tmp_path / "best.jsonl"
        res = cli_json(capsys, ws, "export", "best", "-o", str(out))
        assert res["k"] == 1 and out.read_text() == best_rows

        doc = cli_json(capsys, ws, "replay", "best", "--name", "from-best", "--iterations", "2")
        assert doc["parent_k"] == 1

        capsys.readouterr()
        assert run_inprocess(ws, "report", "-o", str(tmp_path / "r.html")) == 0
        assert "the result is <b>iteration 1</b>" in (tmp_path / "r.html").read_text()


def test_run_prints_which_iteration_is_the_result(tmp_path, capsys):
    with FakeOpenAIServer(answer=teacher_answer) as srv:
        ws = make_workspace(tmp_path / "ws", srv.base_url, max_iterations=1)
        capsys.readouterr()
        assert run_inprocess(ws, "run") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "result: iteration 0" in out and "stopped: max_iterations" in out
    assert "<- best" in out
