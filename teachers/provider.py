"""LiteLLM itself, and what an endpoint needs from it before any call.

`import_litellm` is the one way the teachers modules import LiteLLM (the
bundled price list, no telemetry, its per-attempt warnings silenced);
`endpoint_key` the one API-key resolution, used by the client, the Router,
the batch path and `distillery teachers check` alike; `provider_problem`
asks LiteLLM, without a call, whether it knows a model string (the loop's
preflight uses it).  Nothing outside teachers/ imports LiteLLM.
(teachers/errors.py imports LiteLLM's exception classes on its own: this
module raises its errors, so it cannot be imported from there.)
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from .errors import TeacherAuthError

# A local OpenAI-compatible server needs *some* key in the Authorization header;
# sending a dummy one keeps a real OPENAI_API_KEY from leaking to it.
LOCAL_DUMMY_KEY = "local-server-no-key"


@functools.cache  # once per process: setLevel walks every logger, and this sits on each call's path
def import_litellm() -> Any:
    """The litellm module, set up for us (imported on first use, never at import)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    # LiteLLM logs each failed attempt (and event-loop changes of its logging
    # worker) as warnings; we record failures ourselves, with the teacher's name.
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    return litellm


def endpoint_key(teacher: str | None, api_key_env: str | None, api_base: str | None) -> str | None:
    """An endpoint's key from the environment (never stored): the variable
    api_key_env names (TeacherAuthError when it is unset or empty), else a dummy
    key for a local server (api_base), else None, which lets LiteLLM use the
    provider's standard variable."""
    if api_key_env:
        val = os.environ.get(api_key_env)
        if not val:
            raise TeacherAuthError(f"environment variable {api_key_env} is not set; export {api_key_env}=<your key> "
                                   f"(api_key_env in distillery.toml names it)", teacher=teacher)
        return val
    if api_base:
        return LOCAL_DUMMY_KEY
    return None


def provider_problem(model: str, api_base: str | None = None) -> str | None:
    """Why LiteLLM cannot route `model` (the first line of its error, at most 160
    characters), or None when it knows the provider.  No request is made."""
    try:
        import_litellm().get_llm_provider(model, api_base=api_base)
    except Exception as e:  # litellm raises a BadRequestError for an unknown provider
        return (str(e).splitlines() or [type(e).__name__])[0][:160]
    return None
