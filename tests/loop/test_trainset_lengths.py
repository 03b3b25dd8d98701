"""The length rule in the loop: on the tiny preset every training row keeps
all of its completion y and its question, and the self-teacher's context holds
the whole demonstration; a long demonstration is shortened in its middle,
counted, never silently."""

from __future__ import annotations

from rich.console import Console

from loop.core.orchestrator import Orchestrator
from loop.core.trainset import build_train_examples
from loop.config.workspace import init_workspace, load_workspace_config, open_store
from student.data import encode
from student.lengths import MARKER, completion_ids

from tests.loop.helpers import run_inprocess


def _tiny_run(tmp_path):
    ws = tmp_path / "ws"
    init_workspace(ws, "tiny")
    toml = (ws / "distillery.toml").read_text().replace("max_iterations = 2", "max_iterations = 1")
    (ws / "distillery.toml").write_text(toml + "gold_fallback = true\n")  # the [loop] table is last
    assert run_inprocess(ws, "run") == 0
    cfg = load_workspace_config(ws)
    st = open_store(ws)
    o = Orchestrator(ws, cfg, st, console=Console(quiet=True), quiet=True)
    o.run_id = st.get_run("main")["id"]
    o.templates = o.load_templates(strict=True)
    return ws, cfg, st, o


def test_tiny_preset_rows_keep_their_whole_completion_and_demonstration(tmp_path):
    ws, cfg, st, o = _tiny_run(tmp_path)
    try:
        info = next(d["info"] for d in st.step_details(o.run_id, 0) if d["step"] == "train")
        assert info["examples"] == cfg.task.pool_size and info["steps"] == cfg.train.max_steps
        assert info["length"]["dropped_rows"] == 0 and info["length"]["truncated_contexts"] == 0

        examples, stats = build_train_examples(o.step_context(0), {})
        assert len(examples) == cfg.task.pool_size and stats.dropped_rows == 0 and stats.truncated_contexts == 0
        tok = o.student.tokenizer
        for ex in examples:
            enc = encode(tok, ex, num_contexts=cfg.loss.num_contexts, max_length=cfg.student.max_length)
            y = completion_ids(tok, ex.completion)
            assert enc.completion_ids == y and len(y) > 40  # the whole rationale + eos, not 1 token of it
            teacher_text = tok.decode(enc.teacher_prompt_ids[0])
            assert ex.completion in teacher_text  # the demonstration is in the self-teacher's context
            question = ex.prompt[-1]["content"].splitlines()[0]
            assert question in tok.decode(enc.prompt_ids) and question in teacher_text
    finally:
        st.close()


def test_a_long_demonstration_is_shortened_in_its_middle_and_counted(tmp_path):
    ws, cfg, st, o = _tiny_run(tmp_path)
    try:
        # a tighter budget than the preset's: the few-shot and own contexts must shrink
        o.cfg = cfg.model_copy(update={
            "student": cfg.student.model_copy(update={"max_length": 360}),
            "loss": cfg.loss.model_copy(update={"num_contexts": 2}),
        })
        examples, stats = build_train_examples(o.step_context(0), {})
        assert stats.truncated_contexts > 0 and stats.dropped_rows == 0
        tok = o.student.tokenizer
        shortened = 0
        for ex in examples:
            enc = encode(tok, ex, num_contexts=2, max_length=360)
            assert enc.completion_ids == completion_ids(tok, ex.completion)  # y is never what gets cut
            for ctx in enc.teacher_prompt_ids:
                assert len(ctx) + len(enc.completion_ids) <= 360
            shortened += any(MARKER.strip() in tok.decode(c) for c in enc.teacher_prompt_ids)
        assert shortened > 0
    finally:
        st.close()
