"""The store's CLI commands end to end: init, data add, runs, iterations,
show, diff, trace, export (each with --json), and their user errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loop.cli.main import main
from store import Store


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ws(workspace, capsys):
    """An initialised (tiny) workspace; $DISTILLERY_WORKSPACE points at it."""
    code, out, err = run_cli(capsys, "init", str(workspace), "--preset", "tiny")
    assert code == 0, err
    return workspace


@pytest.fixture
def hist(ws):
    """Run 'main': k=0 seeds a, b, c; k=1 refines a (fixes it), accumulates b,
    removes c, adds d; plus a replay 'alt' from main:0."""
    with Store.open(ws) as st:
        st.add_examples([{"id": f"ex-{n}", "question": f"Q {n}?", "answer": str(i)} for i, n in enumerate("abcd")], "pool")
        st.add_examples([{"id": "dev-1", "question": "dev?", "answer": "1"}], "dev")
        run = st.create_run("main", {"preset": "tiny"})
        r = {n: st.add_rationale(f"ex-{n}", f"{n} v0", "0", "self", run_id=run, k=0) for n in "abc"}
        st.begin_step(run, 0, "baseline")
        st.finish_step(run, 0, "baseline", {"dev_acc": 0.0})
        st.write_dataset_version(run, 0, {f"ex-{n}": [(rid, 1.0)] for n, rid in r.items()})
        st.record_predictions(run, 0, "eval", [{"example_id": "ex-a", "output": "9", "answer": "9", "correct": False}])
        st.finish_iteration(run, 0, {"dev_acc": 0.0}, "adapters/0", "0" * 64)
        [pa] = st.record_predictions(run, 1, "mine", [{"example_id": "ex-a", "output": "9", "answer": "9", "correct": False}])
        st.record_teacher_call("key-1", teacher="gpt", model="openai/gpt-4o-mini", status="ok", text="a v1", run_id=run, k=1, cost_usd=0.5)
        a1 = st.add_rationale("ex-a", "a v1", "0", "gpt", teacher_call="key-1", parent_id=r["a"], error_prediction=pa, run_id=run, k=1)
        st.set_accepted(a1, True, 1.0)
        b1 = st.add_rationale("ex-b", "b v1", "1", "self", run_id=run, k=1)
        d1 = st.add_rationale("ex-d", "d v1", "3", "self", run_id=run, k=1)
        st.write_dataset_version(run, 1, {"ex-a": [(a1, 1.0)], "ex-b": [(r["b"], 1.0), (b1, 0.5)], "ex-c": None, "ex-d": [(d1, 1.0)]})
        st.record_predictions(run, 1, "eval", [{"example_id": "ex-a", "output": "0", "answer": "0", "correct": True}])
        st.finish_iteration(run, 1, {"dev_acc": 1.0}, "adapters/1", "1" * 64, stop_reason="no errors left")
        st.branch_run(run, 0, "alt", {"preset": "tiny"})
        return dict(run=run, a1=a1, a0=r["a"], b1=b1, d1=d1)


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for cmd in ("init", "data", "runs", "iterations", "show", "diff", "trace", "export"):
        assert cmd in out


def test_init_creates_workspace(workspace, capsys):
    code, out, err = run_cli(capsys, "init", str(workspace), "--preset", "demo", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["preset"] == "demo"
    assert (workspace / "distillery.toml").read_text().startswith("# Distillery")
    assert (workspace / "distillery.db").is_file()
    assert sorted(p.name for p in (workspace / "prompts").iterdir()) == [
        "demonstration.yaml", "rationale.yaml", "refine.yaml", "student.yaml", "verify.yaml"
    ]
    from loop.config.schema import load_config

    cfg = load_config(workspace / "distillery.toml")
    assert cfg.student.name == "smollm2" and cfg.teachers[0].model == "self" and cfg.loop.max_iterations == 3


def test_init_refuses_existing_without_force(ws, capsys):
    (ws / "distillery.toml").write_text(Path(ws / "distillery.toml").read_text() + "# my edit\n")
    with Store.open(ws) as st:
        st.create_run("keep-me", {})
    code, _, err = run_cli(capsys, "init", str(ws))
    assert code == 2 and "--force" in err and "Traceback" not in err
    assert "# my edit" in (ws / "distillery.toml").read_text()
    code, _, err = run_cli(capsys, "init", str(ws), "--preset", "custom", "--force")
    assert code == 0, err
    assert 'preset = "custom"' in (ws / "distillery.toml").read_text()
    with Store.open(ws) as st:
        assert st.find_run("keep-me")  # the database is kept


def test_init_target_dir_order(tmp_path, capsys, monkeypatch):
    """DIR, else -w, else $DISTILLERY_WORKSPACE, else the current directory."""
    monkeypatch.delenv("DISTILLERY_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "init", "--preset", "tiny")[0] == 0
    assert (tmp_path / "distillery.toml").is_file()
    assert run_cli(capsys, "init", "-w", str(tmp_path / "w"))[0] == 0
    assert (tmp_path / "w" / "distillery.toml").is_file()
    monkeypatch.setenv("DISTILLERY_WORKSPACE", str(tmp_path / "env"))
    assert run_cli(capsys, "init")[0] == 0
    assert (tmp_path / "env" / "distillery.toml").is_file()


def test_init_bad_preset(tmp_path, capsys):
    code, _, err = run_cli(capsys, "init", str(tmp_path / "w"), "--preset", "huge")
    assert code == 2 and "demo | tiny | custom" in err
    assert not (tmp_path / "w").exists()


def test_all_presets_validate(tmp_path):
    from loop.config.schema import load_config
    from loop.config.presets import PRESETS

    for name, text in PRESETS.items():
        p = tmp_path / f"{name}.toml"
        p.write_text(text)
        assert load_config(p).preset == name


def test_data_add_gsm8k_and_plain(ws, capsys, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(
        json.dumps({"question": "Natalia sold 48 clips in April and half as many in May. How many altogether?",
                    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"}) + "\n"
        + json.dumps({"question": "Big?", "answer": "It is 1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234"}) + "\n\n"
        + json.dumps({"question": "Capital of France?", "answer": "Paris", "rationale": "It is Paris.", "id": "fr", "meta": {"topic": "geo"}}) + "\n"
        + json.dumps({"question": "Seven?", "answer": 7}) + "\n"
    )
    code, out, err = run_cli(capsys, "data", "add", str(f), "--json")
    assert code == 0, err
    assert json.loads(out) == {"file": str(f), "split": "pool", "rows": 4, "added": 4, "skipped": 0}
    code, out, _ = run_cli(capsys, "data", "add", str(f))
    assert code == 0 and "0 added" in out and "4 already present" in out
    code, out, err = run_cli(capsys, "data", "add", str(f), "--split", "dev", "--json")
    # pool questions again as dev: an error, not "already present" (dev would score what was trained on)
    assert code == 2 and "already in the pool split" in err and f"{f}:1" in err
    with Store.open(ws) as st:
        ex = {e["question"][:3]: e for e in st.list_examples("pool")}
        assert ex["Nat"]["answer"] == "72"
        assert ex["Nat"]["rationale"] == "Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72."
        assert ex["Big"]["answer"] == "1234"
        assert st.get_example("fr")["meta"] == {"topic": "geo"} and st.get_example("fr")["rationale"] == "It is Paris."
        assert ex["Sev"]["answer"] == "7"


def test_data_add_real_gsm8k_sample(ws, capsys, tmp_path):
    src = Path("/work/shared/data/gsm8k/train.jsonl")
    if not src.exists():
        pytest.skip("shared GSM8K sample not present on this machine")
    f = tmp_path / "g.jsonl"
    f.write_text("".join(src.read_text().splitlines(keepends=True)[:200]))
    code, out, err = run_cli(capsys, "data", "add", str(f), "--json")
    assert code == 0, err and json.loads(out)["added"] == 200
    with Store.open(ws) as st:
        for e in st.list_examples("pool"):
            assert "####" not in e["answer"] and "<<" not in (e["rationale"] or "")
            float(e["answer"])


def test_runs_and_iterations(hist, capsys):
    code, out, err = run_cli(capsys, "runs", "--json")
    assert code == 0, err
    runs = {r["name"]: r for r in json.loads(out)["runs"]}
    assert runs["main"]["iterations"] == 2 and runs["main"]["last_done_k"] == 1
    assert runs["main"]["dev_accuracy"] == 1.0 and runs["main"]["spend_usd"] == 0.5
    assert runs["alt"]["parent"] == "main" and runs["alt"]["parent_k"] == 0 and runs["alt"]["iterations"] == 1
    code, out, _ = run_cli(capsys, "iterations", "--json")
    doc = json.loads(out)
    assert doc["run"] == "main"
    assert [(i["k"], i["dataset_size"], i["dataset_changed"]) for i in doc["iterations"]] == [(0, 3, 3), (1, 3, 4)]
    code, out, _ = run_cli(capsys, "iterations", "--run", "alt", "--json")
    assert [i.get("inherited_from") for i in json.loads(out)["iterations"]] == ["main"]
    for args in (["runs"], ["iterations"], ["iterations", "--run", "alt"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 0 and "main" in out and not err


def test_dev_accuracy_is_the_metric_the_loop_writes():
    """runs/iterations show metrics["dev_acc"] (loop/core/orchestrator.py
    metrics), not a look-alike key the loop never writes."""
    from loop.cli.views import _accuracy

    assert _accuracy({"dev_acc": 0.5, "dev_accuracy": 0.9, "accuracy": 0.8}) == 0.5
    assert _accuracy({"dev_accuracy": 0.9, "accuracy": 0.8}) is None
    assert _accuracy({}) is None and _accuracy(None) is None


def test_show(hist, capsys):
    code, out, err = run_cli(capsys, "show", "main:1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["k"] == 1 and doc["status"] == "done" and doc["stop_reason"] == "no errors left"
    assert doc["dataset"] == {"size": 3, "changed": 4}
    assert doc["predictions"] == {"eval": {"total": 1, "correct": 1, "wrong": 0}, "mine": {"total": 1, "correct": 0, "wrong": 1}}
    assert doc["rationales"] == {"created": 3, "accepted": 1, "rejected": 0}
    assert doc["teacher_calls"]["count"] == 1 and doc["teacher_calls"]["cost_usd"] == 0.5
    code, out, _ = run_cli(capsys, "show", "0", "--json")
    assert json.loads(out)["steps"][0]["info"] == {"dev_acc": 0.0}
    code, out, _ = run_cli(capsys, "show", "alt:0", "--json")
    assert json.loads(out)["inherited_from"] == "main"
    code, out, _ = run_cli(capsys, "show", "1")
    assert code == 0 and "dev_acc" in out


def test_diff(hist, capsys):
    code, out, err = run_cli(capsys, "diff", "0", "main:1", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["dataset"]["added"] == ["ex-d"] and d["dataset"]["removed"] == ["ex-c"]
    assert [c["example_id"] for c in d["dataset"]["changed"]] == ["ex-a", "ex-b"]
    assert d["became_correct"] == ["ex-a"] and d["metrics"]["delta"] == {"dev_acc": 1.0}
    code, out, _ = run_cli(capsys, "diff", "alt:0", "main:1")
    assert code == 0 and "a v1" in out and "became correct: 1" in out


def test_trace(hist, capsys):
    code, out, err = run_cli(capsys, "trace", "ex-a", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["id"] for r in doc["rationales"]] == [hist["a0"], hist["a1"]]
    assert doc["rationales"][1]["parent_id"] == hist["a0"] and doc["teacher_calls"][0]["key"] == "key-1"
    code, out, _ = run_cli(capsys, "trace", "ex-d")
    assert code == 0 and "d v1" in out
    code, _, err = run_cli(capsys, "trace", "ex-")
    assert code == 2 and "several" in err
    code, _, err = run_cli(capsys, "trace", "nope")
    assert code == 2 and "nope" in err


def test_export(hist, capsys, tmp_path):
    out_file = tmp_path / "train.jsonl"
    code, out, err = run_cli(capsys, "export", "main:1", "--format", "jsonl", "-o", str(out_file), "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == 4
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["id"], r["rationale"], r["weight"]) for r in rows] == [
        ("ex-a", "a v1", 1.0), ("ex-b", "b v0", 1.0), ("ex-b", "b v1", 0.5), ("ex-d", "d v1", 1.0)
    ]
    assert rows[0]["question"] == "Q a?" and rows[0]["answer"] == "0"
    oa = tmp_path / "oa.jsonl"
    code, _, err = run_cli(capsys, "export", "1", "--format", "openai", "-o", str(oa), "--system", "Be brief.")
    assert code == 0, err
    first = json.loads(oa.read_text().splitlines()[0])
    assert first == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q a?"},
                                  {"role": "assistant", "content": "a v1"}]}
    code, out, _ = run_cli(capsys, "export", "0")
    assert code == 0 and len(out.splitlines()) == 3  # stdout when no -o


@pytest.mark.parametrize(
    "args, expect",
    [
        (["show", "7"], "no iteration 7"),
        (["show", "ghost:1"], "no run named 'ghost'"),
        (["show", "main:x"], "K must be a whole number"),
        (["show", "main:-1"], "K must be a whole number"),
        (["show", ":1"], "give RUN:K"),
        (["diff", "0", "9"], "no iteration 9"),
        (["iterations", "--run", "ghost"], "no run named 'ghost'"),
        (["export", "1", "--format", "csv"], "--format jsonl"),
        (["export", "1", "-o", "/nonexistent-dir/x.jsonl"], "cannot write"),
    ],
)
def test_inspection_user_errors(hist, capsys, args, expect):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and expect in err and "Traceback" not in err, err


def test_no_workspace(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISTILLERY_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "runs")
    assert code == 2 and "distillery init" in err
    code, _, err = run_cli(capsys, "runs", "-w", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err and "distillery init" in err


def test_workspace_found_from_subdirectory(ws, capsys, monkeypatch):
    monkeypatch.delenv("DISTILLERY_WORKSPACE")
    sub = ws / "prompts"
    monkeypatch.chdir(sub)
    code, out, err = run_cli(capsys, "runs", "--json")
    assert code == 0, err and json.loads(out) == {"runs": []}


def test_no_runs_yet(ws, capsys):
    code, _, err = run_cli(capsys, "iterations")
    assert code == 2 and "distillery run" in err


def test_real_console_script(ws, tmp_path):
    """The installed entry point: exit codes and no traceback, in a subprocess."""
    exe = Path(sys.executable).with_name("distillery")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "loop"]
    env = dict(os.environ, DISTILLERY_WORKSPACE=str(ws))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": 3, "answer": "1"}\n')
    p = subprocess.run(cmd + ["data", "add", str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"{bad}:2:" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(cmd + ["runs", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout) == {"runs": []}


def test_user_text_is_not_rich_markup(ws, capsys):
    with Store.open(ws) as st:
        st.add_examples([{"id": "br", "question": "Is [bold]x[/] a [list]?", "answer": "1"}], "pool")
        run = st.create_run("main", {})
        st.record_predictions(run, 0, "mine", [{"example_id": "br", "output": "[red]no[/red]", "answer": None}])
    code, out, err = run_cli(capsys, "trace", "br")
    assert code == 0, err
    assert "Is [bold]x[/] a [list]?" in out and "[red]no[/red]" in out
