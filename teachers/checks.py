"""Checks of the configured teachers, both through this package's LiteLLM:

- `settings_problem(teachers)`: what can be checked without a teacher call,
  before a run writes anything (unique names, a model string LiteLLM knows,
  the API key variable set, api_base reachable by a TCP connect);
- `check_teachers(teachers)`: `distillery teachers check`, one cheap call per
  configured endpoint (model, reachable, latency, price per 1k tokens).
  Nothing is cached or written, and there are no retries: a check must answer
  quickly."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import urlsplit
from typing import Any


def settings_problem(teachers) -> str | None:
    """The first problem of the [[teachers]] settings that needs no call, as the
    message for the user (naming the teacher, the key and the fix), or None."""
    from teachers.errors import TeacherAuthError
    from teachers.provider import endpoint_key, provider_problem

    names = [t.name for t in teachers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        return f"teachers: the name {sorted(dup)[0]!r} is used twice in distillery.toml; names must be unique"
    if not teachers:
        return "no [[teachers]] in distillery.toml; add one (model = \"self\" needs no API)"
    for t in teachers:
        if t.is_self:
            continue
        ends = t.endpoints()  # the teacher itself, or each of its [[teachers.deployments]]
        where = (lambda i: f"teacher {t.name!r}") if not t.deployments else (lambda i: f"teacher {t.name!r} deployments[{i}]")
        for i, d in enumerate(ends):
            why = provider_problem(d.model, d.api_base)
            if why is not None:
                return (f"{where(i)}: unknown model {d.model!r} ({why}); use a LiteLLM "
                        "model string such as \"openai/gpt-4o-mini\", \"anthropic/claude-3-5-haiku-latest\", "
                        "or \"openai/<name>\" with api_base for a local OpenAI-compatible server")
            try:
                endpoint_key(None, d.api_key_env, d.api_base)  # the one key resolution; the place is ours to name
            except TeacherAuthError as e:
                return f"{where(i)}: {e}"
        # one deployment down is the Router's to route around (cooldowns); all down, or the
        # teacher's only server down, is a run that cannot start
        bases = [(i, d.api_base) for i, d in enumerate(ends) if d.api_base]
        failures = [(i, base, _unreachable(base)) for i, base in bases]
        failures = [f for f in failures if f[2] is not None]
        if bases and len(failures) == len(bases):
            i, base, err = failures[0]
            return (f"{where(i)}: cannot reach api_base {base} ({err}); "
                    "start the server, or fix api_base in distillery.toml")
    return None


def _unreachable(api_base: str) -> str | None:
    """Why a TCP connect to api_base fails (None when it connects): costs nothing, asks nothing."""
    u = urlsplit(api_base)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return str(e.strerror or e)
    return None


async def check_teachers(cfgs) -> list[dict]:
    """One tiny completion per LiteLLM teacher, concurrently; nothing is cached
    or written, and no retries (a check must answer quickly)."""
    from teachers.budget import prices
    from teachers.errors import TeacherAuthError, TeacherBadRequest, TeacherError, translate
    from teachers.provider import endpoint_key, import_litellm

    async def one(cfg, d, name: str) -> dict:
        # d: the teacher's endpoint, or one of its deployments (each is checked on its own)
        row: dict[str, Any] = {"name": name, "model": d.model if d else cfg.model, "api_base": d.api_base if d else None, "reachable": None,
                               "latency_s": None, "usd_per_1k_input": None, "usd_per_1k_output": None,
                               "note": None, "fatal": False}
        if cfg.is_self:
            row["note"] = "the student samples its own rationales (no API)"
            return row
        p = prices(cfg)
        if p is not None:
            row["usd_per_1k_input"], row["usd_per_1k_output"] = p[0] * 1000, p[1] * 1000
        else:
            row["usd_per_1k_input"] = row["usd_per_1k_output"] = 0.0
            row["note"] = "no price known (local/free); set input_cost_per_token/output_cost_per_token to budget it"
        try:
            key = endpoint_key(name, d.api_key_env, d.api_base)
            litellm = import_litellm()
            t0 = time.perf_counter()
            try:
                await litellm.acompletion(model=d.model, api_base=d.api_base, api_key=key,
                                          messages=[{"role": "user", "content": "Reply with the single word OK."}],
                                          max_tokens=5, temperature=0, timeout=min(cfg.timeout_s, 30.0),
                                          max_retries=0, num_retries=0)
            except Exception as e:
                raise translate(e, teacher=name, model=d.model, api_base=d.api_base,
                                api_key_env=d.api_key_env, timeout_s=min(cfg.timeout_s, 30.0)) from None
            row["latency_s"] = time.perf_counter() - t0
            row["reachable"] = True
        except TeacherError as e:
            row["reachable"] = False
            row["note"] = str(e)
            row["fatal"] = isinstance(e, (TeacherAuthError, TeacherBadRequest))
        return row

    jobs = []
    for c in cfgs:
        ends = [None] if c.is_self else c.endpoints()
        for i, d in enumerate(ends):
            jobs.append(one(c, d, f"{c.name}[{i}]" if c.deployments else c.name))
    return list(await asyncio.gather(*jobs))
