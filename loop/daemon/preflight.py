"""Input checks that run before a loop writes anything (exit 2 with the fix).

The one place of them: `check_inputs` (no model, no store: what `distillery
run --detach` checks before it starts the background process) and
`check_environment` (the generation server, trackers, training launcher, the
task's data), both called by Orchestrator.preflight, which adds the student
and the length rule (loop/core/trainset.py: check_task_lengths).
"""

from __future__ import annotations

import os
from pathlib import Path

from loop.core.templates import TemplateSet
from loop.errors import UserError


def check_teachers(cfg) -> None:
    """The teacher settings that can be checked without a call
    (teachers/checks.py: settings_problem), as a UserError."""
    from teachers.checks import settings_problem

    why = settings_problem(cfg.teachers)
    if why is not None:
        raise UserError(why)


def check_judge(cfg) -> None:
    """verify.teacher names an API or local server teacher of [[teachers]]."""
    judge = cfg.verify.teacher
    if judge is None:
        return
    t = next((t for t in cfg.teachers if t.name == judge), None)
    if t is None:
        names = ", ".join(t.name for t in cfg.teachers)
        raise UserError(f"verify.teacher = {judge!r} is not the name of a [[teachers]] entry ({names}); "
                        "add that teacher (teach = false if it should only judge) or fix the name")
    if t.is_self:
        raise UserError(f"verify.teacher = {judge!r} is the self teacher; the judge must be an API or local "
                        "server teacher (a LiteLLM model string)")


def check_inputs(ws: Path, cfg, run_name: str | None = None, *, templates: TemplateSet | None = None) -> dict:
    """The checks that need no model and no store: the templates (each
    test-rendered), the teachers and the judge.  Returns the templates.
    Raises UserError."""
    loaded = (templates or TemplateSet(ws)).load(strict=True)
    check_teachers(cfg)
    check_judge(cfg)
    return loaded


def check_environment(ws: Path, cfg, store) -> None:
    """The checks that need the store but no model: the vLLM server, the
    trackers, the training launcher, and imported data for task.kind = "jsonl"."""
    from loop.core.tracking import check_trackers
    from loop.core.train_job import check_launch

    check_generation(cfg)
    check_trackers(cfg.track)
    check_launch(cfg, ws)
    if cfg.task.kind == "jsonl":
        for split in ("pool", "dev"):
            if store.count_examples(split) == 0:
                raise UserError(
                    f"task.kind = \"jsonl\" but the workspace has no {split} examples; "
                    f"import some with `distillery data add FILE.jsonl --split {split}`"
                )


def check_generation(cfg) -> None:
    """generation.backend = "vllm": the settings it needs, and a server at
    vllm_base_url that answers /v1/models with a base model (a request that
    costs nothing and loads nothing)."""
    if cfg.generation.backend != "vllm":
        return
    from student.vllm_client import VLLMClient, VLLMError

    from loop.core.vllm_server import api_key, base_model, server_command

    g = cfg.generation
    start = f"start the server with `{server_command(cfg)}`"
    if not g.vllm_base_url:
        raise UserError("generation.backend = \"vllm\" needs generation.vllm_base_url, the server's URL "
                        f"(e.g. \"http://127.0.0.1:8000/v1\"); {start}")
    if cfg.student.full_finetune:
        raise UserError("generation.backend = \"vllm\" serves the student's LoRA adapters, and "
                        "student.full_finetune = true trains none; set one of them back")
    if g.vllm_api_key_env and not os.environ.get(g.vllm_api_key_env):
        raise UserError(f"generation.vllm_api_key_env: environment variable {g.vllm_api_key_env} is not set; "
                        "export it (the key the server was started with, `vllm serve --api-key`)")
    try:
        with VLLMClient(g.vllm_base_url, api_key=api_key(cfg), timeout=10.0, retries=0) as client:
            base_model(client.model_cards(), client.base_url)
    except VLLMError as e:
        raise UserError(f"generation.backend = \"vllm\": {e}; {start}, or fix generation.vllm_base_url") from None
