"""`distillery teachers check`: one cheap call per configured teacher
endpoint (model, reachable, latency, price per 1k tokens), through LiteLLM.
Nothing is cached or written, and there are no retries: a check must answer
quickly."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


async def check_teachers(cfgs) -> list[dict]:
    """One tiny completion per LiteLLM teacher, concurrently; nothing is cached
    or written, and no retries (a check must answer quickly)."""
    from teachers.budget import prices
    from teachers.client import LOCAL_DUMMY_KEY, _import_litellm
    from teachers.errors import TeacherAuthError, TeacherBadRequest, TeacherError, translate

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
            if d.api_key_env:
                key = os.environ.get(d.api_key_env)
                if not key:
                    raise TeacherAuthError(f"environment variable {d.api_key_env} is not set; export it", teacher=name)
            else:
                key = LOCAL_DUMMY_KEY if d.api_base else None
            litellm = _import_litellm()
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
