"""Input checks that run before a loop writes anything (exit 2 with the fix)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from loop.errors import UserError


def check_teachers(cfg) -> None:
    """Teacher settings that can be checked without a call: unique names, a
    model string LiteLLM knows, the API key variable set, api_base reachable
    (a TCP connect, which costs nothing and is not a teacher request)."""
    names = [t.name for t in cfg.teachers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"teachers: the name {sorted(dup)[0]!r} is used twice in distillery.toml; names must be unique")
    if not cfg.teachers:
        raise UserError("no [[teachers]] in distillery.toml; add one (model = \"self\" needs no API)")
    for t in cfg.teachers:
        if t.is_self:
            continue
        ends = t.endpoints()  # the teacher itself, or each of its [[teachers.deployments]]
        where = (lambda i: f"teacher {t.name!r}") if not t.deployments else (lambda i: f"teacher {t.name!r} deployments[{i}]")
        for i, d in enumerate(ends):
            try:
                import litellm

                litellm.get_llm_provider(d.model, api_base=d.api_base)
            except Exception as e:  # litellm raises a BadRequestError for an unknown provider
                raise UserError(
                    f"{where(i)}: unknown model {d.model!r} ({str(e).splitlines()[0][:160]}); use a LiteLLM "
                    "model string such as \"openai/gpt-4o-mini\", \"anthropic/claude-3-5-haiku-latest\", "
                    "or \"openai/<name>\" with api_base for a local OpenAI-compatible server"
                ) from None
            if d.api_key_env and not os.environ.get(d.api_key_env):
                raise UserError(f"{where(i)}: environment variable {d.api_key_env} is not set; export it "
                                "(api_key_env names it)")
        # one deployment down is the Router's to route around (cooldowns); all down, or the
        # teacher's only server down, is a run that cannot start
        bases = [(i, d.api_base) for i, d in enumerate(ends) if d.api_base]
        failures = [(i, base, _unreachable(base)) for i, base in bases]
        failures = [f for f in failures if f[2] is not None]
        if bases and len(failures) == len(bases):
            i, base, err = failures[0]
            raise UserError(f"{where(i)}: cannot reach api_base {base} ({err}); "
                            "start the server, or fix api_base in distillery.toml")


def _unreachable(api_base: str) -> str | None:
    """Why a TCP connect to api_base fails (None when it connects): costs nothing, asks nothing."""
    u = urlsplit(api_base)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return str(e.strerror or e)
    return None


def check_generation(cfg) -> None:
    """generation.backend = "vllm": the settings it needs, and a server at
    vllm_base_url that answers /v1/models with a base model (a request that
    costs nothing and loads nothing)."""
    if cfg.generation.backend != "vllm":
        return
    from student.vllm_client import VLLMClient, VLLMError

    from loop.core.generation import api_key, base_model, server_command

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
