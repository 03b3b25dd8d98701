"""Our error hierarchy for teacher calls, and the one place LiteLLM's exceptions
are translated into it (`translate`).

    TeacherError
    ├── TeacherAuthError      401/403, missing key: stops the run; message says which env var to set
    ├── TeacherBadRequest     400/404/422, unknown model, context too long: stops the run
    ├── TeacherRateLimited    429 (retried; carries retry_after seconds when the server sent one)
    ├── TeacherUnavailable    5xx, connection refused/reset (retried)
    ├── TeacherTimeout        no answer within timeout_s (retried)
    ├── TeacherBadResponse    200 with an unusable body: not JSON, empty content (retried)
    └── BudgetExceeded        the next call would cross budget_usd: stops the run

`RETRYABLE` lists the transient kinds.  Every error names the teacher.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any


class TeacherError(Exception):
    """Base class.  `teacher` is the configured teacher name, `status_code` the
    HTTP status when there was one."""

    def __init__(self, message: str, *, teacher: str | None = None, status_code: int | None = None) -> None:
        self.teacher = teacher
        self.status_code = status_code
        prefix = f"teacher {teacher!r}: " if teacher else ""
        super().__init__(prefix + message)


class TeacherAuthError(TeacherError):
    pass


class TeacherBadRequest(TeacherError):
    pass


class TeacherRateLimited(TeacherError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TeacherUnavailable(TeacherError):
    pass


class TeacherTimeout(TeacherError):
    pass


class TeacherBadResponse(TeacherError):
    pass


class BudgetExceeded(TeacherError):
    """Raised before a call that would cross the budget.  `results` is filled by
    TeacherPool.run with what completed before the stop."""

    def __init__(self, message: str, *, spent_usd: float = 0.0, budget_usd: float = 0.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.spent_usd = spent_usd
        self.budget_usd = budget_usd
        self.results: list | None = None


RETRYABLE = (TeacherRateLimited, TeacherUnavailable, TeacherTimeout, TeacherBadResponse)
FATAL = (TeacherAuthError, TeacherBadRequest, BudgetExceeded)


def key_env_hint(model: str, api_key_env: str | None) -> str:
    """The env var a user should set for this model ("set OPENAI_API_KEY")."""
    if api_key_env:
        return api_key_env
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    return {
        "openai": "OPENAI_API_KEY",
        "anthropic": "ANTHROPIC_API_KEY",
        "gemini": "GEMINI_API_KEY",
        "mistral": "MISTRAL_API_KEY",
        "groq": "GROQ_API_KEY",
        "together_ai": "TOGETHERAI_API_KEY",
        "deepseek": "DEEPSEEK_API_KEY",
        "openrouter": "OPENROUTER_API_KEY",
        "cohere": "COHERE_API_KEY",
    }.get(provider, f"{provider.upper()}_API_KEY")


def retry_after_seconds(exc: BaseException) -> float | None:
    """Retry-After from a LiteLLM/OpenAI exception: `retry-after-ms` (OpenAI)
    first, then `Retry-After` in seconds.  HTTP-date forms are ignored."""
    headers: dict[str, str] = {}
    raw = getattr(exc, "litellm_response_headers", None)
    if raw:
        headers.update({str(k).lower(): str(v) for k, v in dict(raw).items()})
    resp = getattr(exc, "response", None)
    if resp is not None and getattr(resp, "headers", None) is not None:
        try:
            headers.update({str(k).lower(): str(v) for k, v in resp.headers.items()})
        except Exception:  # pragma: no cover - exotic response objects
            pass
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is None:
            continue
        try:
            secs = float(v) * scale
        except ValueError:
            continue
        if math.isfinite(secs) and secs >= 0:
            return secs
    return None


def translate(exc: BaseException, *, teacher: str, model: str, api_base: str | None = None,
              api_key_env: str | None = None, timeout_s: float | None = None) -> TeacherError:
    """Map a LiteLLM (or httpx/OpenAI) exception onto our hierarchy, with a
    message that says what to fix.  Never includes an API key: LiteLLM
    messages carry the provider's text, not the request headers."""
    import litellm  # imported lazily: teachers/__init__ sets the offline cost map first

    if isinstance(exc, TeacherError):
        return exc
    secret = os.environ.get(api_key_env, "") if api_key_env else ""
    msg = _short(redact(str(exc), (secret,)))
    code = getattr(exc, "status_code", None)
    where = f" at {api_base}" if api_base else ""
    if isinstance(exc, litellm.AuthenticationError) or code in (401, 403) or isinstance(exc, litellm.PermissionDeniedError):
        return TeacherAuthError(
            f"authentication failed for {model}{where} ({msg}); set {key_env_hint(model, api_key_env)} "
            f"to a valid key (or set api_key_env in distillery.toml)", teacher=teacher, status_code=code)
    if isinstance(exc, litellm.RateLimitError) or code == 429:
        return TeacherRateLimited(f"rate limited ({msg})", teacher=teacher, status_code=429,
                                  retry_after=retry_after_seconds(exc))
    if isinstance(exc, litellm.Timeout) or code == 408:
        return TeacherTimeout(f"no answer within {timeout_s}s from {model}{where}; raise timeout_s or check the server",
                              teacher=teacher, status_code=code)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return TeacherBadRequest(f"prompt too long for {model} ({msg}); lower max_tokens or shorten the template",
                                 teacher=teacher, status_code=code)
    if isinstance(exc, litellm.NotFoundError) or code == 404:
        return TeacherBadRequest(f"model or endpoint not found ({msg}); check the model name {model!r} and api_base{where}",
                                 teacher=teacher, status_code=code)
    if isinstance(exc, (litellm.BadRequestError, litellm.UnprocessableEntityError)) or code in (400, 422):
        if "LLM Provider NOT provided" in str(exc) or "provider" in msg.lower() and "not" in msg.lower():
            return TeacherBadRequest(f"unknown model {model!r} ({msg}); use a LiteLLM model string such as "
                                     f"'openai/gpt-4o-mini' or 'openai/<alias>' with api_base", teacher=teacher, status_code=code)
        return TeacherBadRequest(f"request rejected ({msg}); check the model name {model!r} and the generation options",
                                 teacher=teacher, status_code=code)
    if "expecting value" in msg.lower() or "json" in msg.lower() and "decode" in msg.lower():
        return TeacherBadResponse(f"response body is not valid JSON ({msg})", teacher=teacher, status_code=code)
    if isinstance(exc, litellm.APIConnectionError) or "connection" in msg.lower():
        return TeacherUnavailable(f"cannot connect to {model}{where} ({msg}); is the server running?",
                                  teacher=teacher, status_code=code)
    if isinstance(exc, (litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.BadGatewayError)) or (
        code is not None and code >= 500
    ):
        return TeacherUnavailable(f"server error {code} ({msg})", teacher=teacher, status_code=code)
    if isinstance(exc, (TimeoutError,)):
        return TeacherTimeout(f"no answer within {timeout_s}s", teacher=teacher)
    if isinstance(exc, (ConnectionError, OSError)):
        return TeacherUnavailable(f"connection failed ({msg})", teacher=teacher)
    if isinstance(exc, litellm.APIError):
        return TeacherUnavailable(f"API error ({msg})", teacher=teacher, status_code=code)
    return TeacherBadResponse(f"unexpected {type(exc).__name__}: {msg}", teacher=teacher, status_code=code)


# Providers echo (masked) keys in auth errors ("Incorrect API key provided:
# sk-proj-****abcd"); our messages end up in the database and the logs, so any
# key-looking token is removed before a message is built.
_KEYLIKE = re.compile(r"(?i)\b(?:sk|pk|rk|ak|key|api[-_]?key|bearer)[-_ :=]+(?=[\w\-*.]*[\d*])[\w\-*.]{4,}|\*{3,}[\w\-]*")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for sec in secrets:
        if sec and len(sec) >= 4:
            text = text.replace(sec, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def _short(text: str, limit: int = 300) -> str:
    text = redact(" ".join(text.split()))
    for prefix in ("litellm.", ):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text if len(text) <= limit else text[: limit - 3] + "..."
